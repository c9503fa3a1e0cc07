"""Programs bound to named buffers: binding and relocation in one place.

A compiled program (sw.compile.linear, sw.compile.conv, sw.compile.attention) carries `symbolic`
descriptors: every address field (hw.isa.ADDRESS_FIELDS) holds (buffer name, byte offset)
instead of a number. `link` turns them into the 32-byte descriptors for a given placement of
the buffers; nothing else in the host knows which fields are addresses.
"""
from __future__ import annotations

from operator import itemgetter

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
    split = getattr(symbolic, "split", None) or split_addresses(symbolic)
    if split is not None and split[1].keys() <= addresses.keys():
        words = _relink(split, addresses, len(symbolic))
        if words is not None:               # the fast path: the fields as columns, the dicts copied once
            numeric = [dict(d) for d in symbolic]
            for name, fields in split[1].items():
                base = addresses[name]
                for key, (rows, offsets) in fields.items():
                    for j, off in zip(rows.tolist(), offsets.tolist()):
                        numeric[j][key] = base + off
            return numeric, words.view(np.uint8).reshape(-1)
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
        if isinstance(symbolic, cls) and symbolic.split is not None:
            return symbolic
        t = cls(symbolic)
        t.split = split_addresses(t)
        return t


def link_words(symbolic, addresses: dict[str, int]) -> np.ndarray:
    """link's packed bytes alone (a SplitDescriptors list relinked from its split)."""
    split = getattr(symbolic, "split", None)
    if split is not None and split[1].keys() <= addresses.keys():
        words = _relink(split, addresses, len(symbolic), symbolic)
        if words is not None:
            return words.view(np.uint8).reshape(-1)
    return link(list(symbolic), addresses)[1]        # its errors say which descriptor and why


def _relink(split, addresses: dict[str, int], n: int, symbolic=None) -> np.ndarray | None:
    """encode_columns of a split_addresses result with each buffer at addresses[buffer]. A SplitDescriptors
    list keeps its words without addresses: a relink then writes only the address bytes (None where an
    address does not fit or takes bits another field of its descriptor holds: encode_columns says)."""
    fixed, moved = split
    base = _unaddressed(symbolic, split, n) if symbolic is not None else None
    if base is not None:
        words, clash = base
        words = words.copy()
        raw = words.view(np.uint8).reshape(n, isa.DESCRIPTOR_BYTES)
        for name, fields in moved.items():
            for key, (rows, offsets) in fields.items():
                v = addresses[name] + offsets
                if np.any((v < 0) | (v >= 1 << 32)) or key not in clash or np.any(clash[key][rows] & (v != 0)):
                    return None
                pos, _ = isa.FIELDS[key]
                raw[rows, pos // 8:pos // 8 + 4] = v.astype("<u4").view(np.uint8).reshape(-1, 4)
        return words
    cols = dict(fixed)
    for name, fields in moved.items():
        for key, (rows, offsets) in fields.items():
            if cols[key] is fixed[key]:
                cols[key] = fixed[key].copy()
            cols[key][rows] = addresses[name] + offsets
    return encode_columns(cols, n)


def _unaddressed(symbolic, split, n: int) -> tuple | None:
    """(the words of `split`'s fixed columns (addresses zero), {address field: the descriptors where it must
    stay 0: its bits are another field's there}) of a SplitDescriptors list, made once and kept on it; None
    where a relink must take encode_columns' way (the fixed columns do not encode; a descriptor with moved
    addresses of two field groups)."""
    kept = getattr(symbolic, "_unaddressed", None)
    if kept is not None and kept[0] is split:
        return kept[1]
    fixed, moved = split
    words, made = encode_columns(fixed, n), None
    zero = np.zeros(n, bool)
    if words is not None:
        # The address fields are 32-bit, byte aligned, and in no group's shared bits: each its own bytes
        # but in a group (DEPTHWISE's, VECTOR's), which a descriptor may use only where it uses no other
        # and none of the group's shared fields (encode_columns' rule).
        used = {g: np.any([fixed[f] != 0 for f, _, _ in fs if f in fixed] or [zero], axis=0)
                for _, g, fs in isa.SHARED_GROUPS}
        groups = sum(used.values(), np.zeros(n, np.int64))
        clash, owner = {}, {}
        for key in isa.ADDRESS_FIELDS:
            pos, width = isa.FIELDS[key]
            assert pos % 8 == 0 and width == 32 and not any(key in sh for sh, _, _ in isa.SHARED_GROUPS)
            group = next((g for _, g, fs in isa.SHARED_GROUPS if key in (f for f, _, _ in fs)), None)
            if group is None:
                clash[key] = zero
                continue
            shares = next(sh for sh, g, _ in isa.SHARED_GROUPS if g == group)
            shared = np.any([fixed[f] != 0 for f in shares if f in fixed] or [zero], axis=0)
            clash[key] = shared | (groups - used[group] > 0)
            owner[key] = group
        mixed = np.zeros(n, np.int64)
        for group in set(owner.values()):
            rows = [r for fields in moved.values() for key, (r, _) in fields.items() if owner.get(key) == group]
            if rows:
                hit = np.zeros(n, bool)
                hit[np.concatenate(rows)] = True
                mixed += hit
        if not np.any(mixed > 1):
            made = (words, clash)
    try:
        symbolic._unaddressed = (split, made)
    except AttributeError:             # (a plain list: made again next time)
        pass
    return made


def split_addresses(symbolic) -> tuple | None:
    """(the fields as columns with every (buffer, offset) address zeroed, {buffer: {field: (rows,
    offsets)}}) of a descriptor list, or None when a field is unknown or too large."""
    where: dict[str, dict[str, tuple[list, list]]] = {}

    def address(key, rows, values):
        """An address field's column: (buffer, offset) entries noted in `where` and zeroed."""
        out = []
        for j, v in zip(rows, values):
            if isinstance(v, tuple):
                r, o = where.setdefault(v[0], {}).setdefault(key, ([], []))
                r.append(j)
                o.append(v[1])
                v = 0
            out.append(v)
        return out
    cols = _columns(symbolic, address)
    return None if cols is None else (cols, {
        name: {key: (np.array(r, np.intp), np.array(o, np.int64)) for key, (r, o) in keys.items()}
        for name, keys in where.items()})


def _columns(raw, address=None) -> dict[str, np.ndarray] | None:
    """The descriptors' fields as int64 columns (0 where a descriptor does not set one), or None when
    a field is unknown or too large. `address(key, rows, values)`: the values of an address field
    (hw.isa.ADDRESS_FIELDS) as numbers. Descriptors are taken in groups of the same fields (a
    compiler's lists have a handful of kinds), each group's values converted by NumPy at once."""
    n = len(raw)
    kinds: dict[tuple, int] = {}
    kind = np.fromiter((kinds.setdefault(tuple(d), len(kinds)) for d in raw), np.intp, n)
    if not set().union(*kinds) <= isa.FIELDS.keys():
        return None
    order = np.argsort(kind, kind="stable")
    bounds = np.searchsorted(kind[order], np.arange(len(kinds) + 1))
    cols: dict[str, np.ndarray] = {}
    try:
        for keys, g in kinds.items():
            rows = order[bounds[g]:bounds[g + 1]]
            members = [raw[j] for j in rows.tolist()]
            plain = [k for k in keys if address is None or k not in isa.ADDRESS_FIELDS]
            if plain:
                get = itemgetter(*plain)
                values = np.array([get(d) for d in members] if len(plain) > 1 else
                                  [[get(d)] for d in members], np.int64).reshape(len(rows), len(plain))
                for i, k in enumerate(plain):
                    cols.setdefault(k, np.zeros(n, np.int64))[rows] = values[:, i]
            for k in keys:
                if k not in plain:
                    cols.setdefault(k, np.zeros(n, np.int64))[rows] = address(k, rows.tolist(),
                                                                              [d[k] for d in members])
    except OverflowError:
        return None
    return cols


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
