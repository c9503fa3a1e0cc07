"""Programs compiled per graph node, used again while the node's call compiles against equal arguments.

A video frame runs the same nodes on the same shapes, in the same buffers, as the frame before: an engine node's
compiler arguments (weights, quantisation, the zero arrays that stand for inputs read in place, bound
layouts, base address) are then equal to its last call's, and so is the program a compiler makes of them
(a compiler is a function of its arguments: sw.compile). `CompileCache.get` returns that program instead of
compiling it again; any argument that differs (a host input's data, a new shape) compiles anew. Arguments are
kept as copies (an array of zeros as its shape) and compared by value on every call (an array changed in place
is a different argument), except read-only arrays whose owner is read-only too (a model's weights frozen by
`freeze`, the shared zeros of `zeros`): no one can write their memory, so they are kept as themselves and the
same memory passed again (same owner, place, shape, strides, dtype) is the same value without reading it.

A kept program's image (its DDR image: descriptors, weights and room for the inputs and outputs, which graph
nodes read and write in their own buffers) is moved into memory whose all-zero pages are never written
(`_lean`: an anonymous mapping, backed by no memory until written), read-only: the zero regions, nine
tenths of a 1024 px image's, cost nothing, and only the pages written count against the budget. A node's
latest program is kept before its older ones (`_victim`): those its calls have since passed over (a pointer
chain's length, a frame's host data: most never recur) go first.
"""
from __future__ import annotations

import dataclasses
import functools
import mmap
import os
from collections import OrderedDict

import numpy as np

from sw.lru import same_bytes

#: The bytes kept (argument copies, the pages of programs' images written: `_lean`), all nodes together. A 1024 px
#: image's programs hold ~130 MiB (their images 1.6 GiB, mostly zeros never written), a 1024 px video session's
#: ~445 MiB from frame 12 on (the older shapes of its growing pointer chain's programs included, dropped first when
#: the budget is short), so a steady frame compiles only its host-fed nodes. A budget below a frame's programs keeps
#: part of them (`_victim`); a program whose entry alone is more than ENTRY_BYTES is not kept.
BUDGET_BYTES = 1 << 30
#: Environment variable overriding BUDGET_BYTES, in MiB (a board's ARM with 4 GB for everything may want less, e.g.
#: 512: a 1024 px video frame's latest programs fit, 223 MiB by frame 8; 0 keeps nothing, each call compiles).
BUDGET_ENV = "SAM2FPGA_COMPILE_CACHE_MB"
ENTRY_BYTES = 64 << 20
#: Calls of one node kept (a node run on two shapes in turn, e.g. per object, keeps both).
PER_NODE = 4

#: Images smaller than this are kept as they are (a mapping of their own would save next to nothing).
LEAN_BYTES = 16 * mmap.PAGESIZE
#: A private anonymous mapping: reading a page never written maps the OS's zero page (a shared one, mmap's
#: default, would allocate a page for every page read).
_PRIVATE = dict(flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) if hasattr(mmap, "MAP_PRIVATE") else {}

_SCALARS = (int, float, str, bool, bytes, type(None), np.generic)


class _Frozen:
    """A hashable frozen dataclass (an OverlayConfig, a TokenRows): immutable, kept as it is, compared by ==."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Zeros:
    """An array of zeros (what stands for an input read in place), kept as its dtype and shape."""
    __slots__ = ("dtype", "shape")

    def __init__(self, x):
        self.dtype, self.shape = x.dtype, x.shape


class _Fixed:
    """A read-only array with a read-only owner (`_owner`), kept as itself (no copy)."""
    __slots__ = ("array", "owner", "place")

    def __init__(self, x, owner):
        self.array, self.owner, self.place = x, owner, _place(x)


def _owner(x: np.ndarray):
    """The array owning x's memory when neither can be written (so its values never change), else None."""
    if x.flags.writeable:
        return None
    o = x
    while isinstance(o.base, np.ndarray):
        o = o.base
    return o if o.base is None and not o.flags.writeable else None


def _place(x: np.ndarray) -> tuple:
    return x.__array_interface__["data"][0], x.shape, x.strides, x.dtype


def freeze(arrays) -> None:
    """Make these arrays read-only (a loaded model's weights and quantisation: never written after loading), so
    the cache compares them by identity. Writing one afterwards raises NumPy's read-only error."""
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False


@functools.lru_cache(maxsize=512)
def zeros(shape: tuple, dtype=np.int8) -> np.ndarray:
    """A shared read-only array of zeros (what a compiler gets for an input read in place: only its shape
    matters), the same object for the same shape: the cache knows it unchanged without reading it."""
    z = np.zeros(shape, dtype)
    z.flags.writeable = False
    return z


def _frozen(x) -> bool:
    params = getattr(type(x), "__dataclass_params__", None)
    if params is None or not (params.frozen and params.eq):
        return False
    try:
        hash(x)
    except TypeError:                   # a field that is not (an array): compared field by field
        return False
    return True


def _snap(x):
    """A copy of argument x to compare later calls' with (arrays copied; None: a type it cannot compare)."""
    if isinstance(x, np.ndarray):
        owner = _owner(x)
        if owner is not None:
            return _Fixed(x, owner)
        return x.copy() if x.any() else _Zeros(x)
    if isinstance(x, (tuple, list)):
        return type(x), tuple(_snap(v) for v in x)
    if isinstance(x, dict):
        return dict, tuple((k, _snap(v)) for k, v in x.items())
    if _frozen(x):
        return _Frozen(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return type(x), tuple(_snap(getattr(x, f.name)) for f in dataclasses.fields(x))
    if isinstance(x, _SCALARS):
        return x
    raise TypeError(type(x).__name__)


def _same(kept, x) -> bool:
    """Whether argument x equals the one `kept` is the _snap of (type for type, value for value)."""
    if isinstance(x, np.ndarray):
        if isinstance(kept, _Fixed):
            if x is kept.array or (_owner(x) is kept.owner and _place(x) == kept.place):
                return True
            kept = kept.array               # other memory: compared by value (kept's cannot have changed)
        if isinstance(kept, _Zeros):
            return kept.dtype == x.dtype and kept.shape == x.shape and not x.any()
        if not (isinstance(kept, np.ndarray) and kept.dtype == x.dtype and kept.shape == x.shape):
            return False
        if x.flags.c_contiguous and x.nbytes:
            return same_bytes(kept.reshape(-1).view(np.uint8), x.reshape(-1).view(np.uint8))
        return bool(np.array_equal(kept, x))
    if isinstance(x, (tuple, list)):
        return kept[0] is type(x) and len(kept[1]) == len(x) and all(map(_same, kept[1], x))
    if isinstance(x, dict):
        return kept[0] is dict and len(kept[1]) == len(x) and all(
            k == k2 and _same(v, x[k2]) for (k, v), k2 in zip(kept[1], x))
    if isinstance(kept, _Frozen):
        return type(kept.value) is type(x) and (kept.value is x or kept.value == x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return kept[0] is type(x) and all(_same(v, getattr(x, f.name))
                                          for v, f in zip(kept[1], dataclasses.fields(x)))
    return type(kept) is type(x) and kept == x


def _nbytes(x) -> int:
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, tuple):
        return sum(_nbytes(v) for v in x)
    return 0


def programs(result):
    """The programs in a compiler's result (objects with an array `image`): a program, or a list of programs or of
    tuples ending in one (compile_attention_calls' (head, q0, q1, program)); none in place_all's placements."""
    if isinstance(result, (list, tuple)):
        for p in result:
            yield from programs(p)
    elif isinstance(getattr(result, "image", None), np.ndarray):
        yield result


def _keep_images(result) -> int:
    """The program images in a compiler's result made lean (_lean), and the bytes they hold."""
    held = 0
    for p in programs(result):
        p.image, n = _lean(p.image)
        held += n
    return held


def nonzero_blocks(raw: np.ndarray, block: int) -> np.ndarray:
    """Whether each whole `block`-byte block of the flat uint8 array `raw` holds a non-zero byte (its tail, under
    a block, not included): the pages a lean image writes, the blocks a program store entry keeps."""
    body = raw[:raw.size // block * block]
    if body.ctypes.data % 8 == 0 and block % 8 == 0:
        body = body.view(np.uint64)                 # (eight bytes a compare)
    return body.reshape(raw.size // block, -1).any(axis=1)


class _LeanMapping(mmap.mmap):
    """The private anonymous mapping a lean image lives in; `held`: the bytes of its pages written."""
    held = 0


def _mapping(nbytes: int) -> _LeanMapping:
    page = mmap.PAGESIZE
    mapping = _LeanMapping(-1, max(1, -(-nbytes // page)) * page, **_PRIVATE)
    if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        mapping.madvise(mmap.MADV_NOHUGEPAGE)       # a huge page would back a written page's zero neighbours
    return mapping


def _lean_held(image: np.ndarray) -> int | None:
    """The bytes a lean image (one _lean or lean_from_blocks made) holds; None for any other array."""
    base = image
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):                # (np.frombuffer's base: a view of the mapping)
        base = base.obj
    return base.held if isinstance(base, _LeanMapping) else None


def _lean(image: np.ndarray) -> tuple[np.ndarray, int]:
    """(image, the bytes it holds): a large one's bytes in a read-only anonymous mapping of which only the pages
    that are not all zeros were written; the OS backs the others with no memory (its zero page when read).
    Equal to `image` byte for byte, as its dtype and shape. An image already in such a mapping (the program
    store's, lean_from_blocks) is only made read-only."""
    page = mmap.PAGESIZE
    held = _lean_held(image)
    if held is not None:
        image.flags.writeable = False
        return image, held
    if image.nbytes < LEAN_BYTES or not image.flags.c_contiguous:
        return image, image.nbytes
    raw = image.reshape(-1).view(np.uint8)
    n, full = raw.size, raw.size // page
    written = np.empty(-(-n // page), bool)
    written[:full] = nonzero_blocks(raw, page)
    written[full:] = raw[full * page:].any()
    if written.sum() * 2 > written.size:            # mostly data: nothing to save
        return image, image.nbytes
    mapping = _mapping(n)
    lean = np.frombuffer(mapping, np.uint8, n)
    edges = np.flatnonzero(np.diff(written, prepend=False, append=False)) * page
    for a, b in zip(edges[::2], edges[1::2]):       # runs of written pages
        lean[a:b] = raw[a:b]
    mapping.held = int(written.sum()) * page
    lean = lean.view(image.dtype).reshape(image.shape)
    lean.flags.writeable = False
    return lean, mapping.held


def lean_from_blocks(nbytes: int, block: int, used: np.ndarray, data: np.ndarray) -> np.ndarray:
    """A flat uint8 array of `nbytes` bytes, zeros but for its `block`-byte blocks `used` (ascending) and its
    tail past the last whole block, which `data` holds in that order (the program store's sparse arrays), made
    as _lean makes a kept image: only those pages written. Writable until the compile cache keeps it."""
    mapping = _mapping(nbytes)
    out = np.frombuffer(mapping, np.uint8, nbytes)
    full, k = nbytes // block * block, len(used) * block
    out[:full].reshape(-1, block)[used] = data[:k].reshape(-1, block)
    page, tail, u = mmap.PAGESIZE, data[k:], np.unique(used)
    # the pages written: a block spans whole pages, or (pages bigger than blocks) one or two shared with others
    spans = [u * block // page, (u * block + block - 1) // page] if block % page else \
        [(u * (block // page))[:, None] + np.arange(block // page)]
    if tail.any():
        out[full:] = tail
        spans.append(np.arange(full // page, -(-nbytes // page)))
    mapping.held = len(np.unique(np.concatenate([x.reshape(-1) for x in spans]))) * page
    return out


def mib_from_env(var: str, default: int, what: str) -> int:
    """Bytes: environment variable `var` (MiB, a whole number >= 0; anything else is an error naming `what`),
    else `default`."""
    value = os.environ.get(var)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise ValueError(f"{var}={value!r}: expected {what} in MiB, a whole number >= 0")
    return int(value) << 20


def budget_bytes() -> int:
    """BUDGET_BYTES, or the BUDGET_ENV override (MiB, a whole number >= 0; anything else is an error)."""
    return mib_from_env(BUDGET_ENV, BUDGET_BYTES, "the compile cache's size")


class CompileCache:
    """Per owner (a graph node) and compiler, the programs of its last PER_NODE distinct calls; at most
    BUDGET_BYTES of copies and images in all. Over it, programs their owners have passed over go first
    (`_victim`), least recently used first; a new program that would drop an owner's latest one is not kept."""

    def __init__(self, budget: int | None = None, store=None):
        """`store`: a sw.runtime.program_store.ProgramStore asked before compiling (None: compile)."""
        self.budget, self.used = budget_bytes() if budget is None else budget, 0
        self._kept: OrderedDict = OrderedDict()       # (owner, compiler, i) -> (args, kwargs, result, bytes)
        # owner -> (the key of its last call's program, None when not kept; the number of that call, `calls`)
        self._latest: dict = {}
        self.calls = self.hits = self.misses = 0
        self.store = store

    def get(self, owner: str, compiler, *args, **kwargs):
        """compiler(*args, **kwargs), or the result of an earlier call of `owner`'s with equal arguments."""
        self.calls += 1
        slots = [(owner, compiler, i) for i in range(PER_NODE)]
        for key in slots:
            entry = self._kept.get(key)
            if entry is not None and len(entry[0][1]) == len(args) and _same(entry[0], args) \
                    and _same(entry[1], kwargs):
                self._kept.move_to_end(key)
                self._latest[owner] = key, self.calls
                self.hits += 1
                return entry[2]
        self.misses += 1
        self._latest[owner] = None, self.calls
        result = compiler(*args, **kwargs) if self.store is None else self.store.compile(compiler, args, kwargs)
        try:
            entry = (_snap(args), _snap(kwargs))
        except TypeError:                                   # an argument it cannot compare: never kept
            return result
        if not self.budget:
            return result
        size = _nbytes(entry) + _keep_images(result)
        if size > min(ENTRY_BYTES, self.budget):
            return result
        # this owner's free slot, else its least recently used one
        key = next((k for k in slots if k not in self._kept), None) or next(k for k in self._kept if k in slots)
        self._drop(key)
        self._kept[key] = (*entry, result, size)
        self._latest[owner] = key, self.calls
        self.used += size
        while self.used > self.budget:
            self._drop(self._victim() or key)
        return result

    def _victim(self):
        """The least recently used program that its owner has passed over (called since with other arguments: a
        video's pointer chain of a length that never recurs, a frame's host-fed data) or not called for a long
        while (PER_NODE calls of every owner's: another graph's); None when every program kept is its owner's
        latest. Such a program is what its owner's next call most likely wants: dropping the least recently used
        one for a new program (LRU) would, once a frame's programs exceed the budget, drop each one just before
        its next use, so every frame would compile them all; keeping them keeps that part of a frame compiled."""
        latest, old = self._latest, self.calls - PER_NODE * len(self._latest)
        return next((k for k in self._kept if latest[k[0]][0] != k or latest[k[0]][1] < old), None)

    def _drop(self, key) -> None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            self.used -= entry[3]

    def clear(self) -> None:
        self._kept.clear()
        self._latest.clear()
        self.used = 0
