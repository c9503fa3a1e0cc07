"""Length-prefixed pickled messages over a socket: the host <-> long-lived cocotb session link
(sw.backends.rtl.RtlBackend serves requests to sim.benches.overlay_bench)."""
from __future__ import annotations

import pickle
import socket
import struct

_LEN = struct.Struct("<Q")


def send(sock: socket.socket, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def recv(sock: socket.socket):
    (n,) = _LEN.unpack(_exactly(sock, _LEN.size))
    return pickle.loads(_exactly(sock, n))


def _exactly(sock, n) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
