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


def encode_descriptors(raw: list[dict]) -> np.ndarray | None:
    """hw.isa.pack_descriptor for a whole list at once: (n, 4) little-endian 64-bit words, or None
    when a field is unknown, out of range or shares its bits with another that is set."""
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
        cols = {name: np.array(column, np.int64) for name, column in lists.items()}
    except OverflowError:
        return None
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
