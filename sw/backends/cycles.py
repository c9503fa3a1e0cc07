"""The overlay's cycle model: when each descriptor dispatches and completes, without the data.

One model for both sim modes: the checked interpreter (sw.backends.sim_model) runs it with a callback
that executes each descriptor's data as it dispatches; the fast mode and `cycles_only` (timing
without data, for profiles) run it alone. The descriptor fields are decoded for the whole list at
once (NumPy) and each descriptor's fixed costs (burst and beat cycles, tile counts) computed
vectorised; what remains per descriptor is the in-order dispatch and the units' occupancy, a
max-plus recurrence that is inherently sequential. Timing alone takes it a chunk of descriptors at a time:
a compiled list repeats itself, and a chunk met again in a state seen before (relative to its start) is
applied from its first run, shifted (_simulate_chunks; CHUNKS = False: the loop over every descriptor).

Latencies are the RTL's (cycles), measured against the Verilator runs (tests/test_overlay.py,
tests/test_conv_engine.py, tests/test_depthwise.py, tests/test_attention_overlay.py).
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from hw import isa
from hw.limits import DW_ROW_SLOTS, REQUANT_LATENCY, im2col_row_beats
from sw.lru import Lru

FETCH_CYCLES = 4          # a fetch AR -> descriptor in the FIFO and the next fetch AR (plus its beats)
FETCH_AFTER_LOAD = 1      # a fetch queued behind a LOAD: its first beat after the LOAD is done (plus its beats)
READ_LATENCY = 4          # AR handshake to first R beat
STORE_ADD_LATENCY = 2     # the residual add's stages (hw/gemm/engine.py StoreAdd: products, then round and saturate)
STORE_LATENCY = 5         # row to B response, per store descriptor
STORE_START = {False: 3 + REQUANT_LATENCY,  # dispatch to the first int8 row in the W FIFO: the requantiser and
                                            # 3 (the accumulator read, the stages before it, the FIFO)
               True: 5}   # int32 rows skip the requantisers
START_CYCLES = 3
LOAD_PIPELINE = 5         # LOAD: dispatch to done beyond its bursts and beats (hw/overlay.py's load unit)
IM2COL_CYCLES = 4         # command start, last entry written, done
IM2COL_AR_PERIOD = 1      # IM2COL: cycles per row by which its bursts run ahead of a fetch (fitted to the RTL)
IM2COL_FIRST_R = 2        # IM2COL: dispatch to the end of its first row's beats, less one row period
DW_START = 3              # DEPTHWISE: command accepted to first AR
DW_DRAIN = 11 + REQUANT_LATENCY   # last pixel issued to last B response: window, MACs, sums, bias, requantiser, write

# Per-descriptor classes of the recurrence (K_*), decoded once.
K_LOAD, K_IM2COL, K_COMPUTE, K_STORE, K_SLOT, K_ATTENTION, K_SYNC, K_BAD = range(8)
#: sw.engines.Command.timing -> class. "slot": a DDR-to-DDR command on the load unit's AXI read slot
#: (DEPTHWISE, VECTOR), its duration from its Command.cycles.
TIMING_CLASS = {"load": K_LOAD, "im2col": K_IM2COL, "compute": K_COMPUTE, "store": K_STORE, "slot": K_SLOT,
                "attention": K_ATTENTION, "sync": K_SYNC}
UNITS = ("LOAD", "COMPUTE", "STORE", "ATTENTION")


class Fields(dict):
    """Decoded descriptors, {field: int64 array}, with `digest`: a hash of the packed bytes they came from,
    addresses zeroed (timing_bytes: simulate remembers the timing of a list it has timed before, wherever
    it is linked).
    A field is decoded when first read (a remembered list's run reads none); iterating decodes them all.
    `raw`: the packed descriptors with dram_addr zeroed, `addresses` (n, 4) its bytes (None: dram_addr still in
    `raw`, fields_of)."""
    digest: bytes | None = None

    def __init__(self, raw: np.ndarray | None = None, addresses: np.ndarray | None = None):
        super().__init__()
        self._raw, self._addresses, self._lanes = raw, addresses, None

    def __missing__(self, name):
        if self._raw is None or name not in isa.FIELDS:
            raise KeyError(name)
        if name == "dram_addr" and self._addresses is not None:
            value = self[name] = self._addresses.view("<u4").reshape(-1).astype(np.int64)
            return value
        if self._lanes is None:          # (4, n): each 64-bit lane contiguous
            self._lanes = np.ascontiguousarray(self._raw.view("<u8").astype(np.uint64).T)
        pos, width = isa.FIELDS[name]
        w, b = divmod(pos, 64)
        v = self._lanes[w] >> np.uint64(b)
        if b + width > 64:
            v |= self._lanes[w + 1] << np.uint64(64 - b)
        v &= np.uint64((1 << width) - 1)
        value = self[name] = v.view(np.int64)       # fields are at most 32 bits: the same value
        return value

    @property
    def nbytes(self) -> int:
        """Bytes held once forget() has dropped the decoded fields: the packed descriptors."""
        return 0 if self._raw is None else self._raw.nbytes + getattr(self._addresses, "nbytes", 0)

    def forget(self) -> None:
        """Drop the decoded fields (kept for a later run: its bytes and digest alone)."""
        dict.clear(self)
        self._lanes = None

    def complete(self) -> "Fields":
        """Every field decoded."""
        if self._raw is not None:
            for name in isa.FIELDS:
                self[name]
        return self

    def keys(self):
        return super(Fields, self.complete()).keys()

    def items(self):
        return super(Fields, self.complete()).items()

    def values(self):
        return super(Fields, self.complete()).values()

    def __iter__(self):
        return iter(self.keys())


#: The recurrence never reads an address (DDR moves whole aligned beats: the checks refuse others), so a
#: program relinked to new buffers times the same: its timing is remembered without them. dram_addr's bytes
#: (no other field shares them) are kept apart when decoded; the other address fields share bits with other
#: opcodes' timing fields, so they are left out on their own opcode's descriptors only (timing_bytes).
def _bytes_of(name: str) -> slice:
    pos, width = isa.FIELDS[name]
    assert pos % 8 == 0 and width % 8 == 0, name
    return slice(pos // 8, (pos + width) // 8)


_ADDR_BYTES = _bytes_of("dram_addr")
#: opcode -> the bytes of the address fields its own field group holds (VECTOR: vec_out_addr, vec_b_addr;
#: DEPTHWISE: dw_out_addr). Other opcodes read those bits as timing fields, so they are left out of the
#: timing's key on that opcode's descriptors only.
_OWN_ADDR_BYTES = {isa.OPCODES[group]: [_bytes_of(n) for n, _, _ in fields if n in isa.ADDRESS_FIELDS]
                   for _, group, fields in isa.SHARED_GROUPS if group in isa.OPCODES}
assert isa.FIELDS["opcode"] == (0, 8)


def timing_bytes(timed: np.ndarray) -> np.ndarray:
    """(n, 32) descriptors (dram_addr zeroed) with every other address field zeroed too, on the descriptors
    of the opcodes that own one: what their timing depends on (a copy where any changed)."""
    out = timed
    for code, slices in _OWN_ADDR_BYTES.items():
        rows = timed[:, 0] == code
        if slices and rows.any():
            out = out.copy() if out is timed else out
            for sl in slices:
                out[rows, sl] = 0
    return out


def decode_descriptors(raw: np.ndarray) -> Fields:
    """(n, 32) uint8 descriptors -> {field: int64 array of n} (hw.isa.FIELDS, shared groups included),
    each field decoded when first read."""
    timed = np.array(raw, np.uint8).reshape(-1, isa.DESCRIPTOR_BYTES)     # a copy: DDR may change after
    addresses = timed[:, _ADDR_BYTES].copy()
    timed[:, _ADDR_BYTES] = 0
    out = Fields(timed, addresses)
    out.digest = hashlib.blake2b(timing_bytes(timed), digest_size=16).digest()
    return out


def fields_of(raw: np.ndarray) -> Fields:
    """decode_descriptors for a caller that reads the fields while `raw` stays as it is (the host's checks of the
    bytes it just linked): no copy, no digest, dram_addr decoded like any field."""
    return Fields(np.ascontiguousarray(raw, np.uint8).reshape(-1, isa.DESCRIPTOR_BYTES))


@dataclass
class Outcome:
    """How a run ended: 'done', 'hang' (a wait never met: stays BUSY) or 'error' (bit, descriptor index)."""
    state: str
    desc_done: int
    cycles: int = 0
    counts: dict | None = None         # unit -> descriptors completed
    error_bit: int = 0
    error_index: int = 0


def classify(cfg, f: dict[str, np.ndarray]) -> np.ndarray:
    """Each descriptor's class K_* for this overlay (K_BAD: BAD_OPCODE here), from its opcode's or LOAD
    target's timing in the engine registry (sw.engines)."""
    from sw.engines import commands
    op, target = f["opcode"], f["target"]
    kind = np.full(len(op), K_BAD, np.int64)
    load = op == isa.OPCODES["LOAD"]
    for name, cmd in commands().items():
        if name in isa.TARGETS:
            if isa.has_target(cfg, name):
                kind[load & (target == isa.TARGETS[name])] = TIMING_CLASS[cmd.timing]
        elif name != "LOAD" and isa.has_opcode(cfg, name):
            kind[op == isa.OPCODES[name]] = TIMING_CLASS[cmd.timing]
    return kind


def fixed_costs(cfg, f: dict[str, np.ndarray], kind: np.ndarray) -> dict[str, np.ndarray]:
    """Each descriptor's own cycles, vectorised: LOAD, IM2COL, STORE and slot-command durations (dur),
    IM2COL input rows and cycles per row (0 on other descriptors), COMPUTE K (ck) and tiles."""
    C, DB = cfg.cols, cfg.beat_bytes
    n = len(kind)
    dur, rows, period = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    cnt = f["count"]
    # (each class's fields read on its own descriptors only: most lists have few classes)
    # LOAD: one cycle per beat, or per entry slot of a beat (the last beat's unused slots too);
    # LOAD_PIPELINE: the burst sized a cycle ahead, the beat register, the registered write.
    load = np.flatnonzero(kind == K_LOAD)
    if load.size:
        target, c = f["target"][load], cnt[load]
        eb = np.zeros(load.size, np.int64)
        for name, code in isa.TARGETS.items():
            if name != "IM2COL" and isa.has_target(cfg, name):
                eb[target == code] = isa.entry_bytes(cfg, name)
        wide = eb >= DB
        per = np.where(wide, 1, DB // np.maximum(eb, 1))
        beats = np.where(wide, c * eb // DB, -(-c // per))
        dur[load] = READ_LATENCY * -(-beats // 256) + np.where(wide, beats, beats * per) + LOAD_PIPELINE
        # A transposing LOAD (load_t): per group of a beat's worth of entries, a beat of each row read
        # (single-beat bursts, one AR a cycle) into one half of the transpose buffer while the other half's
        # entries are written, one a cycle: max(rows, beat bytes) cycles a group; the first group's rows and
        # the last group's entries are not overlapped.
        tr = load[f["transpose"][load] != 0]
        if tr.size:
            r, c = f["t_rows_last"][tr] + 1, cnt[tr]
            groups = -(-c // DB)
            last = c - (groups - 1) * DB
            dur[tr] = READ_LATENCY + r + (groups - 1) * np.maximum(r, DB) + last + LOAD_PIPELINE
    # IM2COL: input rows stream at max(beats, K) cycles each (line buffer and emission overlap).
    im = np.flatnonzero(kind == K_IM2COL)
    if im.size:
        k = f["kernel_last"][im] + 1
        nb = im2col_row_beats(cfg, k, np.left_shift(1, f["stride_log2"][im]), f["col_offset"][im])
        rows[im] = (f["out_rows_last"][im] + 1) * cnt[im] * k
        period[im] = np.maximum(nb, k)
        dur[im] = READ_LATENCY + rows[im] * period[im] + k + IM2COL_CYCLES
    # STORE: the output stage's start, a cycle per beat of every row of every tile, the B response.
    st = np.flatnonzero(kind == K_STORE)
    if st.size:
        i32 = f["out_int32"][st].astype(bool)
        row_beats = C * np.where(i32, 4, 1) // DB
        # (int8 rows pass the store table's stage and the residual add's two where the overlay has them:
        # hw/gemm/engine.py StoreTable, StoreAdd)
        start = np.where(i32, STORE_START[True], STORE_START[False] + ("store_lut" in cfg.engines)
                         + STORE_ADD_LATENCY * ("store_add" in cfg.engines))
        dur[st] = start + (f["tiles_last"][st] + 1) * cnt[st] * row_beats + STORE_LATENCY
    # Slot commands (DEPTHWISE, VECTOR): their engine's own duration (sw.engines: Command.cycles).
    # Descriptors of equal timing bytes take equal cycles: each distinct one timed once (a map in padded
    # windows is thousands of VECTOR commands equal but for their addresses).
    slot = np.flatnonzero(kind == K_SLOT)
    if slot.size:
        from sw.engines import commands
        names = {v: k for k, v in isa.OPCODES.items()}
        raw = getattr(f, "_raw", None)
        if raw is not None:
            keys = np.ascontiguousarray(timing_bytes(raw[slot])).view(np.dtype((np.void, isa.DESCRIPTOR_BYTES)))
            _, first, inverse = np.unique(keys.reshape(-1), return_index=True, return_inverse=True)
        else:
            first = inverse = np.arange(slot.size)
        columns = {key: v[slot[first]].tolist() for key, v in f.items()}
        timed = [commands()[names[d["opcode"]]].cycles(cfg, d)
                 for d in ({key: c[j] for key, c in columns.items()} for j in range(len(first)))]
        dur[slot] = np.array(timed, np.int64)[inverse.reshape(-1)]
    return dict(dur=dur, rows=rows, period=period, ck=f["k_last"] + 1, tiles=np.maximum(1, cnt))


def top_start(started: list[int], q_top: int, rows_in: int, rows: int) -> int:
    """When the depthwise unit's window top first reaches global input row >= q_top (0: from the start)."""
    if q_top <= 0:
        return 0
    g, r = divmod(q_top, rows_in)
    idx = g * rows + min(r, rows)        # first output row whose window top is >= q_top
    return started[idx] if idx < len(started) else 0


def depthwise_cycles(cfg, k, chans, rows, width, nb) -> int:
    """DEPTHWISE, row by row: input rows stream in at a beat per cycle (lanes x beats each), at most
    DW_ROW_SLOTS rows ahead of the window's top row; an output row of W pixels issues in W cycles once
    its K rows (and its group's coefficients) are in; then the pipeline drains."""
    L = cfg.dw_lanes
    groups = -(-chans // L)
    rows_in = rows + k - 1
    loaded_at: list[int] = []          # global input row q -> cycle its last beat is in
    started: list[int] = []            # output row (in issue order) -> cycle it starts
    load_t = DW_START + READ_LATENCY
    issue_t = 0
    for g in range(groups):
        for oy in range(rows):
            top = g * rows_in + oy
            while len(loaded_at) < top + k:
                q = len(loaded_at)
                gate = top_start(started, q - DW_ROW_SLOTS + 1, rows_in, rows)
                lq = min(L, chans - (q // rows_in) * L)
                load_t = max(load_t, gate) + lq * nb
                loaded_at.append(load_t)
            start = max(issue_t, loaded_at[top + k - 1] + 1)
            started.append(start)
            issue_t = start + width
    return issue_t + DW_DRAIN


#: (cfg, Fields.digest) -> (whether the list has ATTENTION descriptors, {the attention engine's `normed`
#: before (None without them): (Outcome, `normed` after)}) of lists timed without data: a function of the
#: configuration, the bytes (but dram_addr) and that one bit of engine state (sw.backends.sim_attention: its
#: other timing state restarts every run).
_TIMED = Lru(keep=4096)          # a video frame runs a few hundred programs: all of them remembered


def depthwise_command(cfg, d) -> int:
    """A DEPTHWISE descriptor's cycles (its fields `d`)."""
    return depthwise_cycles(cfg, d["dw_kernel_last"] + 1, d["dw_channels"], d["count"], d["dw_width"],
                            d["stride"] // cfg.beat_bytes)


def simulate(cfg, f: dict[str, np.ndarray], attn=None, execute=None) -> Outcome:
    """Dispatch the decoded descriptors `f` in order as the command processor does; return how the run
    ended and its cycles. `attn`: the attention engine's model (its schedule() and timing state);
    `execute(i, kind)`: called when descriptor i's waits are met (the checked mode's data), returns None
    or (error bit, index) to stop the run there. Timing alone (no `execute`) is remembered by the list's
    bytes (decode_descriptors' digest; with ATTENTION descriptors, and the engine's normaliser state): a
    program run again (the fast mode's common case, an attention's heads split into equal programs)
    costs no second pass of the recurrence."""
    digest = getattr(f, "digest", None) if execute is None else None
    # The attention engine's one state that outlives a run: whether its normaliser has run since reset
    # (NORM_AGAIN); a list with ATTENTION descriptors is remembered with it, before and after.
    kept = _TIMED.get((cfg, digest)) if digest else None
    if kept is not None:
        has_attention, outcomes = kept
        normed = attn.normed if attn is not None and has_attention else None
        if normed in outcomes:
            out, normed_after = outcomes[normed]
            if attn is not None:
                attn.reset_timing()
                if normed is not None:
                    attn.normed = normed_after
            return _copy(out)
    kinds = classify(cfg, f)
    has_attention = bool(np.any(kinds == K_ATTENTION))
    normed = attn.normed if attn is not None and has_attention else None
    out = _simulate(cfg, f, kinds, attn, execute)
    if digest:
        outcomes = kept[1] if kept is not None else {}
        outcomes[normed] = (_copy(out), None if normed is None else attn.normed)
        _TIMED.put((cfg, digest), (has_attention, outcomes))
    return out


def timings(cfg) -> list:
    """The outcomes simulate remembers for overlay `cfg`, as JSON rows (sw.runtime.program_store keeps them for
    the next process): [digest hex, has attention, [[normed before, state, desc_done, cycles, counts,
    error_bit, error_index, normed after], ...]], least recently used first."""
    return [[digest.hex(), has_attention,
             [[normed, o.state, o.desc_done, o.cycles, o.counts, o.error_bit, o.error_index, after]
              for normed, (o, after) in outcomes.items()]]
            for (c, digest), (has_attention, outcomes) in _TIMED.items() if c == cfg]


def remember_timings(cfg, rows) -> int:
    """Take `rows` (timings' form, another process's) into what simulate remembers for `cfg`; how many lists.
    ValueError, taking none of them, when a row is not of that form."""
    def flag(x, none_ok=False):
        if not (isinstance(x, bool) or (none_ok and x is None)):
            raise ValueError(f"{x!r} where a flag was expected")
        return x

    def count(x):
        if type(x) is not int or x < 0:
            raise ValueError(f"{x!r} where a count was expected")
        return x

    if not isinstance(rows, list):
        raise ValueError(f"timing rows {str(rows)[:60]!r}")
    taken = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[2], list)):
            raise ValueError(f"a timing row {str(row)[:60]!r}")
        outcomes = {}
        for o in row[2]:
            if not (isinstance(o, list) and len(o) == 8 and o[1] in ("done", "hang", "error")):
                raise ValueError(f"an outcome {str(o)[:60]!r}")
            counts = o[4]
            if counts is not None and not (isinstance(counts, dict) and set(counts) <= set(UNITS)):
                raise ValueError(f"unit counts {str(counts)[:60]!r}")
            outcomes[flag(o[0], True)] = (
                Outcome(o[1], count(o[2]), count(o[3]), None if counts is None else {
                    u: count(v) for u, v in counts.items()}, count(o[5]), count(o[6])), flag(o[7], True))
        taken.append(((cfg, bytes.fromhex(row[0])), (flag(row[1]), outcomes)))
    for key, value in taken:
        _TIMED.put(key, value)
    return len(taken)


def forget_timings() -> None:
    """Drop the remembered outcomes (a benchmark timing the cycle model itself)."""
    _TIMED.clear()


def _copy(out: Outcome) -> Outcome:
    return dataclasses.replace(out, counts=None if out.counts is None else dict(out.counts))


#: Time a list in chunks, each chunk's run remembered by its descriptors and the recurrence's state relative
#: to its start (_simulate_chunks); False: the per-descriptor loop over the whole list, the reference.
CHUNKS = True
CHUNK_MIN, CHUNK_MAX, CUT_RADIUS = 128, 2048, 64    # a chunk's descriptors (content-defined cuts)


class _State:
    """The recurrence's state between descriptors: the fetch and dispatch times, the units' free times,
    each unit's completion times (UNITS, in order), the descriptors' dispatch times and the reads in
    flight (the LOADs' and IM2COLs' dispatch times, when their R beats end or -1 for an IM2COL, whose rows
    are requested ahead: r_rows, r_per)."""
    __slots__ = ("fetch_last", "t_dispatch", "load_free", "store_free", "c_last", "dispatched", "units",
                 "r_t", "r_fix", "r_rows", "r_per")

    def __init__(self):
        self.fetch_last = self.t_dispatch = START_CYCLES
        self.load_free = self.store_free = 0
        self.c_last = -10 ** 9                # the engine's last step issue of the previous compute
        self.dispatched: list[int] = []
        self.units: tuple[list[int], ...] = ([], [], [], [])
        self.r_t: list[int] = []
        self.r_fix: list[int] = []
        self.r_rows: list[int] = []
        self.r_per: list[int] = []


def _simulate(cfg, f, kinds, attn, execute) -> Outcome:
    cost = fixed_costs(cfg, f, kinds)
    n = len(kinds)
    cols = (kinds, cost["dur"], cost["rows"], cost["period"], cost["ck"], cost["tiles"],
            *(f[f"wait_{u.lower()}"] for u in UNITS))
    if attn is not None:
        attn.reset_timing()
    st = _State()
    if CHUNKS and execute is None:
        out = _simulate_chunks(cfg, f, kinds, cost, cols, st, attn)
    else:
        out = _steps(cfg, f, cols, st, 0, n, attn, execute)
    if out is not None:
        return out
    dl, dc, dst, da = st.units
    end = max([st.t_dispatch] + [v[-1] + 1 for v in st.units if v])
    return Outcome("done", n, end, dict(LOAD=len(dl), COMPUTE=len(dc), STORE=len(dst), ATTENTION=len(da)))


#: Each kind's unit (UNITS' index; -1: none), whose completions its waits count.
_UNIT_OF = np.full(K_BAD + 1, -1)
for _k, _u in ((K_LOAD, "LOAD"), (K_IM2COL, "LOAD"), (K_SLOT, "LOAD"), (K_COMPUTE, "COMPUTE"), (K_STORE, "STORE"),
               (K_ATTENTION, "ATTENTION")):
    _UNIT_OF[_k] = UNITS.index(_u)
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93],
                np.uint64)


def _wait_slots() -> tuple[list[int], np.ndarray]:
    """Each unit's wait field as a column of the descriptors viewed as 16-bit words, and the descriptors'
    64-bit lanes with the wait fields' bits cleared (a mask per lane)."""
    cols, mask = [], np.full(isa.DESCRIPTOR_BYTES // 8, 2 ** 64 - 1, np.uint64)
    for u in UNITS:
        pos, width = isa.FIELDS[f"wait_{u.lower()}"]
        assert pos % 16 == 0 and width == 16, u
        cols.append(pos // 16)
        mask[pos // 64] &= np.uint64(~(0xFFFF << pos % 64) & (2 ** 64 - 1))
    return cols, mask


_WAIT_COLS, _WAIT_MASK = _wait_slots()
_OUTER, _MET = 0xFFFF, 0xFFFE       # a chunk's key for a wait on a completion before the chunk (_simulate_chunks)
assert isa.DESC_FIFO_DEPTH <= CHUNK_MIN and CHUNK_MAX < _MET       # (a chunk's last dispatches kept; its waits keyed)


def _simulate_chunks(cfg, f, kinds, cost, cols, st: _State, attn) -> Outcome | None:
    """The recurrence over the list in chunks (timing alone). A compiled list repeats itself: a linear's
    schedule is regular, an attention plan replays a template group after group. A chunk's key is its
    descriptors' timing bytes (timing_bytes) with each wait as how many of its unit's completions back it
    reaches within the chunk (_OUTER: before the chunk; _MET: before the chunk and met, as an earlier
    descriptor of the chunk waits on as late a completion of that unit: each unit's completions are in time
    order), and its start state its times relative to T = t_dispatch (every descriptor of the chunk
    dispatches at T or later), each time the recurrence only compares with later ones held as T when earlier,
    the _OUTER waits' completions among them. The recurrence is a max-plus system: the same chunk from the same
    relative state takes the same cycles, shifted; a chunk met again in a state seen before is applied from
    its first run's record instead of run."""
    n = len(kinds)
    raw = getattr(f, "_raw", None)
    if raw is None or (kinds == K_BAD).any():
        return _steps(cfg, f, cols, st, 0, n, attn, None)                   # (a stop: the reference's outcome)
    key = np.array(timing_bytes(raw), np.uint8)
    lanes = key.view("<u8")
    # Cuts: before each descriptor whose hash (of its timing bytes but waits and the 3 before) is the least
    # within CUT_RADIUS either side, at least CHUNK_MIN apart: a repeated stretch is cut alike wherever it sits
    # (a period's least hash recurs each period), in whole periods.
    h = (lanes & _WAIT_MASK) @ _MIX          # (wraps: a hash)
    w = h * _MIX[0]
    for k in range(1, 4):
        w[k:] += h[:-k] * _MIX[k]
    w *= _MIX[1]
    lo_min, hi_min, k = w.copy(), w.copy(), 1
    while k <= CUT_RADIUS // 2:
        lo_min[k:] = np.minimum(lo_min[k:], lo_min[:-k])
        hi_min[:-k] = np.minimum(hi_min[:-k], hi_min[k:])
        k *= 2
    k = CUT_RADIUS - k + 1                      # the rest of the radius (windows overlap: still their minimum)
    lo_min[k:] = np.minimum(lo_min[k:], lo_min[:-k])
    hi_min[:-k] = np.minimum(hi_min[:-k], hi_min[k:])
    cuts = np.flatnonzero((w <= lo_min) & (w <= hi_min))
    cuts = cuts.tolist() + [n]
    bounds, lo = [], 0
    while lo < n:
        lo = min(cuts[bisect.bisect_left(cuts, min(lo + CHUNK_MIN, n))], lo + CHUNK_MAX)
        bounds.append(lo)
    starts = np.array([0] + bounds[:-1])
    words = key.view("<u2")
    unit = _UNIT_OF[kinds]
    outer_refs = [None] * 4           # per unit, per chunk: its _OUTER waits' completions
    for u, col in enumerate(_WAIT_COLS):
        wait = words[:, col]
        at = np.flatnonzero(wait)
        if not at.size:
            continue
        mine = np.flatnonzero(unit == u)
        ref = wait[at].astype(np.int64) - 1                  # the completion it reads
        done = np.searchsorted(mine, at)                     # the unit's completions before it
        if (ref >= done).any():
            return _steps(cfg, f, cols, st, 0, n, attn, None)              # a hang: the reference's outcome
        chunk = np.searchsorted(starts, at, "right") - 1
        first = np.searchsorted(mine, starts[chunk])           # the unit's completions before the chunk
        outer = ref < first
        reach = np.maximum.accumulate(ref + chunk * np.int64(n + 1))
        met = outer.copy()
        met[1:] &= reach[:-1] >= (ref + chunk * np.int64(n + 1))[1:]
        words[at, col] = np.where(outer, np.where(met, _MET, _OUTER), done - ref)
        keep = outer & ~met                      # increasing within a chunk
        outer_refs[u] = (ref[keep].tolist(), np.searchsorted(at[keep], [0] + bounds).tolist())
    R = cfg.rows
    gap = isa.array_tile_gap(R)
    fifo = isa.DESC_FIFO_DEPTH
    units, dispatched, r_t, r_fix, r_rows, r_per = st.units, st.dispatched, st.r_t, st.r_fix, st.r_rows, st.r_per
    seen: dict[tuple, tuple] = {}
    lo = 0
    for c, hi in enumerate(bounds):
        if hi - lo < CHUNK_MIN:         # (the last)
            _steps(cfg, f, cols, st, lo, hi, attn, None)
            lo = hi
            continue
        T, fl = st.t_dispatch, st.fetch_last
        # the reads a fetch from fl on may wait behind: those dispatched at fl or later, and the one before
        j = len(r_t) - 1
        while j >= 0 and r_t[j] >= fl:
            j -= 1
        if j >= 0:          # (held only if its R beats could still end after a fetch from fl on)
            last = r_fix[j] if r_fix[j] >= 0 else r_t[j] + IM2COL_FIRST_R + r_per[j] * r_rows[j]
            j += last + FETCH_AFTER_LOAD <= fl + FETCH_CYCLES
        reads = tuple((r_t[k] - T, r_fix[k] - T if r_fix[k] >= 0 else -1, r_rows[k], r_per[k])
                      for k in range(max(j, 0), len(r_t)))
        state = (key[lo:hi].tobytes(), fl - T, max(st.load_free, T) - T, max(st.store_free, T) - T,
                 max(st.c_last, T - gap) - T, tuple(max(x, fl) - T for x in dispatched[-fifo:]), reads,
                 tuple(max(v[-1], T - 1) - T if v else -1 for v in units),
                 tuple(_outer_state(v, refs[0][refs[1][c]:refs[1][c + 1]], T) if refs else None
                       for v, refs in zip(units, outer_refs)),
                 attn.timing_key(T) if attn is not None else None)
        rec = seen.get(state)
        if rec is None:
            n_units = [len(v) for v in units]
            n_reads = len(r_t)
            _steps(cfg, f, cols, st, lo, hi, attn, None)
            # Kept of the dispatch times and reads: what a later descriptor reads (the last DESC_FIFO_DEPTH;
            # the reads from the new fetch_last on, and the one before)
            j = len(r_t) - 1
            while j >= n_reads and r_t[j] >= st.fetch_last:
                j -= 1
            j = max(j, n_reads)
            seen[state] = (
                [x - T for x in dispatched[hi - fifo:hi]], [[x - T for x in v[m:]] for v, m in zip(units, n_units)],
                [x - T for x in r_t[j:]], [x - T if x >= 0 else None for x in r_fix[j:]], r_rows[j:], r_per[j:],
                (st.fetch_last - T, st.t_dispatch - T, st.load_free - T, st.store_free - T, st.c_last - T),
                attn.timing_at(T) if attn is not None else None)
        else:
            disp, done, rt, rf, rr, rp, scalars, at = rec
            dispatched.extend([0] * (hi - lo - fifo))        # (never read again)
            dispatched.extend([x + T for x in disp])
            for v, a in zip(units, done):
                v.extend([x + T for x in a])
            r_t.extend([x + T for x in rt])
            r_fix.extend([-1 if x is None else x + T for x in rf])
            r_rows.extend(rr)
            r_per.extend(rp)
            st.fetch_last, st.t_dispatch, st.load_free, st.store_free, st.c_last = (x + T for x in scalars)
            if attn is not None:
                attn.set_timing_at(at, T)
        lo = hi
    return None


def _outer_state(done: list[int], refs: list[int], t: int) -> tuple:
    """The times of completions `refs` (increasing) of a unit (`done`, in time order) relative to t, -1 if
    before: how many are before, and the others'."""
    m = bisect.bisect_left(refs, bisect.bisect_left(done, t))
    return m, tuple(done[k] - t for k in refs[m:])


def _steps(cfg, f, cols, st: _State, lo: int, hi: int, attn, execute) -> Outcome | None:
    """Descriptors lo..hi-1 dispatched in order from state `st` (updated); an Outcome if the run stops.
    `cols`: the descriptors' classes, fixed costs and waits (arrays of all the list)."""
    R, C = cfg.rows, cfg.cols
    kind_l, dur_l, rows_l, period_l, ck_l, tiles_l, wl, wc, ws, wa = (c[lo:hi].tolist() for c in cols)
    dl, dc, dst, da = st.units
    load_free, store_free, c_last = st.load_free, st.store_free, st.c_last
    t_dispatch, fetch_last = st.t_dispatch, st.fetch_last
    dispatched, r_t, r_fix, r_rows, r_per = st.dispatched, st.r_t, st.r_fix, st.r_rows, st.r_per
    gap = isa.array_tile_gap(R)
    drain = R + C + R + isa.ARRAY_EXTRA_LATENCY
    fifo = isa.DESC_FIFO_DEPTH
    beats_desc = isa.DESCRIPTOR_BYTES // cfg.beat_bytes
    for x in range(hi - lo):           # (x: in the lists here, i: in the list timed)
        i = lo + x
        # fetch: one descriptor at a time, up to DESC_FIFO_DEPTH ahead of the dispatcher
        s = fetch_last
        if i >= fifo and dispatched[i - fifo] > s:
            s = dispatched[i - fifo]
        arrive = s + FETCH_CYCLES
        # The DDR returns reads in order: a fetch issued while a LOAD's bursts stream waits for
        # the beats requested before it.
        j = len(r_t) - 1
        while j >= 0 and r_t[j] >= s:
            j -= 1
        if j >= 0:
            fix = r_fix[j]
            if fix < 0:
                tl = r_t[j]
                fix = tl + IM2COL_FIRST_R + r_per[j] * min(r_rows[j], max(0, s - tl) // IM2COL_AR_PERIOD + 1)
            if fix + FETCH_AFTER_LOAD > arrive:
                arrive = fix + FETCH_AFTER_LOAD
        fetch_last = arrive + beats_desc
        t = t_dispatch if t_dispatch > fetch_last else fetch_last
        # Waits: only dispatched descriptors complete, so a count not reached yet waits forever (its
        # completion not in the list yet). (Written out per unit: the hot loop, 1.6x as fast as a loop
        # over the units.)
        w = wl[x]
        if w:
            try:
                done = dl[w - 1]
            except IndexError:
                return Outcome("hang", i)
            if done >= t:
                t = done + 1
        w = wc[x]
        if w:
            try:
                done = dc[w - 1]
            except IndexError:
                return Outcome("hang", i)
            if done >= t:
                t = done + 1
        w = ws[x]
        if w:
            try:
                done = dst[w - 1]
            except IndexError:
                return Outcome("hang", i)
            if done >= t:
                t = done + 1
        w = wa[x]
        if w:
            try:
                done = da[w - 1]
            except IndexError:
                return Outcome("hang", i)
            if done >= t:
                t = done + 1
        kind = kind_l[x]
        if kind == K_BAD:
            return Outcome("error", i, error_bit=isa.ERROR_BAD_OPCODE, error_index=i)
        if execute is not None:
            err = execute(i, kind)
            if err is not None:
                return Outcome("error", i, error_bit=err[0], error_index=err[1])
        if kind == K_LOAD:
            if load_free > t:
                t = load_free
            load_free = t + dur_l[x]
            r_t.append(t); r_fix.append(load_free - 2); r_rows.append(0); r_per.append(0)   # last R beat
            dl.append(load_free)
        elif kind == K_COMPUTE:
            k = ck_l[x]
            if c_last > t:
                t = c_last                      # the engine takes a command at its predecessor's last step
            for _ in range(tiles_l[x]):         # tiles back to back (COMPUTE.count)
                start = (t if t > c_last else c_last) + k       # its last step
                c_last = start if start > c_last + gap else c_last + gap
            dc.append(c_last + drain)
        elif kind == K_STORE:
            if store_free > t:
                t = store_free
            store_free = t + dur_l[x]
            dst.append(store_free)
        elif kind == K_IM2COL:
            if load_free > t:
                t = load_free
            load_free = t + dur_l[x]
            r_t.append(t); r_fix.append(-1); r_rows.append(rows_l[x]); r_per.append(period_l[x])
            dl.append(load_free)
        elif kind == K_SLOT:
            t = max(t, load_free, store_free)     # after loads (same slot) and stores
            load_free = t + dur_l[x]
            dl.append(load_free)
        elif kind == K_ATTENTION:
            # The engine takes a STEP while the previous ones still run (sw.backends.sim_attention).
            t, finish = attn.schedule(dict(target=int(f["target"][i]), k_last=int(f["k_last"][i]),
                                           count=int(f["count"][i])), t)
            da.append(finish)
        else:                                   # SYNC
            t = max([t] + [v[-1] + 1 for v in (dl, dc, dst, da) if v])
        dispatched.append(t)
        t_dispatch = t + 1
    st.load_free, st.store_free, st.c_last = load_free, store_free, c_last
    st.t_dispatch, st.fetch_last = t_dispatch, fetch_last
    return None


def cycles_only(cfg, descriptors, runs=None) -> int:
    """The cycles a descriptor list takes, without data (a timing-only profile), on an overlay fresh
    from reset: descriptors as packed bytes ((n, 32) uint8) or field dicts (a compiled program's
    `descriptors`); `runs`: (first, count) per START (a program's `runs`), summed. Equal to the sim
    backend's CYCLES for the same runs (checked and fast modes alike)."""
    if not isinstance(descriptors, np.ndarray):
        from sw.runtime.program import encode_descriptors
        words = encode_descriptors(list(descriptors))
        if words is None:
            raise ValueError("a descriptor does not fit the format (hw.isa.pack_descriptor says which)")
        descriptors = words.view(np.uint8)
    raw = descriptors.reshape(-1, isa.DESCRIPTOR_BYTES)
    attn = None
    if "attention" in cfg.engines:
        from sw.backends.sim_attention import AttentionModel
        attn = AttentionModel(cfg)          # one engine for all runs: its normaliser state carries over
    total = 0
    for first, count in runs or [(0, len(raw))]:
        out = simulate(cfg, decode_descriptors(raw[first:first + count]), attn)
        if out.state != "done":
            raise ValueError(f"the descriptors do not complete ({out.state} at descriptor {first + out.desc_done})")
        total += out.cycles
    return total


def program_cycles(prog) -> int:
    """A compiled program's cycles (all its runs) without running its data: what the sim backend
    reports for it on an overlay fresh from reset."""
    n = len(prog.descriptors)
    return cycles_only(prog.cfg, prog.image[:n * isa.DESCRIPTOR_BYTES], getattr(prog, "runs", None))
