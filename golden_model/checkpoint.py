"""Checkpoints without torch: official `.pt` files (read only) and `.safetensors` (read and write).

    state_dict = load_state_dict("sam2.1_hiera_tiny.pt")      # or a .safetensors; format found by content

A `.pt` is a zip: `<root>/data.pkl` (a pickle) + `<root>/data/<key>` (raw
storages) + `<root>/byteorder`. The pickle is read by a restricted Unpickler
that never imports or calls anything but the handful of globals a tensor
needs (mapped to NumPy here); any other global is refused by name, so a
checkpoint carrying code is an error, never executed.

bfloat16 has no NumPy dtype: readers return it as float32 (exact widening);
`read_*_raw` return `Tensor(dtype="BF16", data=uint16 bits)` so `convert`
keeps bfloat16 tensors bfloat16.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely: the message says what and where."""


@dataclass(frozen=True)
class Tensor:
    """A tensor as stored: safetensors dtype name and a NumPy array (BF16 as uint16 bit patterns)."""
    dtype: str
    data: np.ndarray

    def numpy(self) -> np.ndarray:
        return bf16_bits_to_float32(self.data) if self.dtype == "BF16" else self.data


# safetensors dtype name <-> NumPy little-endian dtype (BF16 held as its uint16 bits)
SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v).newbyteorder("<").str if np.dtype(v).itemsize > 1 else np.dtype(v).str: k
                         for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}

# torch.<Name>Storage -> safetensors dtype name
TORCH_STORAGES = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch's .to(torch.bfloat16); NaN stays NaN."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    r = np.where(np.isnan(np.asarray(x, np.float32)), (u >> np.uint32(16)) | np.uint32(0x40), r)
    return r.astype(np.uint16)


# ---------------------------------------------------------------- torch .pt (zip + pickle)

@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass
class _Storage:
    dtype: str
    data: np.ndarray   # flat, native little-endian


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError("checkpoint: tensor rebuilt from something that is not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
        raise CheckpointError(f"checkpoint: bad tensor geometry size={size} stride={stride} offset={offset}")
    flat = storage.data
    if math.prod(size) == 0:
        return Tensor(storage.dtype, np.zeros(size, flat.dtype))
    if math.prod(size) > flat.size:   # only expanded (stride-0) views could; a state dict has none
        raise CheckpointError(f"checkpoint: tensor of size {size} has more elements than its storage "
                              f"({flat.size}); expanded views are not supported")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise CheckpointError(f"checkpoint: tensor of size {size} stride {stride} offset {offset} "
                              f"reads past its storage of {flat.size} elements")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, tuple(s * item for s in stride), writeable=False)
    return Tensor(storage.dtype, np.array(view, copy=True))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _codecs_encode(text, encoding="latin1"):
    # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("checkpoint: _codecs.encode used for something other than bytes")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): _StorageType(dtype) for name, dtype in TORCH_STORAGES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and containers; refuses every other global by name (never imports it)."""

    def __init__(self, data: bytes, load_storage):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"checkpoint refused: its pickle asks for the global {module}.{name}, which is not a tensor "
                f"or container type (a checkpoint that runs code is never loaded)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"checkpoint: unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        return self._load_storage(stype.dtype, str(key), int(numel))


def _read_pt_raw(path: Path):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: starts like a torch zip checkpoint but is truncated or damaged ({e})") from e
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: torch zip without exactly one <root>/data.pkl (has {names[:5]}...)")
        root = pkls[0][:-len("data.pkl")]
        archive_size = Path(path).stat().st_size
        for info in zf.infolist():   # torch stores members uncompressed: anything bigger is a zip bomb
            if info.file_size > archive_size:
                raise CheckpointError(f"{path}: member {info.filename} claims {info.file_size} bytes, "
                                      f"more than the whole {archive_size}-byte file")
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = zf.read(root + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
        cache: dict[str, _Storage] = {}

        def load_storage(dtype: str, key: str, numel: int) -> _Storage:
            if key in cache:
                return cache[key]
            member = f"{root}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path}: storage {member} is missing from the archive")
            np_dtype = np.dtype(SAFETENSORS_DTYPES[dtype])
            raw = zf.read(member)
            if len(raw) % np_dtype.itemsize or len(raw) // np_dtype.itemsize < numel:
                raise CheckpointError(f"{path}: storage {member} holds {len(raw)} bytes, "
                                      f"{numel} x {np_dtype.itemsize} expected")
            arr = np.frombuffer(raw, np_dtype.newbyteorder("<" if byteorder == "little" else ">"))
            if byteorder == "big":
                arr = arr.astype(np_dtype.newbyteorder("<"))
            cache[key] = _Storage(dtype, arr)   # read-only view of the member; tensors copy out of it
            return cache[key]

        try:
            obj = _RestrictedUnpickler(zf.read(pkls[0]), load_storage).load()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise CheckpointError(f"{path}: damaged torch checkpoint ({type(e).__name__}: {e})") from e
        except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise CheckpointError(f"{path}: malformed checkpoint pickle ({type(e).__name__}: {e})") from e
    return obj


# ---------------------------------------------------------------- safetensors

def _read_safetensors_raw(path: Path, blob: bytes | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    data = Path(path).read_bytes() if blob is None else blob
    if len(data) < 8:
        raise CheckpointError(f"{path}: too short for a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: safetensors header of {n} bytes exceeds the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: safetensors header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + n:]
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: bad safetensors entry {name!r}: {info!r:.100}") from e
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        np_dtype = np.dtype(SAFETENSORS_DTYPES[dtype])
        if any(s < 0 for s in shape) or not (0 <= begin <= end <= len(body)):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape} / offsets {[begin, end]} "
                                  f"outside the {len(body)}-byte data section")
        if end - begin != math.prod(shape) * np_dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r}: {end - begin} bytes for shape {shape} {dtype}")
        spans.append((begin, end, name))
        tensors[name] = Tensor(dtype, np.frombuffer(body[begin:end], np_dtype).reshape(shape).copy())
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap")
    return tensors, metadata


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` (name -> np.ndarray or Tensor) as safetensors, little-endian, header padded to 8 bytes;
    atomically (a temporary file renamed over `path` once complete)."""
    items = {}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            arr = np.asarray(t)
            key = arr.dtype.newbyteorder("<").str if arr.dtype.itemsize > 1 else arr.dtype.str
            if key not in _NUMPY_TO_SAFETENSORS:
                raise CheckpointError(f"tensor {name!r}: dtype {arr.dtype} has no safetensors equivalent")
            t = Tensor(_NUMPY_TO_SAFETENSORS[key], arr)
        items[name] = Tensor(t.dtype, np.asarray(t.data, np.dtype(SAFETENSORS_DTYPES[t.dtype]), order="C"))
    # biggest elements first so every tensor stays aligned to its element size
    order = sorted(items, key=lambda k: (-items[k].data.itemsize, k))
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name in order:
        nbytes = items[name].data.nbytes
        header[name] = {"dtype": items[name].dtype, "shape": list(items[name].data.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    from sw.outputs import atomic_file   # stdlib-only helper: all or nothing, an old file intact on failure
    path = Path(path)
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name in order:
            f.write(items[name].data.tobytes())
    return path


# ---------------------------------------------------------------- format-independent entry points

def sniff_format(blob: bytes) -> str:
    """'torch-zip', 'safetensors' or 'torch-legacy' from a file's first bytes."""
    if blob[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(blob) >= 9 and blob[8:9] == b"{":
        return "safetensors"
    if blob[:2] == b"\x80\x02":
        return "torch-legacy"
    return "unknown"


def _state_dict_of(obj, path) -> dict[str, Tensor]:
    """The tensors of a loaded .pt: {"model": state_dict} (official layout) or a bare state dict."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds no state dict (expected {{'model': state_dict}} or a state dict)")
    bad = [k for k, v in obj.items()
           if not (isinstance(k, str) and isinstance(v, Tensor) and isinstance(v.data, np.ndarray))]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:10]}")
    return dict(obj)


def load_raw(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint's tensors as stored (BF16 as bit patterns), format picked by content.
    Refuses a checkpoint with a NaN or infinite weight (it would give NaN masks), naming the tensor."""
    tensors = _load_raw_any(Path(path))
    check_finite(tensors, path)
    return tensors


def check_finite(tensors: dict[str, Tensor], path) -> None:
    """Every floating-point tensor finite; else a CheckpointError naming the first bad one."""
    for name, t in tensors.items():
        if t.dtype not in ("F64", "F32", "F16", "BF16"):
            continue
        values = t.numpy()
        finite = np.isfinite(values)
        if not finite.all():
            bad = values[~finite]
            raise CheckpointError(
                f"{path}: tensor {name!r} {list(values.shape)} holds {bad.size} non-finite value(s) "
                f"(first: {bad.flat[0]}); refusing weights that would give NaN results")


def _load_raw_any(path: Path) -> dict[str, Tensor]:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    kind = sniff_format(head)
    if kind == "torch-zip":
        return _state_dict_of(_read_pt_raw(path), path)
    if kind == "safetensors":
        return _read_safetensors_raw(path)[0]
    if kind == "torch-legacy":
        raise CheckpointError(f"{path}: legacy (pre-1.6, non-zip) torch checkpoint; re-save it with a current torch")
    raise CheckpointError(f"{path}: neither a torch .pt (zip) nor a .safetensors file")


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict of an official `.pt` ({"model": ...}) or a `.safetensors` file, as NumPy arrays
    (bfloat16 widened to float32). Use golden_model.weights.Weights(...).check_complete() for strictness."""
    return {k: t.numpy() for k, t in load_raw(path).items()}


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    return load_safetensors_with_metadata(path)[0]


def load_safetensors_with_metadata(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors as NumPy arrays, the header's __metadata__ strings) of a .safetensors file; non-finite refused."""
    tensors, metadata = _read_safetensors_raw(Path(path))
    check_finite(tensors, path)
    return {k: t.numpy() for k, t in tensors.items()}, metadata


def convert(src: str | Path, dst: str | Path) -> dict[str, Tensor]:
    """Any readable checkpoint -> safetensors, dtypes kept (bfloat16 stays bfloat16)."""
    tensors = load_raw(src)
    save_safetensors(dst, tensors, {"format": "pt", "source": Path(src).name})
    return tensors
