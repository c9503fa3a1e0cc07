"""Programs bound to named buffers: binding and relocation in one place.

A compiled program (sw.compile.linear, sw.compile.conv, sw.compile.attention) carries `symbolic`
descriptors: every address field (hw.isa.ADDRESS_FIELDS) holds (buffer name, byte offset)
instead of a number. `link` turns them into the 32-byte descriptors for a given placement of
the buffers; nothing else in the host knows which fields are addresses.
"""
from __future__ import annotations

import numpy as np

from hw import isa

#: What a program's region is to the runtime: written once (program, weight), per run (input),
#: read back (output), or neither (scratch).
ROLES = ("program", "weight", "input", "output", "scratch")


class LinkError(ValueError):
    """A descriptor does not fit the format once its buffers are placed (or names an unknown buffer)."""


def link(symbolic: list[dict], addresses: dict[str, int]) -> tuple[list[dict], np.ndarray]:
    """Numeric descriptor fields and their packed bytes (len x 32, uint8) with each
    (buffer, offset) address resolved against `addresses` (buffer name -> DDR address)."""
    numeric = []
    for j, d in enumerate(symbolic):
        fields = dict(d)
        for key in isa.ADDRESS_FIELDS:
            if isinstance(fields.get(key), tuple):
                name, off = fields[key]
                if name not in addresses:
                    raise LinkError(f"descriptor {j}: {key} names buffer {name!r}, which is not bound "
                                    f"(bound: {', '.join(addresses)})")
                fields[key] = addresses[name] + off
        numeric.append(fields)
    words = encode_descriptors(numeric)
    if words is None:                   # something does not fit: the scalar packer says which and why
        for j, fields in enumerate(numeric):
            try:
                isa.pack_descriptor(**fields)
            except ValueError as e:
                raise LinkError(f"descriptor {j}: {e}") from None
        raise LinkError("the descriptors do not fit the format")     # the packers disagree: a bug
    return numeric, words.view(np.uint8).reshape(-1)


def with_fields(symbolic: list[dict], numeric: list[dict]) -> list[dict]:
    """Descriptors whose non-address fields come from `numeric` (e.g. edited by a test) and whose
    addresses stay the symbolic ones of `symbolic` (so they bind like the compiled program)."""
    return [{**n, **{k: s[k] for k in isa.ADDRESS_FIELDS if isinstance(s.get(k), tuple)}}
            for s, n in zip(symbolic, numeric)]


class SplitDescriptors(tuple):
    """An immutable compiled descriptor list (one that sw.compile.linear's plan keeps for layers of the same
    shapes) with its split_addresses computed once, where it is made: link_words relinks it with NumPy, so
    loading a program costs array additions instead of a dict per descriptor."""
    split = None

    @classmethod
    def of(cls, symbolic) -> "SplitDescriptors":
        t = cls(symbolic)
        t.split = split_addresses(t)
        return t


def link_words(symbolic, addresses: dict[str, int]) -> np.ndarray:
    """link's packed bytes alone (a SplitDescriptors list relinked from its split)."""
    split = getattr(symbolic, "split", None)
    if split is not None and split[1].keys() <= addresses.keys():
        fixed, moved = split
        cols = dict(fixed)
        for name, fields in moved.items():
            for key, (rows, offsets) in fields.items():
                if cols[key] is fixed[key]:
                    cols[key] = fixed[key].copy()
                cols[key][rows] = addresses[name] + offsets
        words = encode_columns(cols, len(symbolic))
        if words is not None:
            return words.view(np.uint8).reshape(-1)
    return link(list(symbolic), addresses)[1]        # its errors say which descriptor and why


def split_addresses(symbolic) -> tuple | None:
    """(the fields as columns with every (buffer, offset) address zeroed, {buffer: {field: (rows,
    offsets)}}) of a descriptor list, or None when a field is unknown."""
    flat = [dict(d) for d in symbolic]
    where: dict[str, dict[str, tuple[list, list]]] = {}
    for j, fields in enumerate(flat):
        for key in isa.ADDRESS_FIELDS:
            v = fields.get(key)
            if isinstance(v, tuple):
                rows, offsets = where.setdefault(v[0], {}).setdefault(key, ([], []))
                rows.append(j)
                offsets.append(v[1])
                fields[key] = 0
    cols = _columns(flat)
    return None if cols is None else (cols, {
        name: {key: (np.array(r, np.intp), np.array(o, np.int64)) for key, (r, o) in keys.items()}
        for name, keys in where.items()})


def _columns(raw: list[dict]) -> dict[str, np.ndarray] | None:
    """The descriptors' fields as int64 columns (0 where a descriptor does not set one), or None when
    a field is unknown or too large."""
    n = len(raw)
    lists: dict[str, list] = {}
    for j, f in enumerate(raw):
        for name, value in f.items():
            column = lists.get(name)
            if column is None:
                column = lists[name] = [0] * n
            column[j] = value
    if not lists.keys() <= isa.FIELDS.keys():
        return None
    try:
        return {name: np.array(column, np.int64) for name, column in lists.items()}
    except OverflowError:
        return None


def encode_descriptors(raw: list[dict]) -> np.ndarray | None:
    """hw.isa.pack_descriptor for a whole list at once: (n, 4) little-endian 64-bit words, or None
    when a field is unknown, out of range or shares its bits with another that is set."""
    cols = _columns(raw)
    return None if cols is None else encode_columns(cols, len(raw))


def encode_columns(cols: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """encode_descriptors on the fields as columns."""
    zero = np.zeros(n, bool)
    groups_used = np.zeros(n, np.int64)
    for shares, _, group_fields in isa.SHARED_GROUPS:
        used = np.any([cols[f] != 0 for f, _, _ in group_fields if f in cols] or [zero], axis=0)
        shared = np.any([cols[f] != 0 for f in shares if f in cols] or [zero], axis=0)
        if np.any(used & shared):
            return None
        groups_used += used
    if np.any(groups_used > 1):
        return None
    words = np.zeros((n, isa.DESCRIPTOR_BYTES // 8), "<u8")
    for name, col in cols.items():
        pos, width = isa.FIELDS[name]
        if np.any((col < 0) | (col >= 1 << width)):
            return None
        lane, bit = divmod(pos, 64)
        v = col.astype(np.uint64)
        words[:, lane] |= v << np.uint64(bit)
        if bit + width > 64:
            words[:, lane + 1] |= v >> np.uint64(64 - bit)
    return words
