"""The compilers' fast schedules equal their reference ones descriptor for descriptor (issue 18: a session's
first image compiles every program, so compiling must be fast, and the programs must not change).

sw.compile.linear._scheduled_columns (a layer's resident or K-split schedule as NumPy columns) against `schedule`
over the op list (SCHEDULE_ARRAYS = False), LoadWindows.place against a window-by-window walk, the attention
plan's replayed groups against its Python schedule (REPLAY_GROUPS = False), and sw.compile.vector's commands as
columns against its dict loop (COLUMNS = False)."""
import random

import numpy as np
import pytest

import sw.compile.linear as L
from hw.config import preset


def _plan(monkeypatch, arrays: bool, *args, **kwargs):
    monkeypatch.setattr(L, "SCHEDULE_ARRAYS", arrays)
    return L._linear_plan.__wrapped__(*args, **kwargs)


def _same_plan(a, b) -> None:
    offsets, head, size, sym, raw, runs = a[:6]
    assert offsets == b[0] and size == b[2] and runs == b[5] and a[6:] == b[6:]
    assert np.array_equal(head, b[1])                      # the program's descriptor bytes
    assert len(sym) == len(b[3]) and tuple(sym) == tuple(b[3])   # every descriptor's fields, symbolic and numeric
    assert tuple(raw) == tuple(b[4])


# (preset, M, K, N): resident: one block and several (B and PARAM hazards from two blocks back), a short last
# M-tile and N-tile, K = half a scratchpad, loads the computes cannot hide (K small: the DMA is the bound), one
# M-tile; K-split (K over half a scratchpad): blocks of several sizes (short edge blocks), a short last chunk.
SHAPES = [("kv260", 1000, 96, 384), ("kv260", 4096, 32, 4), ("kv260", 777, 1024, 100), ("kv260", 16, 96, 384),
          ("kv260", 300, 200, 2000), ("bench16", 500, 64, 700), ("sim", 90, 24, 200), ("sim", 7, 8, 8),
          ("pynq-z2", 333, 48, 130), ("ulx3s-gemm", 61, 40, 90), ("zcu104", 2000, 96, 96),
          ("kv260", 1000, 1536, 384), ("kv260", 100, 3072, 250), ("bench16", 300, 2500, 130), ("sim", 50, 5000, 60),
          ("pynq-z2", 200, 1100, 90)]


# a_rows (A read through the transposing LOAD) only where the preset has one
CASES = [(*shape, a_rows, relu, out_int32) for shape in SHAPES
         for a_rows, relu, out_int32 in [(False, False, False), (True, True, False), (False, False, True)]
         if not a_rows or "load_t" in preset(shape[0]).engines]


@pytest.mark.parametrize("name,M,K,N,a_rows,relu,out_int32", CASES)
def test_schedule_arrays_equal_schedule(monkeypatch, name, M, K, N, a_rows, relu, out_int32):
    cfg = preset(name)
    args = (cfg, M, K, N, relu, out_int32, False, False, 1 << 20, 1 << 40)
    fast = _plan(monkeypatch, True, *args, a_rows=a_rows)
    ref = _plan(monkeypatch, False, *args, a_rows=a_rows)
    _same_plan(fast, ref)


# (preset, M, K, N, a_rows, ramp): resident ramps (sw.compile.linear._resident_order) given, not chosen: chunks of
# unequal length, SPLIT LOADs on token rows, a ramp wider than the tiles, short edge tiles, several blocks.
RAMPS = [("zcu104", 300, 256, 256, False, (5, 4, 2)), ("kv260", 1000, 96, 384, True, (4, 4, 2)),
         ("bench16", 37, 200, 700, False, (3, 3, 2)), ("pynq-z2", 70, 40, 50, True, (3, 2, 2)),
         ("sim", 90, 24, 200, False, (2, 2, 1))]


@pytest.mark.parametrize("name,M,K,N,a_rows,ramp", RAMPS)
def test_schedule_arrays_equal_schedule_with_a_ramp(monkeypatch, name, M, K, N, a_rows, ramp):
    args = (preset(name), M, K, N, True, False, False, False, 1 << 20, 1 << 40)
    _same_plan(_plan(monkeypatch, True, *args, a_rows=a_rows, ramp=ramp),
               _plan(monkeypatch, False, *args, a_rows=a_rows, ramp=ramp))


@pytest.mark.parametrize("name,M,K,N,timed", [("zcu104", 256, 256, 256, True), ("kv260", 256, 256, 256, True),
                                               ("pynq-z2", 256, 256, 256, False), ("kv260", 4096, 96, 288, False)])
def test_ramp_is_timed_only_where_it_could_pay(monkeypatch, name, M, K, N, timed):
    """The resident ramp's candidates are timed (`_ramp_choice`, 10-100 ms) only where block 0's start could be
    1 % of the layer (`_ramp_may_pay`): a 256^3 GEMM on the 16 x 32 and 32 x 32 arrays, not on 8 x 8 (0.5 %) nor a
    4,096-token linear of SAM 2's (0.8 %)."""
    calls = []
    monkeypatch.setattr(L, "_ramp_choice", lambda *a: calls.append(a))
    L._linear_plan.__wrapped__(preset(name), M, K, N, False, False, False, False, 0, 1 << 40)
    assert bool(calls) == timed


def test_schedule_arrays_leave_runs_to_schedule(monkeypatch):
    """A layer of more computes than one run's wait counts takes the op list's way (split_runs), without a ramp
    (split_runs would not load a ramp's pieces again)."""
    cfg = preset("sim")
    assert L._resident_ops(L._resident_order(cfg, 4 * 70_000, 8, 8, False, False, 32, 64, 8, None)) is None
    monkeypatch.setattr(L, "WAIT_LIMIT", 100)               # (a small layer of several runs)
    args = (cfg, 4 * 60, 8, 8 * 4, False, False, False, False, 0, 1 << 40)
    plan = L._linear_plan.__wrapped__(*args, ramp=(2, 2, 1))
    assert len(plan[5]) > 1 and tuple(plan[3]) == tuple(L._linear_plan.__wrapped__(*args, ramp=None)[3])


def _walk(left, first, last, cycles, hazard, spread, stream=None):
    """LoadWindows.place as first written: a window at a time from the first with time left. stream: a dict
    holding "after", the op after the last load's latest window (LoadWindows' stream rule: a load without a
    hazard that finds no time left goes there, not right before its op); None: the rule off."""
    at = next((i for i in range(first, len(left)) if left[i]), len(left))
    if at > last:
        at = min(first + spread, last) if hazard else last if stream is None else max(first, min(last, stream["after"]))
    if stream is not None:
        stream["after"] = last + 1
    i = at
    while cycles > 0 and i < len(left):
        used = min(cycles, left[i])
        left[i] -= used
        cycles -= used
        i += 1
    return at


@pytest.mark.parametrize("seed,stream", [(seed, stream) for seed in range(4) for stream in (False, True)])
def test_load_windows_place(seed, stream):
    rng = random.Random(seed)
    n = 300
    lengths = [rng.choice([1, 5, 32, 96]) for _ in range(n)]
    w, left = L.LoadWindows.of_lengths(lengths, stream), list(lengths)
    state = dict(after=0) if stream else None
    calls, placed = [], []
    for j in range(1, n):
        for spread in range(rng.choice([0, 1, 1, 3])):
            first = rng.randrange(0, j)
            args = (first, j - 1, rng.choice([1, 20, 41, 105, 300]), rng.random() < 0.7, spread)
            placed.append(w.place(*args))
            assert placed[-1] == _walk(left, *args, stream=state)
            assert w.left == left
            calls.append(args)
    at_once = L.LoadWindows.of_lengths(lengths, stream)  # place_all (_scheduled_columns'): the same, in one call
    assert at_once.place_all(*map(list, zip(*calls))) == placed
    assert at_once.left == left


# (preset, H, Lq, Lk, d, rows): windows (many one-group heads: replayed back to back), a global attention (big
# groups), a short last query tile, token-row inputs.
ATTENTIONS = [("kv260", 300, 16, 16, 96, False), ("kv260", 2, 200, 300, 64, False), ("kv260", 64, 49, 49, 96, True),
              ("bench16", 40, 33, 70, 32, True), ("sim", 9, 20, 30, 16, False)]


@pytest.mark.parametrize("name,H,Lq,Lk,d,token_rows", ATTENTIONS)
def test_attention_replayed_groups_equal_schedule(monkeypatch, name, H, Lq, Lk, d, token_rows):
    """The attention plan's groups replayed from templates (REPLAY_GROUPS) equal every group emitted by the
    Python schedule."""
    from sw.compile import attention as A
    cfg = preset(name)
    rows = A.TokenRows(heads=4, groups=H // 4 + 1, queries=Lq, keys=Lk, inputs=True) if token_rows else None
    args = (cfg, H, Lq, Lk, d, False, False, False, rows, A._Score(3, 9), 1 << 20, 1 << 40)
    plans = []
    for replay in (True, False):
        monkeypatch.setattr(A, "REPLAY_GROUPS", replay)
        plans.append(A._attention_plan.__wrapped__(*args))
    fast, ref = plans
    assert fast[0] == ref[0] and fast[2] == ref[2] and fast[5:] == ref[5:]
    assert np.array_equal(fast[1], ref[1])
    assert tuple(fast[3]) == tuple(ref[3]) and tuple(fast[4]) == tuple(ref[4])


def _vector_calls():
    from golden_model import intvec
    from sw.runtime.layout import RowRuns
    rng = np.random.default_rng(0)

    def x(*shape):
        return rng.integers(-128, 128, shape, dtype=np.int8)
    ang = rng.uniform(-3, 3, (6, 4))
    runs = RowRuns.windows(9, 10, 4)
    return [("add", (x(90, 24), intvec.AddParams(3000, 5000, 12)), dict(b=x(90, 24))),
            ("add", (x(90, 24), intvec.AddParams(3000, 5000, 12)), dict(b=x(1, 24))),
            ("add", (x(90, 48), intvec.AddParams(3, 5, 2)), dict(b=x(90, 48), runs={"in": runs, "b": runs, "out": runs})),
            ("rescale", (x(90, 40), intvec.RescaleParams(7, 3)), dict(runs={"out": runs})),
            ("add", (x(70_000, 8), intvec.AddParams(1, 1, 0)), dict(b=x(70, 8))),      # several commands
            ("rope", (x(12, 8), intvec.RopeParams.make(np.cos(ang), np.sin(ang), 0.05, 0.05)), {}),
            ("maxpool", (x(6, 10, 16),), {}), ("upsample", (x(3, 5, 16),), {})]


@pytest.mark.parametrize("i", range(8))
def test_vector_columns_equal_dicts(monkeypatch, i):
    """compile_vector's VECTOR commands made as columns equal those it makes a dict at a time: bytes, fields,
    the fast mode's pieces."""
    from sw.compile import vector as V
    op, args, kwargs = _vector_calls()[i]
    cfg = preset("bench16")
    progs = []
    for columns in (True, False):
        monkeypatch.setattr(V, "COLUMNS", columns)
        V._PACKED.clear()
        progs.append(V.compile_vector(cfg, op, *args, **kwargs))
    fast, ref = progs
    assert np.array_equal(fast.image, ref.image) and fast.regions == ref.regions
    assert tuple(fast.symbolic) == tuple(ref.symbolic) and tuple(fast.descriptors) == tuple(ref.descriptors)
    assert fast.op == ref.op


def test_emitter_addressed_columns_equal_dicts():
    """Emitter.add_addressed's descriptors read back as dicts (the path that says which does not fit) equal its
    columns, addresses (buffer, offset) in every address field."""
    from sw.runtime.program import Emitter
    e = Emitter()
    e.add_at(("opcode", "count"), (1, 2), "params", 64)
    keys = ("opcode", "vec_out_addr", "vec_rows", "vec_b_addr", "dram_addr")
    values = np.array([[5, 0, 7, 0, 0], [5, 0, 9, 0, 0]])
    e.add_addressed(keys, e.reserve(2) + np.arange(2), values,
                    {"dram_addr": ("in", np.array([0, 32])), "vec_out_addr": ("out", np.array([64, 96])),
                     "vec_b_addr": (["b", "c"], np.array([0, 128]))})
    assert e.dicts()[2] == {"opcode": 5, "vec_out_addr": ("out", 96), "vec_rows": 9, "vec_b_addr": ("c", 128),
                            "dram_addr": ("in", 32)}
    assert tuple(e.columns()) == tuple(e.dicts())


def test_emitter_blocks_columns_equal_dicts():
    """Emitter.add_block's descriptors (one buffer for a block, one a descriptor, an empty block naming a buffer
    no descriptor uses) as columns equal them as dicts, and their addresses split per buffer as the dicts say."""
    from sw.runtime.program import Emitter, split_addresses
    e = Emitter()
    keys = ("opcode", "count")
    e.add_block(keys, e.reserve(3) + np.arange(3), np.array([[1, 2], [1, 3], [1, 4]]), "out", np.array([0, 32, 64]))
    e.add_block(keys, e.reserve(0) + np.arange(0), np.zeros((0, 2), np.int64), "unused", np.zeros(0, np.int64))
    e.add_block(keys, e.reserve(3) + np.arange(3), np.array([[1, 5], [1, 6], [1, 7]]), ["A", "out", "A"], [8, 96, 16])
    e.add_block(("opcode",), e.reserve(1) + np.arange(1), np.array([[3]]))
    cols = e.columns()
    assert tuple(cols) == tuple(e.dicts())
    assert e.dicts()[4] == {"opcode": 1, "count": 6, "dram_addr": ("out", 96)}
    fixed, moved = cols.split
    ref_fixed, ref_moved = split_addresses(e.dicts())
    assert list(moved) == list(ref_moved) == ["out", "A"]
    for name in moved:
        assert all(np.array_equal(a, b) for a, b in zip(moved[name]["dram_addr"], ref_moved[name]["dram_addr"]))


def test_a_compiled_linear_links_without_encoding_again(monkeypatch):
    """pack_descriptors makes a linear's descriptor bytes as a load links them (the words without addresses,
    kept on the list, then the address bytes): its image holds what hw.isa.pack_descriptor makes of the numeric
    descriptors, and linking it to other buffers encodes no column again, the same bytes as field by field."""
    from hw import isa
    import sw.runtime.program as P
    cfg = preset("kv260")
    rng = np.random.default_rng(3)
    prog = L.compile_linear(cfg, rng.integers(-9, 9, (300, 200), np.int8), rng.integers(-9, 9, (200, 130), np.int8),
                            None, 1 << 20, 20, base_addr=1 << 20)
    n = len(prog.descriptors)
    assert prog.image[:n * 32].tobytes() == b"".join(isa.pack_descriptor(**d) for d in prog.descriptors)
    encoded, real = [], P.encode_columns
    monkeypatch.setattr(P, "encode_columns", lambda *a: encoded.append(a[1]) or real(*a))
    at = {name: (7 + i) << 22 for i, name in enumerate(prog.regions)}
    want = b"".join(isa.pack_descriptor(**{k: at[v[0]] + v[1] if isinstance(v, tuple) else v for k, v in d.items()})
                    for d in prog.symbolic)
    assert P.link_words(prog.symbolic, at).tobytes() == want and encoded == []


# ---- operands written straight into the image (put_token_tiles, TokenRowLayout.pack_into), the GC pause

@pytest.mark.parametrize("lead,tokens,channels,lanes", [((), 37, 5, 16), ((), 32, 3, 16), ((3,), 5, 7, 8),
                                                        ((2, 3), 1, 1, 4), ((2,), 17, 9, 32)])
def test_put_token_tiles_equals_token_tiles(lead, tokens, channels, lanes):
    """put_token_tiles writes golden_model.intops.token_tiles (tokens not filling the last tile too) and leaves
    every other byte of its destination as it was."""
    from golden_model.intops import token_tiles
    rng = np.random.default_rng(tokens)
    x = rng.integers(-128, 128, (*lead, tokens, channels), dtype=np.int8)
    tiles = -(-tokens // lanes)
    dst = np.full((*lead, tiles, channels + 2, lanes), 99, np.int8)      # (two entries past the channels)
    L.put_token_tiles(dst[..., :channels, :], x)
    ref = np.array([token_tiles(x[i], lanes) for i in np.ndindex(*lead)]).reshape(*lead, tiles, channels, lanes)
    written = dst[..., :channels, :]
    last = tokens - (tiles - 1) * lanes                                  # tokens in the last tile
    assert np.array_equal(written[..., :tiles - 1, :, :], ref[..., :tiles - 1, :, :])
    assert np.array_equal(written[..., -1, :, :last], ref[..., -1, :, :last])
    assert np.all(written[..., -1, :, last:] == 99) and np.all(dst[..., channels:, :] == 99)


def _tiles_ref(x, lanes: int, n: int, stride: int) -> np.ndarray:
    """The bytes of x's n token tiles of `lanes` tokens, `stride` apart, the way the compilers made them before
    put_token_tiles: a padded copy, a transposed copy, a tile at a time."""
    from golden_model.intops import token_tiles
    t = token_tiles(x, lanes).reshape(n, -1)
    out = np.zeros(n * stride, np.uint8)
    for i in range(n):
        out[i * stride:i * stride + t.shape[1]] = t[i].view(np.uint8)
    return out


@pytest.mark.parametrize("name,M,K,N,a_rows", [("kv260", 37, 45, 70, False), ("kv260", 37, 45, 70, True),
                                               ("sim", 5, 3, 9, False), ("bench16", 100, 1100, 17, False)])
def test_linear_operands_in_the_image(name, M, K, N, a_rows):
    """compile_linear's A (tiles, or token rows) and B regions and the zero bytes around its regions, on sizes
    that fill no tile: against the layout built the straightforward way."""
    from sw.runtime.layout import TokenRowLayout
    cfg = preset(name)
    rng = np.random.default_rng(M)
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    prog = L.compile_linear(cfg, a, b, np.arange(N), np.full(N, 3), np.full(N, 9), a_rows=a_rows)
    R, C = cfg.rows, cfg.cols
    mt, nt = -(-M // R), -(-N // C)
    if a_rows:
        rows = np.zeros((M, -(-K // C) * C), np.int8)
        rows[:] = np.pad(a, ((0, 0), (0, rows.shape[1] - K)))
        assert np.array_equal(prog.region("A"), rows.reshape(-1).view(np.uint8))
        assert np.array_equal(TokenRowLayout(M, K, C).pack(a), rows.reshape(-1).view(np.uint8))
    else:
        assert np.array_equal(prog.region("A"), _tiles_ref(a, R, mt, prog.regions["A"][1] // mt))
    assert np.array_equal(prog.region("B"), _tiles_ref(np.ascontiguousarray(b.T), C, nt, prog.regions["B"][1] // nt))
    image = prog.image.copy()
    for region, (off, size) in prog.regions.items():
        if region != "out":
            image[off:off + size] = 0
    assert not image.any()                          # alignment gaps and the output zero


@pytest.mark.parametrize("name,H,Lq,Lk,d", [("kv260", 3, 37, 45, 40), ("sim", 2, 5, 9, 3), ("bench16", 1, 16, 33, 16)])
def test_attention_operands_in_the_image(name, H, Lq, Lk, d):
    """compile_attention's Q, K and V tiles (head dim padded to C, a short last tile) against the layout built the
    straightforward way, per head."""
    from golden_model.intattn import AttentionQuant
    from sw.compile.attention import compile_attention
    cfg = preset(name)
    rng = np.random.default_rng(Lq)
    q, k, v = (rng.integers(-128, 128, (H, n, d), dtype=np.int8) for n in (Lq, Lk, Lk))
    prog = compile_attention(cfg, q, k, v, AttentionQuant(3000, 14, 1 << 28, 30))
    R, C = cfg.rows, cfg.cols
    dp = -(-d // C) * C
    for region, x, lanes in (("Q", q, R), ("K", k, C), ("V", v, C)):
        n = -(-x.shape[1] // lanes)
        stride = prog.regions[region][1] // (H * n)
        ref = np.concatenate([_tiles_ref(np.pad(x[h], ((0, 0), (0, dp - d))), lanes, n, stride) for h in range(H)])
        assert np.array_equal(prog.region(region), ref)


def test_gc_paused_restores_the_collector():
    """gc_paused turns the collector off for the outermost call only and back on after it (an error too), and
    leaves a collector that was off off."""
    import gc

    @L.gc_paused
    def inner():
        return gc.isenabled()

    @L.gc_paused
    def outer(fail=False):
        seen = (gc.isenabled(), inner(), gc.isenabled())
        if fail:
            raise RuntimeError("failed")
        return seen

    was = gc.isenabled()
    try:
        gc.enable()
        assert outer() == (False, False, False) and gc.isenabled()
        with pytest.raises(RuntimeError):
            outer(fail=True)
        assert gc.isenabled()
        gc.disable()
        assert outer() == (False, False, False) and not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("name,m,k,n,out_int32", [("kv260", 1000, 96, 384, False), ("kv260", 300, 1536, 100, True),
                                                  ("sim", 7, 8, 9, False)])
def test_placement_prices_the_compiled_linear(name, m, k, n, out_int32):
    """The placement's linear cost (from linear_descriptors: the plan, no data) is the compiled program's."""
    from sw.compile import graph as G
    cfg = preset(name)
    ones = None if out_int32 else np.ones(n, np.int64)
    prog = L.compile_linear(cfg, np.zeros((m, k), np.int8), np.zeros((k, n), np.int8), None, ones, ones,
                            out_int32=out_int32)
    assert G._linear_program.__wrapped__(cfg, m, k, n, out_int32) == G.EngineCost("gemm", *G.program_cost(prog),
                                                                                  cfg.macs)
    with pytest.raises(L.CompileError, match="exceeds"):
        L.linear_descriptors(cfg, m, L.MAX_K + 1, n)


@pytest.mark.parametrize("name,H,Lq,Lk,d", [("kv260", 4, 300, 300, 96), ("kv260", 64, 49, 49, 32), ("sim", 2, 5, 9, 3)])
def test_placement_prices_the_compiled_attention(name, H, Lq, Lk, d):
    """The placement's attention cost (from attention_descriptors: the plan, no data) is the compiled program's."""
    from golden_model.intattn import AttentionQuant
    from sw.compile import graph as G
    from sw.compile.attention import attention_descriptors, compile_attention
    cfg = preset(name)
    quant = AttentionQuant(1 << 14, 14, 1 << 14, 14)
    kv = np.zeros((H, Lk, d), np.int8)
    prog = compile_attention(cfg, np.zeros((H, Lq, d), np.int8), kv, kv, quant)
    assert G._attention_program.__wrapped__(cfg, H, Lq, Lk, d) == G.EngineCost("attention", *G.program_cost(prog),
                                                                              2 * cfg.macs)
    with pytest.raises(L.CompileError, match="head dim"):
        attention_descriptors(cfg, H, Lq, Lk, 10_000, quant)
