"""Programs bound to named buffers: binding and relocation in one place.

A compiled program (sw.compile.linear, sw.compile.conv, sw.compile.attention) carries `symbolic`
descriptors: every address field (hw.isa.ADDRESS_FIELDS) holds (buffer name, byte offset)
instead of a number. `link` turns them into the 32-byte descriptors for a given placement of
the buffers; nothing else in the host knows which fields are addresses.
"""
from __future__ import annotations

from collections.abc import Sequence
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
    bound = split is not None and split[1].keys() <= addresses.keys()
    if bound and isinstance(symbolic, ColumnDescriptors):     # resolved once: its columns are what we encode
        numeric = symbolic.resolved(addresses)
        words = encode_columns(numeric.split[0], len(numeric))
        if words is not None:
            return numeric, words.view(np.uint8).reshape(-1)
    elif bound:
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
        if getattr(symbolic, "split", None) is not None:      # (a ColumnDescriptors is split as it is made)
            return symbolic
        t = cls(symbolic)
        t.split = split_addresses(t)
        return t


def link_words(symbolic, addresses: dict[str, int], words: bool = False) -> np.ndarray | None:
    """link's packed bytes alone (a SplitDescriptors list relinked from its split). `words`: the (n, 4) words
    of the split's relink only, None where that way does not fit (no fallback to link)."""
    split = getattr(symbolic, "split", None)
    if split is not None and split[1].keys() <= addresses.keys():
        linked = _relink(split, addresses, len(symbolic), symbolic)
        if linked is not None:
            return linked if words else linked.view(np.uint8).reshape(-1)
    if words:
        return None
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
    return encode_columns(_placed(split, addresses), n)


def _placed(split, addresses: dict[str, int]) -> dict[str, np.ndarray]:
    """A split's columns with each (buffer, offset) address at addresses[buffer] + offset (columns copied only
    where an address lands)."""
    fixed, moved = split
    cols = dict(fixed)
    for name, fields in moved.items():
        for key, (rows, offsets) in fields.items():
            if cols[key] is fixed[key]:
                cols[key] = fixed[key].copy()
            cols[key][rows] = addresses[name] + offsets
    return cols


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


def _zero_addresses(where: dict, key: str, rows, values) -> list:
    """An address field's values as numbers: each (buffer, offset) noted in where[buffer][key] (rows,
    offsets) and zeroed."""
    out = []
    for j, v in zip(rows, values):
        if isinstance(v, tuple):
            r, o = where.setdefault(v[0], {}).setdefault(key, ([], []))
            r.append(j)
            o.append(v[1])
            v = 0
        out.append(v)
    return out


def split_addresses(symbolic) -> tuple | None:
    """(the fields as columns with every (buffer, offset) address zeroed, {buffer: {field: (rows,
    offsets)}}) of a descriptor list, or None when a field is unknown or too large."""
    where: dict[str, dict[str, tuple[list, list]]] = {}
    cols = _columns(symbolic, lambda key, rows, values: _zero_addresses(where, key, rows, values))
    return None if cols is None else (cols, {
        name: {key: (np.array(r, np.intp), np.array(o, np.int64)) for key, (r, o) in keys.items()}
        for name, keys in where.items()})


def _column(cols: dict, key: str, n: int) -> np.ndarray:
    """cols[key], made n zeros first where missing (not cols.setdefault(key, np.zeros(n)): that zeros n values for
    every kind of descriptor with the field, ~50,000 at a time)."""
    col = cols.get(key)
    if col is None:
        col = cols[key] = np.zeros(n, np.int64)
    return col


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
                    _column(cols, k, n)[rows] = values[:, i]
            for k in keys:
                if k not in plain:
                    _column(cols, k, n)[rows] = address(k, rows.tolist(), [d[k] for d in members])
    except OverflowError:
        return None
    return cols


def encode_descriptors(raw: list[dict]) -> np.ndarray | None:
    """hw.isa.pack_descriptor for a whole list at once: (n, 4) little-endian 64-bit words, or None
    when a field is unknown, out of range or shares its bits with another that is set."""
    cols = _columns(raw)
    return None if cols is None else encode_columns(cols, len(raw))


#: encode_columns by _encode_lanes (a column's range from its largest value as uint64, all-zero columns skipped, the
#: words built lane by lane); False: _encode_reference, the one it is tested against (tests/test_sim_fast.py).
ENCODE_LANES = True


def encode_columns(cols: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """encode_descriptors on the fields as columns."""
    return _encode_lanes(cols, n) if ENCODE_LANES else _encode_reference(cols, n)


def _encode_lanes(cols: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """_encode_reference with a pass or two over each column instead of ~6: an int64 column viewed as uint64 is
    in [0, 2^width) exactly when its largest value is (a negative one is >= 2^63); a column of zeros sets no bit
    and uses no group."""
    if not n:
        return _encode_reference(cols, n)
    top = {}
    for name, col in cols.items():
        pos, width = isa.FIELDS[name]
        u = np.asarray(col, np.int64).view(np.uint64)
        m = int(u.max())
        if m >> width:
            return None
        if m:
            top[name] = u
    groups_used = None
    for shares, _, group_fields in isa.SHARED_GROUPS:
        used = _any_set([top[f] for f, _, _ in group_fields if f in top])
        if used is None:
            continue
        shared = _any_set([top[f] for f in shares if f in top])
        if shared is not None and np.any(used & shared):
            return None
        if groups_used is None:
            groups_used = used
        elif np.any(groups_used & used):
            return None
        else:
            groups_used |= used
    lanes = np.zeros((isa.DESCRIPTOR_BYTES // 8, n), np.uint64)
    for name, u in top.items():
        pos, width = isa.FIELDS[name]
        lane, bit = divmod(pos, 64)
        lanes[lane] |= u << np.uint64(bit) if bit else u
        if bit + width > 64:
            lanes[lane + 1] |= u >> np.uint64(64 - bit)
    return np.ascontiguousarray(lanes.T).astype("<u8", copy=False)


def _any_set(us: list) -> np.ndarray | None:
    """Where any of the columns `us` is not 0 (None: no columns)."""
    if not us:
        return None
    out = us[0] != 0
    for u in us[1:]:
        out |= u != 0
    return out


def _encode_reference(cols: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """encode_columns field by field over whole columns: the reference."""
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


def _rows_of_kinds(kind: np.ndarray, count: int) -> list[np.ndarray]:
    """The rows of each kind 0..count-1 (ascending), from each descriptor's kind number."""
    order = np.argsort(kind, kind="stable")
    bounds = np.searchsorted(kind[order], np.arange(count + 1)).tolist()
    return [order[bounds[g]:bounds[g + 1]] for g in range(count)]


class ColumnDescriptors(Sequence):
    """A compiled descriptor list held as its fields' columns (what a compiler's pack makes: no dict per
    descriptor). Its `split` is split_addresses' (the columns with the (buffer, offset) addresses zeroed, and
    those addresses per buffer), so link_words relinks it like a SplitDescriptors. Read as a sequence, it is
    the dicts the compiler emitted, field for field in their order (made once, on first use: the runtime
    never needs them). Immutable; equal to any sequence of the same dicts."""
    __hash__ = object.__hash__

    def __init__(self, n: int, cols: dict, moved: dict, kinds: list[tuple], kind: np.ndarray):
        self.split = (cols, moved)
        self._n, self._kinds, self._kind = n, kinds, kind   # each descriptor's keys: kinds[kind[j]]
        self._dicts = None

    @classmethod
    def of_compiled(cls, descs: list[dict]) -> "ColumnDescriptors | None":
        """A compiler's descriptors (opcode and LOAD target by name, `src`/`dst` standing for dram_addr,
        addresses as (buffer, offset)) as columns; keys outside hw.isa.FIELDS are not fields and are left out.
        None when a value is not a whole number (the dict path then says which)."""
        n = len(descs)
        kinds: dict[tuple, int] = {}
        kind = np.fromiter((kinds.setdefault(tuple(d), len(kinds)) for d in descs), np.intp, n)
        cols: dict[str, np.ndarray] = {}
        where: dict[str, dict[str, tuple[list, list]]] = {}
        out_kinds = []
        for keys, rows in zip(kinds, _rows_of_kinds(kind, len(kinds))):
            rl = rows.tolist()
            fields = [k for k in keys if k in isa.FIELDS]
            if "opcode" not in fields:
                return None
            src = "dst" if "dst" in keys else "src" if "src" in keys else None
            out = fields + (["dram_addr"] if src and "dram_addr" not in fields else [])
            out_kinds.append(tuple(out))
            taken = [k for k in fields if not (src and k == "dram_addr")] + ([src] if src else [])
            get = itemgetter(*taken)
            values = list(zip(*[get(descs[j]) for j in rl])) if len(taken) > 1 else [[get(descs[j]) for j in rl]]
            for k, vals in zip(taken, values):
                key = "dram_addr" if k == src else k
                if key == "opcode":
                    vals = [isa.OPCODES[v] for v in vals]
                elif key == "target":
                    vals = [isa.TARGETS[v] if isinstance(v, str) else v for v in vals]
                elif key in isa.ADDRESS_FIELDS:
                    vals = _zero_addresses(where, key, rl, vals)
                try:
                    col = np.array(vals, np.int64)
                except (OverflowError, TypeError, ValueError):
                    return None
                if col.shape != (len(rl),):
                    return None
                _column(cols, key, n)[rows] = col
        moved = {name: {key: (np.array(r, np.intp), np.array(o, np.int64)) for key, (r, o) in keys.items()}
                 for name, keys in where.items()}
        return cls(n, cols, moved, out_kinds, kind)

    def resolved(self, addresses: dict[str, int]) -> "ColumnDescriptors":
        """The numeric descriptors: each (buffer, offset) address at addresses[buffer] + offset."""
        return ColumnDescriptors(self._n, _placed(self.split, addresses), {}, self._kinds, self._kind)

    def with_columns(self, cols: dict) -> "ColumnDescriptors":
        """The same descriptors with the columns `cols` instead (fields every descriptor already has or
        has zero: a descriptor's keys stay its own)."""
        return ColumnDescriptors(self._n, {**self.split[0], **cols}, self.split[1], self._kinds, self._kind)

    def dicts(self) -> tuple[dict, ...]:
        if self._dicts is None:
            cols, moved = self.split
            values = {k: c.tolist() for k, c in cols.items()}
            for name, fields in moved.items():
                for key, (rows, offsets) in fields.items():
                    col = values[key]
                    for j, o in zip(rows.tolist(), offsets.tolist()):
                        col[j] = (name, o)
            out: list = [None] * self._n
            for keys, rows in zip(self._kinds, _rows_of_kinds(self._kind, len(self._kinds))):
                rl = rows.tolist()
                per_key = [[values[k][j] for j in rl] for k in keys]
                for j, row in zip(rl, zip(*per_key)):
                    out[j] = dict(zip(keys, row))
            self._dicts = tuple(out)
        return self._dicts

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        return self.dicts()[i]

    def __iter__(self):
        return iter(self.dicts())

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))


def frozen(descs):
    """A packed descriptor list to keep or share: a ColumnDescriptors as it is (immutable), else a tuple."""
    return descs if isinstance(descs, ColumnDescriptors) else tuple(descs)


class _Names:
    """The buffer names of a group of descriptors, one per descriptor, from parts that each name one buffer for all
    their descriptors (a str) or one a descriptor (a list); Emitter.columns' blocks, without a list of a name per
    descriptor where a part has one name (a layer's ~50,000 STOREs)."""

    def __init__(self, parts, lengths=None):
        if lengths is None:
            parts, lengths = [parts], [len(parts)]
        self.parts, self.lengths = parts, lengths

    def selections(self):
        """(name, which descriptors: a bool mask, None for all) per name, in order of first use."""
        order = dict.fromkeys(b for part, m in zip(self.parts, self.lengths)
                              for b in (((part,) if m else ()) if isinstance(part, str) else part))
        if len(order) == 1:
            return [(next(iter(order)), None)]
        names = np.concatenate([np.full(m, part, object) if isinstance(part, str) else np.array(part, object)
                                for part, m in zip(self.parts, self.lengths)])
        return [(name, names == name) for name in order]


def _joined(parts) -> list | np.ndarray:
    """Offsets parts (arrays or lists) as one sequence (arrays joined by NumPy; lists as they are)."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return [o for part in parts for o in part]


class Emitter:
    """Descriptors as a compiler's schedule emits them, straight into rows of their fields (no dict each):
    `add(keys, values)` appends one whose fields `keys` (a tuple, opcode and target as numbers) hold
    `values`; `add_at(keys, values, buffer, offset)` one that also has dram_addr = (buffer, offset), its last
    key. Descriptors of the same keys are kept together and turned into columns at once (`columns`)."""

    def __init__(self):
        self._plain: dict[tuple, list] = {}     # keys -> [(row, values)]
        self._at: dict[tuple, list] = {}        # keys -> [(row, values, buffer, offset)]
        self._blocks: list[tuple] = []          # (keys, rows, values (rows x keys), buffers, offsets or None)
        self._addressed: list[tuple] = []       # (keys, rows, values, {address field: (buffers, offsets)})
        self.n = 0

    def reserve(self, m: int) -> int:
        """Room for m descriptors that add_block fills: the first one's row."""
        self.n += m
        return self.n - m

    def add_block(self, keys: tuple, rows: np.ndarray, values: np.ndarray, buffers: list | str | None = None,
                  offsets: list | np.ndarray | None = None) -> None:
        """Descriptors at reserved `rows` of fields `keys` = the rows of `values` (and dram_addr = (buffer,
        offset) with `buffers`: one name a descriptor, or one for them all)."""
        self._blocks.append((keys, rows, values, buffers, offsets))

    def add_addressed(self, keys: tuple, rows: np.ndarray, values: np.ndarray, addresses: dict) -> None:
        """Descriptors at reserved `rows` of fields `keys` = the rows of `values`, but the address fields of
        `addresses` ({field: (buffer name, or one a descriptor; offsets)}: any of hw.isa.ADDRESS_FIELDS, in
        keys where the descriptors name them), which are (buffer, offset)."""
        self._addressed.append((keys, rows, values, {k: ([b] * len(rows) if isinstance(b, str) else b, o)
                                                     for k, (b, o) in addresses.items()}))

    def __len__(self) -> int:
        return self.n

    def add(self, keys: tuple, values: tuple) -> None:
        kind = self._plain.get(keys)
        if kind is None:
            kind = self._plain[keys] = []
        kind.append((self.n, values))
        self.n += 1

    def add_at(self, keys: tuple, values: tuple, buffer: str, offset: int) -> None:
        kind = self._at.get(keys)
        if kind is None:
            kind = self._at[keys] = []
        kind.append((self.n, values, buffer, offset))
        self.n += 1

    def columns(self) -> ColumnDescriptors | None:
        """The descriptors as a ColumnDescriptors (keys outside hw.isa.FIELDS left out, as pack_descriptors
        leaves them), or None when a value is not a whole number in int64 (dicts() then says which)."""
        n = self.n
        cols: dict[str, np.ndarray] = {}
        where: dict[str, dict[str, list]] = {}
        kinds, kind = [], np.zeros(n, np.intp)
        groups = [(keys, *zip(*kind), None) for keys, kind in self._plain.items()]
        groups += [(keys, rows, values, (buffers, offsets))
                   for keys, (rows, values, buffers, offsets) in ((k, zip(*kind)) for k, kind in self._at.items())]
        blocks: dict[tuple, list] = {}          # (keys, with addresses) -> their blocks, put together
        for keys, rows, values, buffers, offsets in self._blocks:
            blocks.setdefault((keys, buffers is not None), []).append((rows, values, buffers, offsets))
        for (keys, addressed), parts in blocks.items():
            rows, values, buffers, offsets = zip(*parts)
            groups.append((keys, np.concatenate(rows), np.concatenate(values),
                           (_Names(buffers, [len(r) for r in rows]), _joined(offsets)) if addressed else None))
        groups += [(keys, rows, values, (None, addresses)) for keys, rows, values, addresses in self._addressed]
        for keys, rows, values, at in groups:
            rows = np.asarray(rows, np.intp)
            try:
                table = np.asarray(values, np.int64)
            except (OverflowError, TypeError, ValueError):
                return None
            if table.shape != (len(rows), len(keys)):
                return None
            keep = [i for i, k in enumerate(keys) if k in isa.FIELDS]
            out = tuple(keys[i] for i in keep)
            for i in keep:
                _column(cols, keys[i], n)[rows] = table[:, i]
            if at is not None:
                if at[0] is not None:                # dram_addr, the last key
                    out += ("dram_addr",)
                    at = (None, {"dram_addr": at})
                for key, (names, offsets) in at[1].items():
                    _column(cols, key, n)
                    names = names if isinstance(names, _Names) else _Names(names)
                    try:
                        offsets = np.array(offsets, np.int64)
                    except (OverflowError, TypeError, ValueError):
                        return None
                    for name, sel in names.selections():
                        where.setdefault(name, {}).setdefault(key, []).append(
                            (rows, offsets) if sel is None else (rows[sel], offsets[sel]))
            kind[rows] = len(kinds)
            kinds.append(out)
        moved = {name: {key: tuple(np.concatenate(p) for p in zip(*parts)) for key, parts in keys.items()}
                 for name, keys in where.items()}
        return ColumnDescriptors(n, cols, moved, kinds, kind)

    def dicts(self) -> list[dict]:
        """The descriptors as symbolic dicts (the slow path's: it says which does not fit and why)."""
        out: list = [None] * self.n
        for keys, kind in self._plain.items():
            for j, v in kind:
                out[j] = dict(zip(keys, v))
        for keys, kind in self._at.items():
            for j, v, b, o in kind:
                out[j] = {**dict(zip(keys, v)), "dram_addr": (b, o)}
        for keys, rows, values, buffers, offsets in self._blocks:
            if isinstance(buffers, str):
                buffers = [buffers] * len(rows)
            for i, (j, v) in enumerate(zip(rows.tolist(), values.tolist())):
                out[j] = dict(zip(keys, v), **({} if buffers is None else {"dram_addr": (buffers[i], offsets[i])}))
        for keys, rows, values, addresses in self._addressed:
            for i, (j, v) in enumerate(zip(np.asarray(rows).tolist(), np.asarray(values).tolist())):
                out[j] = dict(zip(keys, v), **{k: (b[i], int(o[i])) for k, (b, o) in addresses.items()})
        return out
