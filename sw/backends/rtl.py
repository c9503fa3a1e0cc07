"""The rtl backend: the generated overlay Verilog under cocotb/Verilator, a long-lived session.

One Verilator build per configuration; one simulator run per backend, serving this process's
requests over a Unix socket (sim.benches.overlay_bench) until closed, so the AXI RAM (DDR)
keeps weights and activations between programs like a board's DDR does.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np

from hw import isa
from sim import rpc
from sw.runtime.backend import DEFAULT_DDR_BYTES, AcceleratorError, Backend

#: Simulated cycles a second, roughly, of an overlay under Verilator and cocotb here (docs/overlay.md: ~23 k on a
#: small GEMM overlay, 10.6 k on bench16 with attention; less for bigger overlays and under load): what the CLI's
#: forecasts of an rtl run divide by.
CYCLES_PER_S = 10_000


def overlay_verilog(cfg) -> Path:
    """The overlay's Verilog for `cfg`, converted again only when the hardware's sources changed
    (converting takes 10-50 s; every rtl session of a configuration uses the same)."""
    from sim.runner import BUILD
    from sw.outputs import write_text
    out_dir = BUILD / "verilog" / f"overlay_{config_tag(cfg)}"
    path, stamp = out_dir / f"{isa.VERILOG_NAME}.v", out_dir / "sources.sha1"
    key = hardware_sources_key()
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        return path
    from hw.overlay import Overlay
    from hw.verilog import write_verilog
    write_verilog(Overlay(cfg), isa.VERILOG_NAME, out_dir)
    write_text(stamp, key)
    return path


def hardware_sources_key() -> str:
    """A digest of what the Verilog is generated from: hw/ and golden_model/ (its widths and tables)
    and the Amaranth version."""
    from importlib.metadata import version
    repo = Path(__file__).resolve().parents[2]
    digest = hashlib.sha1(version("amaranth").encode())
    for src in sorted([*(repo / "hw").rglob("*.py"), *(repo / "golden_model").rglob("*.py")]):
        digest.update(str(src.relative_to(repo)).encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()


def config_tag(cfg) -> str:
    digest = hashlib.sha1(json.dumps(cfg.summary(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.name}_{digest}"


class SessionDied(RuntimeError):
    """The simulator stopped answering (build failure, crash); the message names its log."""


_LIVE: dict[str, "RtlBackend"] = {}       # build name -> the open session using that build directory


class RtlBackend(Backend):
    name = "rtl"

    def __init__(self, cfg, *, ddr_bytes: int = DEFAULT_DDR_BYTES, timeout_cycles: int = 50_000_000, stall: float = 0.0,
                 seed: int = 1, waves: bool | None = None, build_name: str | None = None, **_):
        from hw.overlay import VERILOG_NAME
        from sim.runner import BUILD, run_bench
        super().__init__(cfg, 0, ddr_bytes)
        self.timeout_cycles = timeout_cycles
        self._key = build_name or f"overlay-{config_tag(cfg)}"
        if self._key in _LIVE:              # one simulator per build: this process's older one ends
            _LIVE[self._key].close()
        verilog = overlay_verilog(cfg)
        self._lock, self.build_name = _take_build_slot(BUILD / "sim", self._key)
        self._log = BUILD / "sim" / self.build_name / "verilator" / "test.log"
        self._tmp = tempfile.TemporaryDirectory(prefix="sam2fpga-rtl-")
        address = str(Path(self._tmp.name) / "serve.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(1)
        listener.settimeout(1.0)
        self._failure: BaseException | None = None

        def simulate():
            try:
                run_bench(verilog, VERILOG_NAME, "overlay_bench", name=self.build_name, waves=waves,
                          extra_env={"SERVE_SOCKET": address, "BENCH_DDR_BYTES": str(ddr_bytes),
                                     "BENCH_STALL": str(stall), "BENCH_SEED": str(seed)})
            except BaseException as e:       # reported by the next request
                self._failure = e

        self._thread = threading.Thread(target=simulate, name=f"rtl-{self.build_name}", daemon=True)
        self._thread.start()
        self._sock = None
        try:
            while self._sock is None:        # Verilator build, then the simulator connects
                try:
                    self._sock, _ = listener.accept()
                except socket.timeout:
                    if not self._thread.is_alive():
                        raise SessionDied(f"the Verilator session did not start: {self._failure} "
                                          f"(log: {self._log})") from None
        except BaseException:
            self._release()
            raise
        finally:
            listener.close()
        _LIVE[self._key] = self

    # ---------------------------------------------------------------- requests
    def _call(self, *req):
        if self._sock is None:
            raise SessionDied("the rtl session is closed")
        try:
            rpc.send(self._sock, req)
            status, value = rpc.recv(self._sock)
        except (ConnectionError, OSError) as e:
            self._release()
            raise SessionDied(f"the Verilator session ended: {self._failure or e} (log: {self._log})") from None
        if status != "ok":
            raise RuntimeError(f"rtl bench: {value}")
        return value

    def _write(self, addr, data):
        self._call("write", addr, data.tobytes())

    def _read(self, addr, size):
        return np.frombuffer(self._call("read", addr, size), np.uint8).copy()

    def read_reg(self, offset):
        return self._call("reg_read", offset)

    def write_reg(self, offset, value):
        self._call("reg_write", offset, int(value))

    def inject_fault(self, fault) -> None:
        """The bench's AXI RAM answers the fault's beat (sim/benches/axi_faults.py); an explicit `beat`,
        one START; hangs are not modelled there."""
        if fault is None:
            return self._call("fault", None)
        if fault.resp is None or fault.beat is None or fault.runs != 1:
            raise ValueError(f"rtl: only single error responses at a given beat can be injected, not {fault}")
        self._call("fault", (fault.channel, int(fault.beat), isa.AXI_RESP[fault.resp]))

    def wait_done(self):
        irq, self.sim_wall_s = self._call("wait", self.timeout_cycles)
        return None if irq else f"{self.timeout_cycles} cycles"

    def run(self, desc_addr, count):
        self.sim_wall_s = 0.0
        try:
            return super().run(desc_addr, count)
        finally:
            self.last_wall_s = self.sim_wall_s      # Verilator time only, without the requests around it

    # ---------------------------------------------------------------- lifetime
    def close(self):
        if self._sock is not None:
            try:
                self._call("stop")
            except (SessionDied, RuntimeError):
                pass
            self._thread.join(timeout=60)
        self._release()

    def _release(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if _LIVE.get(self._key) is self:
            del _LIVE[self._key]
        if self._lock is not None:
            self._lock.close()               # releases the flock
            self._lock = None
            self._tmp.cleanup()


#: Build directories per build a process may use (`name`, `name-2`, ...): a session holds its
#: directory's lock for its life, so another process (a second pytest worker, the CLI) takes the next
#: free one (a Verilator build of its own the first time) instead of waiting on a session that may
#: stay open until its process ends.
BUILD_SLOTS = 2


def _take_build_slot(root: Path, name: str):
    """(locked file, build name): the first free slot of `name`'s build directories; when all are in
    use, wait for the first."""
    root.mkdir(parents=True, exist_ok=True)
    names = [name] + [f"{name}-{i}" for i in range(2, BUILD_SLOTS + 1)]
    for slot in names:
        lock = open(root / f"{slot}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock, slot
        except BlockingIOError:
            lock.close()
    lock = open(root / f"{name}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock, name


@atexit.register
def _close_all():
    for be in list(_LIVE.values()):
        be.close()


def run_images(cfg, jobs: list[dict], *, stall: float = 0.0, seed: int = 1, waves: bool | None = None,
               name: str | None = None) -> list[dict]:
    """Run raw DDR images {base, image (uint8), desc_count[, timeout][, fault]} one after another on one rtl
    session, through the backend's register protocol; errors and hangs are returned, not raised.

    Each result has: image (the image's bytes after the run), status, error, cycles, desc_done,
    error_desc, timed_out, sim_wall_s, and after an error or hang status_after_reset."""
    out = []
    with RtlBackend(cfg, stall=stall, seed=seed, waves=waves, build_name=name,
                    ddr_bytes=_ddr_for(jobs)) as be:
        for job in jobs:
            image = np.asarray(job["image"], np.uint8)
            base = int(job["base"])
            be.timeout_cycles = int(job.get("timeout", 10_000_000))
            be.write(base, image)
            if job.get("fault") is not None:
                be.inject_fault(job["fault"])
            res = {}
            try:
                be.run(base, int(job["desc_count"]))
                regs, res["timed_out"] = be.last_regs, 0
            except AcceleratorError as e:
                regs, res["timed_out"] = e.regs, int(e.timed_out)
                res["status_after_reset"] = be.read_reg(isa.REG["STATUS"])
            if job.get("fault") is not None:
                be.inject_fault(None)
            res.update(status=regs["STATUS"], error=regs["ERROR"], cycles=regs["CYCLES"],
                       desc_done=regs["DESC_DONE"], error_desc=regs["ERROR_DESC"], sim_wall_s=be.last_wall_s,
                       image=be.read(base, image.size))
            out.append(res)
    return out


def _ddr_for(jobs) -> int:
    end = max(int(j["base"]) + len(j["image"]) for j in jobs)
    return 1 << max(16, (end - 1).bit_length())
