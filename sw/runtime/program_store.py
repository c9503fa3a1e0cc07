"""Compiled programs kept on disk, so a new process (a CLI call, a board's restarted kernel) loads them instead
of compiling them again.

    store = ProgramStore(default_dir())          # or store_from(flag): the CLI's --program-store / env / default
    drv = Driver(cfg, "sim", program_store=store)  # its CompileCache asks the store on each miss

A compiler is a pure function of its arguments (sw.runtime.compile_cache), so its result is filed under a digest
of: the code that makes programs (every .py of the sw, hw and golden_model packages, NumPy's and Python's versions,
FORMAT: `code_fingerprint`, once a process), the compiler's qualified name (a module-level function of those
packages: a bound method or a closure carries state its arguments do not, a script's function code the
fingerprint does not see; those are compiled, never stored) and its arguments, encoded canonically (`_feed`):
arrays by dtype, shape and a BLAKE2b of their bytes (an array of zeros by its shape alone; a read-only array with a
read-only owner, a model's frozen weights or the shared zeros, hashed once a process), dataclasses by type name
and fields, scalars, tuples, lists, dicts in order. Anything else (an object it cannot encode) is compiled, not
stored. The graph executor's placement (sw.compile.graph.place_all, which compiles programs to price the nodes)
is kept the same way. The keyword BOUND (the DDR a program may take) is not keyed: it only refuses programs that
do not fit, so a session with more DDR (a video session's arena holds the memory bank too) loads the programs a
smaller one stored, and a loaded result is used only when every image in it fits the call's bound (`_fits`;
else the compiler runs and refuses it as before).

An entry is one .npz file (`<key>.npz`), written to a temporary file and renamed into place (a killed process
leaves no half entry) and read without pickle (`_members`: object arrays refused). Its member "tree" is JSON:
the result as a tree of JSON scalars and tagged nodes (tuple, list, dict, set, bytes, NumPy scalar, array,
shared reference, rows of alike tuples as columns, object); an object's class must be on ALLOWED (by qualified
name), which also names the attributes it has; it is made with object.__new__ and its attributes set: no code
of the file's choosing runs. Arrays (numeric dtypes only) are slices of one member per dtype; integer arrays kept as the
narrowest integers holding their values (a descriptor list's int64 columns), a large one mostly zeros (a program
image's input and output space) as its non-zero 4 KiB blocks. Objects shared inside a result stay shared once
restored (a program's descriptors and its symbolic list share columns); nothing relies on identity across
results. An entry that does not decode (truncated, edited, a class not on the list, another FORMAT, a pickle) is
warned about (ProgramStoreWarning), deleted, compiled again and written anew. The directory is kept within a
budget (BUDGET_BYTES, SAM2FPGA_PROGRAM_STORE_MB), least recently used entries (file mtimes, touched on every
load) removed first. The CLI's stores write in the background (`background=True`: a thread of their own, `flush`
waits for it). Beside the entries, the cycle model's outcomes per overlay (`load_timings`, `save_timings`).
"""
from __future__ import annotations

import atexit
import copy
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import queue
import sys
import threading
import time
import warnings
import weakref
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sw.runtime.compile_cache import _owner, _place, lean_from_blocks, mib_from_env, nonzero_blocks, programs

#: The entry format: a change to the encoding below bumps it (older entries then miss, never mis-decode).
FORMAT = 1
#: Where the CLI keeps the store unless told: "off", or a directory.
STORE_ENV = "SAM2FPGA_PROGRAM_STORE"
#: The directory's budget. One 1024 px SAM 2.1 tiny image's programs on a preset take ~210 MB on disk
#: (docs/runtime.md): 2 GiB holds about nine such (model size, image size, preset) sets and the host-fed nodes of
#: photos seen lately, and is little beside a board's SD card or a PC's disk.
BUDGET_BYTES = 2 << 30
BUDGET_ENV = "SAM2FPGA_PROGRAM_STORE_MB"
#: Arrays at least this big keep only their non-zero blocks of BLOCK bytes when those are under SPARSE of them.
SPARSE_MIN, BLOCK, SPARSE = 1 << 16, 4096, 0.75
#: Integer arrays of at least this many elements are kept as the narrowest of _NARROW holding their values.
NARROW_MIN = 16
_NARROW = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32))
#: Lists and tuples of at least this many tuples are kept as columns when their tuples are alike.
ROWS_MIN = 8
#: Eviction brings the directory down to this share of the budget (not one entry's room: fewer scans).
LOW_WATER = 0.9
#: The compilers' keyword for the DDR bytes a program may take (sw.compile.linear.lay_out): a limit, not an input.
BOUND = "max_ddr_bytes"


class ProgramStoreWarning(UserWarning):
    """An entry that could not be read (ignored, deleted, compiled again) or the store that could not be written."""


class Unstorable(TypeError):
    """An argument or a result the store cannot encode: compiled, not stored."""


class BadEntry(ValueError):
    """An entry that does not decode as this FORMAT's tree of ALLOWED objects."""


def default_dir() -> Path:
    """$XDG_CACHE_HOME/sam2fpga/programs, else ~/.cache/sam2fpga/programs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sam2fpga" / "programs"


def budget_bytes() -> int:
    """BUDGET_BYTES, or the BUDGET_ENV override (MiB, a whole number >= 0; 0 reads entries but writes none)."""
    return mib_from_env(BUDGET_ENV, BUDGET_BYTES, "the program store's size")


def store_from(setting: str | os.PathLike | None = None) -> "ProgramStore | None":
    """The store a command uses: `setting` (its --program-store: a directory or "off"), else STORE_ENV's, else
    default_dir(); None when "off"."""
    if setting is None:
        setting = os.environ.get(STORE_ENV) or default_dir()
    if str(setting).strip().lower() == "off":
        return None
    return ProgramStore(setting, background=True)


# ---------------------------------------------------------------- the key
def _package_dirs() -> list[Path]:
    import golden_model
    import sw
    from hw import isa
    return [Path(sw.__file__).parent, Path(isa.__file__).parent, Path(golden_model.__file__).parent]


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """A digest of what a compiler's output may depend on besides its arguments: the source of every .py of the
    sw, hw and golden_model packages (names and bytes), NumPy's and Python's versions, FORMAT."""
    h = hashlib.blake2b(f"{FORMAT} {np.__version__} {sys.version_info[:3]}".encode(), digest_size=20)
    for root in _package_dirs():
        for path in sorted(root.rglob("*.py")):
            h.update(f"\0{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


#: The packages code_fingerprint hashes: a compiler from elsewhere (a script's) could change unseen.
PACKAGES = ("sw", "hw", "golden_model")


def compiler_name(compiler) -> str | None:
    """The qualified name of a module-level function of PACKAGES; None for anything else (a bound method, a
    closure, a lambda, a callable object: state that is not in its arguments; code the fingerprint does not
    cover)."""
    if getattr(compiler, "__self__", None) is not None or not callable(compiler):
        return None
    module, qualname = getattr(compiler, "__module__", None), getattr(compiler, "__qualname__", None)
    if not module or not qualname or "<" in qualname or "." in qualname or module.split(".")[0] not in PACKAGES:
        return None
    if getattr(sys.modules.get(module), qualname, None) is not compiler:
        return None
    return f"{module}.{qualname}"


class _Digests:
    """BLAKE2b digests of arrays; those of a read-only array with a read-only owner (frozen weights, shared zeros:
    their bytes never change) kept by owner and place, as CompileCache keeps them by identity; those of frozen
    dataclasses (an OverlayConfig, a layout) by identity too (kept alive while kept)."""

    def __init__(self):
        self._kept: dict = {}
        self._frozen: dict = {}
        self.hashed = 0                  # bytes hashed

    def dataclass(self, x) -> bytes:
        """A dataclass instance's encoding: type name, then each field's name and value."""
        kept = self._frozen.get(id(x))
        if kept is not None and kept[0] is x:
            return kept[1]
        t = type(x)
        fields = dataclasses.fields(x)
        h = hashlib.blake2b(f"c{t.__module__}.{t.__qualname__}{len(fields)};".encode(), digest_size=16)
        for f in fields:
            _feed(h, f.name, self)
            _feed(h, getattr(x, f.name), self)
        digest = b"c" + h.digest()
        params = getattr(t, "__dataclass_params__", None)
        if params is not None and params.frozen and all(_immutable(getattr(x, f.name)) for f in fields):
            if len(self._frozen) > 1 << 12:
                self._frozen.clear()
            self._frozen[id(x)] = (x, digest)
        return digest

    def __call__(self, x: np.ndarray) -> bytes:
        owner = _owner(x)
        if owner is not None:
            key = (id(owner), _place(x))
            kept = self._kept.get(key)
            if kept is not None and kept[0]() is owner:
                return kept[1]
        if not x.any():                  # zeros (an input read in place): its dtype and shape, written by _feed
            digest = b"zeros"
        else:
            data = np.ascontiguousarray(x)
            self.hashed += data.nbytes
            digest = hashlib.blake2b(data.reshape(-1).view(np.uint8), digest_size=16).digest()
        if owner is not None:
            if len(self._kept) > 1 << 14:
                self._kept.clear()
            self._kept[key] = (weakref.ref(owner), digest)
        return digest


_KEY_SCALARS = frozenset((int, float, str, bytes, bool, type(None)))


def _immutable(v) -> bool:
    """A scalar, or a tuple of such (what a frozen dataclass's field can hold and nothing can change)."""
    return type(v) in _KEY_SCALARS or type(v) is tuple and all(map(_immutable, v))


def _feed(h, x, digest) -> None:
    """x into hash h, canonically: type-tagged, lengths given (Unstorable for what it cannot encode)."""
    if x is None or isinstance(x, bool):
        h.update(b"N" if x is None else b"T" if x else b"F")
    elif isinstance(x, np.generic):                 # (before float: a np.float64 is one, but not the same value)
        if not _plain_dtype(x.dtype):
            raise Unstorable(f"a scalar of dtype {x.dtype}")
        h.update(f"g{x.dtype.str};".encode() + x.tobytes())
    elif isinstance(x, int):
        h.update(b"i%d;" % x)
    elif isinstance(x, float):
        h.update(b"f" + x.hex().encode() + b";")
    elif isinstance(x, str):
        b = x.encode()
        h.update(b"s%d;" % len(b) + b)
    elif isinstance(x, bytes):
        h.update(b"b%d;" % len(x) + x)
    elif isinstance(x, np.ndarray):
        if not _plain_dtype(x.dtype):
            raise Unstorable(f"an array of dtype {x.dtype}")
        h.update(f"a{x.dtype.str}{x.shape};".encode() + digest(x))
    elif type(x) is tuple and _immutable(x):        # (a RowRuns' runs: a tuple a row) its repr, canonical
        b = repr(x).encode()
        h.update(b"r%d;" % len(b) + b)
    elif type(x) in (tuple, list):
        h.update(b"%s%d;" % (b"t" if type(x) is tuple else b"l", len(x)))
        for v in x:
            _feed(h, v, digest)
    elif type(x) is dict:
        h.update(b"d%d;" % len(x))
        for k, v in x.items():
            _feed(h, k, digest)
            _feed(h, v, digest)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        h.update(digest.dataclass(x))
    else:
        raise Unstorable(f"an argument of type {type(x).__module__}.{type(x).__qualname__}")


def _plain_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf" and dtype.fields is None and dtype.subdtype is None


# ---------------------------------------------------------------- the value
def _allowed() -> dict:
    """Class qualified name -> (class, the attributes an instance holds, {cache attribute: what a restored one
    holds}, the attributes one may hold besides): what an entry may contain besides JSON scalars, containers and
    numeric arrays."""
    from golden_model import intattn, intvec
    from hw import config
    from sw.compile import attention, conv, graph, linear, vector
    from sw.perf import layers
    from sw.runtime import layout, program
    classes = [linear.Program, conv.ConvProgram, vector.VectorProgram, attention.AttentionProgram,
               layout.RelayoutProgram, layout.TransposeProgram, attention.TokenRows, conv.FmapLayout,
               layout.TokenRowLayout, layout.TokenTileLayout, layout.RowRuns, layout.RowSegments,
               config.OverlayConfig, intattn.AttentionQuant, intvec.LayerNormParams, intvec.LutParams,
               intvec.AddParams, intvec.RescaleParams, intvec.RopeParams,
               graph.Placement, graph.EngineCost, layers.Layer]      # (sw.compile.graph.place_all's placements)
    # a program's own roles (a vector or attention program reading an input in segments: sw.compile.vector,
    # sw.compile.attention) and the depthwise engine's multipliers (sw.compile.conv) are set on the instance
    programs = (linear.Program, conv.ConvProgram, vector.VectorProgram, attention.AttentionProgram)
    out = {_qualname(c): (c, tuple(f.name for f in dataclasses.fields(c)), {},
                          ("ROLES", "array_macs") if issubclass(c, programs) else ()) for c in classes}
    # sw.runtime.program's descriptor lists: their caches (the dicts, the relink's words) made again on use
    out[_qualname(program.ColumnDescriptors)] = (program.ColumnDescriptors, ("split", "_n", "_kinds", "_kind"),
                                                 {"_dicts": None, "_unaddressed": _DROP}, ())
    out[_qualname(program.SplitDescriptors)] = (program.SplitDescriptors, ("split",), {"_unaddressed": _DROP}, ())
    return out


_DROP = object()
ALLOWED: dict = {}              # filled on first use (_allowed: importing the compilers here would be circular)


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _classes() -> dict:
    if not ALLOWED:
        ALLOWED.update(_allowed())
    return ALLOWED


class _Writer:
    """A result as a JSON tree and arrays pooled by dtype."""

    def __init__(self):
        self._refs: dict[int, int] = {}       # id -> its node's number (pre-order), for shared objects
        self._alive: list = []                # what those ids name, alive while encoding
        self._count = 0
        self._open: set[int] = set()          # nodes being encoded (a reference to one is a cycle)
        self.pools: dict[str, list] = {}      # dtype.str -> [flat arrays]
        self._sizes: dict[str, int] = {}

    def _pool(self, flat: np.ndarray) -> list:
        key = flat.dtype.str
        at = self._sizes.get(key, 0)
        self.pools.setdefault(key, []).append(flat)
        self._sizes[key] = at + flat.size
        return [key, at, int(flat.size)]

    def encode(self, x):
        if x is None or type(x) in (bool, str, int):
            return x
        if type(x) is float:
            return x if np.isfinite(x) else {"$": "float", "v": repr(x)}
        if type(x) is bytes:
            return {"$": "bytes", "v": x.hex()}
        if isinstance(x, np.generic):
            if not _plain_dtype(x.dtype):
                raise Unstorable(f"a scalar of dtype {x.dtype}")
            return {"$": "np", "dtype": x.dtype.str, "v": x.tobytes().hex()}
        if type(x) is tuple and all(type(v) in _JSON_SCALARS for v in x):
            return {"$": "t", "v": list(x)}     # (immutable, of JSON scalars: not numbered, never shared)
        n = self._refs.get(id(x))
        if n is not None:                       # met before: shared, restored shared
            if n in self._open:
                raise Unstorable("a result that contains itself")
            return {"$": "ref", "i": n}
        # numbered in pre-order: the decoder numbers a node before its children, as here
        n = self._refs[id(x)] = self._count
        self._count += 1
        self._alive.append(x)
        self._open.add(n)
        node = self._encode(x)
        self._open.discard(n)
        return node

    def _encode(self, x):
        t = type(x)
        if t is np.ndarray:
            return self._array(x)
        if t in (tuple, list) and len(x) >= ROWS_MIN and all(type(v) is tuple for v in x):
            # rows of equal tuples (the sim's fast-mode pieces: thousands at 1024 px) kept as columns
            columns = self._column(list(x))
            if columns is not None:
                return {"$": "rows", "type": t.__name__, "n": len(x), "c": columns}
        if t in (tuple, list, set, frozenset):
            items = sorted(x, key=repr) if t in (set, frozenset) else x
            return {"$": t.__name__, "v": [self.encode(v) for v in items]}
        if t is dict:
            return {"$": "dict", "k": [self.encode(k) for k in x], "v": [self.encode(v) for v in x.values()]}
        allowed = _classes().get(_qualname(t))
        if allowed is None or allowed[0] is not t:
            raise Unstorable(f"a result holding a {_qualname(t)} (not on sw.runtime.program_store.ALLOWED)")
        _, attrs, caches, optional = allowed
        state = dict(getattr(x, "__dict__", {}))
        extra = set(state) - set(attrs) - set(caches) - set(optional)
        if extra or not set(attrs) <= set(state):
            raise Unstorable(f"a {_qualname(t)} with attributes {sorted(state)}, not ALLOWED's {list(attrs)} "
                             f"(and {list(optional)})")
        node = {"$": "obj", "cls": _qualname(t),
                "f": {a: self.encode(state[a]) for a in attrs + tuple(a for a in optional if a in state)}}
        if issubclass(t, tuple):
            node["v"] = [self.encode(v) for v in x]
        return node

    def _column(self, items: list) -> dict | None:
        """The values `items` as one column: whole numbers (an array), Nones, strings, or tuples of one length
        (a column each); None when they are none of those alike."""
        if all(type(v) is int for v in items):
            try:
                return {"c": "i", "v": self._array(np.array(items, np.int64))}
            except OverflowError:
                return None
        if all(v is None for v in items):
            return {"c": "n"}
        if all(type(v) is str for v in items):
            return {"c": "s", "v": items}
        if all(type(v) is tuple for v in items) and len({len(v) for v in items}) == 1:
            columns = [self._column([v[j] for v in items]) for j in range(len(items[0]))]
            return None if None in columns else {"c": "t", "v": columns}
        return None

    def _array(self, x: np.ndarray) -> dict:
        if not _plain_dtype(x.dtype):
            raise Unstorable(f"an array of dtype {x.dtype}")
        flat = np.ascontiguousarray(x).reshape(-1)
        node = {"$": "nd", "dtype": x.dtype.str, "shape": list(x.shape), "ro": not x.flags.writeable}
        if x.dtype.kind in "iu" and x.dtype.itemsize > 1 and flat.size >= NARROW_MIN:
            # a descriptor list's int64 columns hold small numbers: kept as the narrowest integers that hold
            # them (a constant column as its value), widened back on loading
            lo, hi = int(flat.min()), int(flat.max())
            if lo == hi:
                node["fill"] = lo
                return node
            narrow = next((t for t in _NARROW if t.itemsize < x.dtype.itemsize
                           and np.iinfo(t).min <= lo and hi <= np.iinfo(t).max), None)
            if narrow is not None:
                node["as"] = narrow.str
                flat = flat.astype(narrow)
        raw = flat.view(np.uint8)
        if raw.size >= SPARSE_MIN:
            full = raw.size // BLOCK * BLOCK
            blocks = raw[:full].reshape(-1, BLOCK)
            used = np.flatnonzero(nonzero_blocks(raw, BLOCK))
            if len(used) < SPARSE * len(blocks):
                node["blocks"] = self._pool(used.astype(np.int64))
                node["at"] = self._pool(np.concatenate([blocks[used].reshape(-1), raw[full:]]))
                return node
        node["at"] = self._pool(flat)
        return node


class _Reader:
    """A _Writer's tree back, every node checked (BadEntry)."""

    def __init__(self, pools: dict[str, np.ndarray]):
        self.pools = pools
        self.refs: list = []

    def decode(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict) or not isinstance(node.get("$"), str):
            raise BadEntry(f"a node {str(node)[:60]!r}")
        tag = node["$"]
        if tag == "float":
            return float(_str(node["v"]))
        if tag == "bytes":
            return bytes.fromhex(_str(node["v"]))
        if tag == "np":
            dtype = _dtype(node["dtype"])
            raw = bytes.fromhex(_str(node["v"]))
            if len(raw) != dtype.itemsize:
                raise BadEntry("a scalar of the wrong size")
            return np.frombuffer(raw, dtype)[0]
        if tag == "t":
            v = _list(node["v"])
            if not all(type(e) in _JSON_SCALARS for e in v):
                raise BadEntry("a tuple of scalars holding another node")
            return tuple(v)
        if tag == "ref":
            i = node["i"]
            if type(i) is not int or not 0 <= i < len(self.refs) or self.refs[i] is _PENDING:
                raise BadEntry(f"a reference to node {i!r}")
            return self.refs[i]
        n = len(self.refs)
        self.refs.append(_PENDING)
        value = self._decode(tag, node)
        self.refs[n] = value
        return value

    def _decode(self, tag: str, node: dict):
        if tag == "nd":
            return self._array(node)
        if tag in ("tuple", "list", "set", "frozenset"):
            return {"tuple": tuple, "list": list, "set": set, "frozenset": frozenset}[tag](
                self.decode(v) for v in _list(node["v"]))
        if tag == "rows":
            n, kind = node["n"], node["type"]
            if type(n) is not int or n < 0 or kind not in ("tuple", "list"):
                raise BadEntry("rows of a bad count or type")
            rows = self._column(node["c"], n)
            if not all(type(r) is tuple for r in rows):
                raise BadEntry("rows that are not tuples")
            return tuple(rows) if kind == "tuple" else rows
        if tag == "dict":
            keys, values = _list(node["k"]), _list(node["v"])
            if len(keys) != len(values):
                raise BadEntry("a dict of unequal keys and values")
            return {self.decode(k): self.decode(v) for k, v in zip(keys, values)}
        if tag == "obj":
            allowed = _classes().get(node.get("cls"))
            if allowed is None:
                raise BadEntry(f"class {str(node.get('cls'))[:80]!r} is not on the program store's ALLOWED list")
            cls, attrs, caches, optional = allowed
            fields = node.get("f")
            if not isinstance(fields, dict) or list(fields) != list(attrs) + [a for a in optional if a in fields]:
                raise BadEntry(f"a {node['cls']} with attributes {str(fields)[:80]}, not {list(attrs)} "
                               f"(and {list(optional)})")
            if issubclass(cls, tuple):
                obj = tuple.__new__(cls, [self.decode(v) for v in _list(node["v"])])
            else:
                obj = object.__new__(cls)
            for a in fields:
                object.__setattr__(obj, a, self.decode(fields[a]))
            for a, value in caches.items():
                if value is not _DROP:
                    object.__setattr__(obj, a, value)
            return obj
        raise BadEntry(f"a node tagged {tag[:40]!r}")

    def _column(self, node, n: int) -> list:
        """_Writer._column's values back (n of them)."""
        kind = node.get("c") if isinstance(node, dict) else None
        if kind == "i":
            if not isinstance(node.get("v"), dict):
                raise BadEntry("a column without its array")
            out = self._array(node["v"])
            if out.dtype != np.int64 or out.shape != (n,):
                raise BadEntry("a column of the wrong type or length")
            return out.tolist()
        if kind == "n":
            return [None] * n
        if kind == "s":
            out = _list(node["v"])
            if len(out) != n or not all(type(v) is str for v in out):
                raise BadEntry("a column of strings of the wrong type or length")
            return out
        if kind == "t":
            columns = [self._column(c, n) for c in _list(node["v"])]
            return list(zip(*columns)) if columns else [()] * n
        raise BadEntry(f"a column {str(node)[:60]!r}")

    def _array(self, node: dict) -> np.ndarray:
        dtype = _dtype(node["dtype"])
        shape = tuple(_list(node["shape"]))
        if not all(type(s) is int and s >= 0 for s in shape):
            raise BadEntry(f"an array of shape {shape!r}")
        count = math.prod(shape)
        if "fill" in node:
            if dtype.kind not in "iu" or type(node["fill"]) is not int:
                raise BadEntry("a constant array that is not of integers")
            out = np.full(shape, node["fill"], dtype)
        else:
            stored = dtype
            if "as" in node:
                stored = _dtype(node["as"])
                if stored.kind not in "iu" or dtype.kind not in "iu" or stored.itemsize >= dtype.itemsize:
                    raise BadEntry(f"a {dtype} array kept as {stored}")
            if "blocks" in node:
                used = self._slice(node["blocks"], np.dtype(np.int64))
                data = self._slice(node["at"], np.dtype(np.uint8))
                nbytes = count * stored.itemsize
                full = nbytes // BLOCK * BLOCK
                if data.size != len(used) * BLOCK + nbytes - full or (len(used) and (
                        used.min() < 0 or used.max() >= full // BLOCK)):
                    raise BadEntry("a sparse array of the wrong size")
                flat = lean_from_blocks(nbytes, BLOCK, used, data).view(stored)
            else:
                flat = self._slice(node["at"], stored)
                if flat.size != count:
                    raise BadEntry("an array of the wrong size")
                if stored == dtype:
                    flat = flat.copy()          # (not a view keeping the whole file's bytes alive)
            out = (flat.astype(dtype) if stored != dtype else flat).reshape(shape)
        if node.get("ro") is True:
            out.flags.writeable = False
        return out

    def _slice(self, at, dtype: np.dtype) -> np.ndarray:
        key, start, size = _list(at)
        pool = self.pools.get(key)
        if pool is None or pool.dtype != dtype or type(start) is not int or type(size) is not int \
                or not 0 <= start <= start + size <= pool.size:
            raise BadEntry(f"an array at {at!r}")
        return pool[start:start + size]


_PENDING = object()
_JSON_SCALARS = (str, int, bool, type(None))     # (floats: NaN and infinities are nodes)


def _str(x) -> str:
    if not isinstance(x, str):
        raise BadEntry(f"{str(x)[:40]!r} where a string was expected")
    return x


def _list(x) -> list:
    if not isinstance(x, list):
        raise BadEntry(f"{str(x)[:40]!r} where a list was expected")
    return x


def _dtype(s) -> np.dtype:
    try:
        dtype = np.dtype(_str(s))
    except TypeError as e:
        raise BadEntry(f"dtype {s!r}") from e
    if not _plain_dtype(dtype):
        raise BadEntry(f"dtype {s!r}")
    return dtype


def encode(result, key: str = "", out=None) -> bytes | None:
    """An entry's bytes: an .npz of the JSON header ("tree": FORMAT, the entry's key, the result's tree) and one
    array per dtype ("p0", "p1", ...); written into file object `out` when given (then None)."""
    w = _Writer()
    tree = w.encode(result)
    names = {dtype: f"p{i}" for i, dtype in enumerate(w.pools)}
    header = {"format": FORMAT, "key": key, "pools": names, "tree": tree}
    arrays = {"tree": np.frombuffer(json.dumps(header, separators=(",", ":")).encode(), np.uint8)}
    for key, parts in w.pools.items():
        arrays[names[key]] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if out is not None:
        np.savez(out, **arrays)
        return None
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _Bytes(io.RawIOBase):
    """A read-only file over a buffer, reading without copying it whole (zipfile's view of an entry's bytes)."""

    def __init__(self, buffer):
        super().__init__()
        self.buffer, self.pos = memoryview(buffer).cast("B"), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, offset + (0, self.pos, len(self.buffer))[whence])
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = len(self.buffer) if size is None or size < 0 else min(self.pos + size, len(self.buffer))
        out, self.pos = bytes(self.buffer[self.pos:end]), max(self.pos, end)
        return out


#: .npy header readers by format version (np.savez writes 1.0, or 2.0 for a header past 64 KiB)
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _members(data) -> dict[str, np.ndarray]:
    """The arrays of the uncompressed .npz in `data` (what np.savez writes), by name, as views of `data`: no
    member copied. Each member's CRC checked (as zipfile's reads do) and its .npy header read as NumPy reads
    it; object arrays (pickles) refused."""
    out, view = {}, memoryview(data)
    with zipfile.ZipFile(_Bytes(data)) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise BadEntry(f"member {info.filename!r} is not a stored .npy")
            local = view[info.header_offset:info.header_offset + 30]
            if len(local) < 30 or bytes(local[:4]) != b"PK\x03\x04":
                raise BadEntry(f"member {info.filename!r}: no local header")
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            member = view[start:start + info.file_size]
            if len(member) != info.file_size or zlib.crc32(member) != info.CRC:
                raise BadEntry(f"member {info.filename!r}: truncated or changed (CRC)")
            f = _Bytes(member)
            version = np.lib.format.read_magic(f)
            if version not in _NPY_HEADERS:
                raise BadEntry(f"member {info.filename!r}: .npy version {version}")
            shape, fortran, dtype = _NPY_HEADERS[version](f)
            count = math.prod(shape)
            if dtype.hasobject or fortran or count * dtype.itemsize != len(member) - f.tell():
                raise BadEntry(f"member {info.filename!r}: not a plain C-order array of its size")
            out[info.filename[:-4]] = np.frombuffer(data, dtype, count, start + f.tell()).reshape(shape)
    return out


def decode(source, key: str = "") -> object:
    """encode's result back from a path, a file object or the bytes of one (read in place: every array it returns
    is a copy), `key` the one it was written under (BadEntry, or the error reading it, when it is not such
    an entry)."""
    if isinstance(source, (str, os.PathLike)):
        source = Path(source).read_bytes()
    elif not isinstance(source, (bytes, bytearray, memoryview)):
        source = source.read()
    npz = _members(source)
    if "tree" not in npz:
        raise BadEntry("no member 'tree'")
    header = json.loads(npz["tree"].tobytes().decode())
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BadEntry(f"format {header.get('format') if isinstance(header, dict) else None!r}, not {FORMAT}")
    if header.get("key") != key:
        raise BadEntry(f"the entry of key {str(header.get('key'))[:60]!r}, not {key!r}")
    names = header.get("pools")
    if not isinstance(names, dict) or "tree" not in header:
        raise BadEntry("no pools or no tree")
    pools = {}
    for key, member in names.items():
        if member not in npz or member == "tree":
            raise BadEntry(f"no member {member!r}")
        pools[key] = npz[member]
        if pools[key].ndim != 1 or pools[key].dtype != _dtype(key):
            raise BadEntry(f"member {member!r} is not a flat {key} array")
    return _Reader(pools).decode(header.get("tree"))


# ---------------------------------------------------------------- the directory
@dataclasses.dataclass
class StoreStats:
    hits: int = 0            # results loaded
    compiled: int = 0        # compiler calls (a miss, an unstorable call, a bad entry)
    written: int = 0         # entries written
    bad: int = 0             # entries that did not decode (deleted, compiled again)
    unstorable: int = 0      # calls compiled without the store (an argument or a result it cannot encode)
    evicted: int = 0         # entries removed for the budget
    key_s: float = 0.0       # hashing the keys
    load_s: float = 0.0      # reading and decoding entries
    write_s: float = 0.0     # encoding and writing entries
    compile_s: float = 0.0   # in the compilers
    bytes_read: int = 0
    bytes_written: int = 0


class ProgramStore:
    """A directory of compiled results (module docstring); `compile(compiler, args, kwargs)` is what
    CompileCache calls on a miss."""

    def __init__(self, directory: str | os.PathLike, budget: int | None = None, background: bool = False):
        """`background`: entries are encoded and written by a thread of their own, beside the run's NumPy work
        (a command's first image writes ~200 MB), instead of before compile() returns; `flush` waits for them
        (Driver.close, summary and the process's exit do)."""
        self.dir = Path(directory).expanduser()
        self.budget = budget_bytes() if budget is None else budget
        self.stats = StoreStats()
        self._digest = _Digests()
        self._used: int | None = None            # the directory's bytes (scanned on the first write)
        self._writable = True
        self._warned: set = set()
        self.background = background
        self._timings: dict[Path, int] = {}         # timings file -> the outcomes it held (load_timings)
        self._buffer: bytearray | None = None        # what entries are read into (_read_buffer)
        self._overlays: dict = {}                    # the overlays whose timings it loaded, in order (flush saves them)
        self._queue: queue.SimpleQueue | None = None     # the writer's (key, result, compiler) entries
        self._pending = 0
        self._idle = threading.Condition()

    def __repr__(self) -> str:
        return f"ProgramStore({str(self.dir)!r}, budget={self.budget})"

    def summary(self) -> str:
        """What this process did with the store, one line (the CLI prints it)."""
        self.flush()
        s = self.stats
        return (f"program store {self.dir}: {s.hits} loaded ({s.load_s:.1f} s), {s.compiled} compiled "
                f"({s.compile_s:.1f} s), {s.written} stored ({s.write_s:.1f} s)" + (f", {s.bad} bad" if s.bad else ""))

    def key(self, compiler, args: tuple, kwargs: dict) -> str | None:
        """The entry's name for compiler(*args, **kwargs), None when it cannot be keyed (compiled, not stored)."""
        name = compiler_name(compiler)
        if name is None:
            return None
        h = hashlib.blake2b(digest_size=20)
        h.update(f"{code_fingerprint()}\0{name}\0".encode())
        try:
            _feed(h, args, self._digest)
            _feed(h, {k: v for k, v in kwargs.items() if k != BOUND}, self._digest)
        except Unstorable:
            return None
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def compile(self, compiler, args: tuple, kwargs: dict):
        """The stored result of compiler(*args, **kwargs), else the compiler's (then stored)."""
        s = self.stats
        t0 = time.perf_counter()
        key = self.key(compiler, args, kwargs)
        t1 = time.perf_counter()
        s.key_s += t1 - t0
        fits = True
        if key is not None:
            result = self._load(key)
            s.load_s += time.perf_counter() - t1
            fits = result is _MISSING or _fits(result, kwargs.get(BOUND))
            if result is not _MISSING and fits:
                s.hits += 1
                return result
        t2 = time.perf_counter()
        result = compiler(*args, **kwargs)      # (a stored one that does not fit: the compiler's error)
        s.compiled += 1
        s.compile_s += time.perf_counter() - t2
        if key is None:
            s.unstorable += 1
        elif fits and self._writable and self.budget:
            if self.background:
                self._write_later(key, _detached(result), compiler)
            else:
                self._save(key, result, compiler)
        return result

    def _write_later(self, key: str, result, compiler) -> None:
        if self._queue is None:
            self._queue = queue.SimpleQueue()
            threading.Thread(target=self._writer, name=f"program store writer {self.dir}", daemon=True).start()
            _BACKGROUND.add(self)
        with self._idle:
            self._pending += 1
        self._queue.put((key, result, compiler))

    def _writer(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                self._save(*entry)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def flush(self) -> None:
        """Wait until every entry handed to the background writer is written (or refused with its warning), and
        write the cycle model's outcomes for the overlays this store served (save_timings)."""
        with self._idle:
            self._idle.wait_for(lambda: not self._pending)
        for cfg in self._overlays:
            self.save_timings(cfg)

    def _load(self, key: str):
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                data = self._read_buffer(os.fstat(f.fileno()).st_size)
                size = f.readinto(data)
                data = data[:size]                              # (a file cut meanwhile: what was read)
        except (FileNotFoundError, NotADirectoryError):         # (no entry; no directory yet)
            return _MISSING
        except OSError as e:
            self._warn(f"cannot read {path}: {e}; compiling instead")
            return _MISSING
        try:
            result = decode(data, key)
        except Exception as e:        # whatever a bad file raises (zipfile, NumPy, JSON, BadEntry): never fatal
            self.stats.bad += 1
            self._warn(f"ignoring {path}: it does not decode as a stored program ({type(e).__name__}: "
                       f"{str(e)[:200]}); compiling again and replacing it", always=True)
            _remove(path)
            return _MISSING
        finally:
            self._release(data)
        self.stats.bytes_read += size
        try:
            os.utime(path)            # the least recently used go first
        except OSError:
            pass
        return result

    def _read_buffer(self, size: int) -> memoryview:
        """`size` bytes of the buffer entries are read into, the same one entry after entry (its pages stay
        mapped: a new one an entry was ~210 MB of fresh pages a 1024 px image, dear where page faults are, as in
        a VM); a new one when it is short."""
        if self._buffer is None or len(self._buffer) < size:
            self._buffer = bytearray(max(size, 2 * len(self._buffer or b"")))
        return memoryview(self._buffer)[:size]

    def _release(self, data: memoryview) -> None:
        """Done with `data` (a _read_buffer view): the buffer is read into again only when nothing decoded still
        views it (every array decode returns is a copy; were one not, the buffer is left to it). A bytearray with
        views of it cannot change size: popping its last byte says whether any is left."""
        data.release()
        try:
            if self._buffer:
                self._buffer.append(self._buffer.pop())
        except BufferError:
            self._buffer = None

    def _save(self, key: str, result, compiler) -> None:
        t0 = time.perf_counter()
        path = self.path(key)
        tmp = path.with_name(f".{key}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                encode(result, key, f)
                size = f.tell()
            if size > self.budget:
                _remove(tmp)
                return
            os.replace(tmp, path)
        except OSError as e:
            _remove(tmp)
            self._writable = False
            self._warn(f"cannot write {self.dir} ({e}): programs are compiled, not stored, from now on")
            return
        except Exception as e:          # Unstorable (a type not on ALLOWED), or a bug here: the run goes on
            _remove(tmp)
            self.stats.unstorable += 1
            self._warn(f"{compiler_name(compiler)}'s result is not stored: {e}")
            return
        s = self.stats
        s.written += 1
        s.bytes_written += size
        s.write_s += time.perf_counter() - t0
        if self._used is None:
            self._used = self.size()
        else:
            self._used += size
        if self._used > self.budget:
            self.evict()

    def _timings_path(self, cfg) -> Path:
        name = hashlib.blake2b(f"{code_fingerprint()}\0{cfg!r}".encode(), digest_size=12).hexdigest()
        return self.dir / f"timings-{name}.json"

    def load_timings(self, cfg) -> int:
        """Take the cycle model's outcomes an earlier process saved for overlay `cfg` (save_timings) into this
        one's (sw.backends.cycles.remember_timings): a new session's programs, loaded from the store, then cost
        no first pass of the recurrence (~0.8 s at 1024 px); `flush` saves them again with this process's. How
        many lists; a bad file warned about, removed."""
        from sw.backends import cycles
        self._overlays[cfg] = None
        path = self._timings_path(cfg)
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return 0
        except OSError as e:
            self._warn(f"cannot read {path}: {e}")
            return 0
        try:
            header = json.loads(text)
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError("not this format's timings")
            self._timings[path] = cycles.remember_timings(cfg, header.get("rows"))
        except ValueError as e:                 # (json's errors are ValueErrors)
            self._warn(f"ignoring {path}: {str(e)[:200]}", always=True)
            _remove(path)
            return 0
        return self._timings[path]

    def save_timings(self, cfg) -> None:
        """Write the cycle model's outcomes for `cfg` (sw.backends.cycles.timings) for the next process, when it
        has more than it loaded; atomically, like an entry."""
        from sw.backends import cycles
        rows, path = cycles.timings(cfg), self._timings_path(cfg)
        if len(rows) <= self._timings.get(path, 0) or not (self._writable and self.budget):
            return
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"format": FORMAT, "rows": rows}, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as e:
            _remove(tmp)
            self._warn(f"cannot write {path}: {e}")
            return
        self._timings[path] = len(rows)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, path) of every entry, least recently used first."""
        out = []
        try:
            with os.scandir(self.dir) as it:
                for e in it:
                    if e.name.endswith((".npz", ".tmp", ".json")):     # (entries, writes, timings)
                        try:
                            st = e.stat()
                        except OSError:
                            continue
                        out.append((st.st_mtime, st.st_size, Path(e.path)))
        except FileNotFoundError:
            pass
        return sorted(out)

    def size(self) -> int:
        """The directory's entries' bytes (and temporary files')."""
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> None:
        """Remove the least recently used entries until the directory is within LOW_WATER of the budget (and any
        temporary file an hour old: a killed writer's)."""
        entries = self.entries()
        used, now = sum(size for _, size, _ in entries), time.time()
        for mtime, size, path in entries:
            if path.name.endswith(".tmp"):          # another process's write in progress, unless an hour old
                if now - mtime > 3600 and _remove(path):
                    used -= size
            elif used > LOW_WATER * self.budget and _remove(path):
                used -= size
                self.stats.evicted += 1
        self._used = used

    def clear(self) -> None:
        """Remove every entry."""
        for _, _, path in self.entries():
            _remove(path)
        self._used = 0

    def _warn(self, message: str, always: bool = False) -> None:
        if always or message not in self._warned:
            self._warned.add(message)
            warnings.warn(f"program store: {message}", ProgramStoreWarning, stacklevel=4)


_MISSING = object()
#: Stores with a background writer: each flushed at the process's exit (atexit runs while daemon threads still
#: do), so a command's last entries are written whole, never left as temporary files.
_BACKGROUND: "weakref.WeakSet[ProgramStore]" = weakref.WeakSet()
atexit.register(lambda: [store.flush() for store in list(_BACKGROUND)])


def _fits(result, bound: int | None) -> bool:
    """Whether every program image in `result` (compile_cache.programs) takes at most `bound` bytes: the test a
    compiler's layout makes of the bytes it lays out (sw.compile.linear.lay_out; the convolutions' early tests of
    their maps are of parts of the image)."""
    return bound is None or all(p.image.nbytes <= bound for p in programs(result))


def _detached(result, memo: dict | None = None):
    """`result` with each program in it (an object with an `image`: compile_cache.programs' walk) a
    shallow copy, shared ones still shared: the cache's leaning a program's image after compile() returns changes
    the original's attribute, not what the background writer encodes."""
    memo = {} if memo is None else memo
    if id(result) in memo:
        return memo[id(result)]
    if type(result) in (list, tuple):
        out = type(result)(_detached(x, memo) for x in result)
    elif isinstance(getattr(result, "image", None), np.ndarray):
        out = copy.copy(result)
    else:
        out = result
    memo[id(result)] = out
    return out


def _remove(path: Path) -> bool:
    try:
        os.remove(path)
        return True
    except OSError:
        return False


__all__ = ["ProgramStore", "ProgramStoreWarning", "StoreStats", "store_from", "default_dir", "code_fingerprint",
           "encode", "decode", "BadEntry", "Unstorable", "ALLOWED", "FORMAT", "STORE_ENV", "BUDGET_ENV",
           "BUDGET_BYTES"]
