"""The runtime spine: arena, backend interface (sim, pynq on the simulated device, rtl), bound programs,
and the linear -> attention -> linear -> conv -> depthwise chain kept in DDR."""
import numpy as np
import pytest

from golden_model.intops import gemm
from hw import isa
from hw.config import preset
from sw.runtime.checks import DescriptorError
from sw.compile.linear import compile_linear
from sw.runtime.arena import ALIGN, Arena, ArenaFull
from sw.runtime.backend import AcceleratorError, open_backend
from sw.runtime.chain import Chain, ChainSpec, ChainWeights
from sw.runtime.program import ColumnDescriptors, LinkError, link, link_words
from sw.runtime.session import Session
from tests.conftest import mid_overlay

SIM = preset("sim")
CHAIN_CFG = preset("bench16")          # the chain needs every engine
WIDE_CFG = preset("kv260")             # and runs on non-square arrays (16 x 32) too


def layer(rng, m, k, n):
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    return a, b, rng.integers(-5000, 5000, n), rng.integers(1 << 29, 1 << 31, n), rng.integers(36, 42, n)


# ---------------------------------------------------------------- arena

def test_arena_first_fit_aligns_reuses_and_coalesces():
    arena = Arena(0x10_0000, 16 * ALIGN)
    a, b, c = (arena.allocate(n, s) for n, s in (("a", 100), ("b", ALIGN + 1), ("c", ALIGN)))
    assert [x.addr for x in (a, b, c)] == [0x10_0000, 0x10_0000 + ALIGN, 0x10_0000 + 3 * ALIGN]
    assert all(x.addr % ALIGN == 0 for x in (a, b, c))
    arena.free("b")
    assert arena.allocate("d", 2 * ALIGN).addr == b.addr          # the hole is reused (first fit)
    arena.free("a")
    arena.free("d")
    assert arena.allocate("e", 3 * ALIGN).addr == a.addr          # freed neighbours coalesced
    arena.free("e")
    arena.free("c")
    assert arena.free_bytes == arena.largest_free == 16 * ALIGN   # everything back in one block


def test_arena_activations_stay_put_while_programs_come_and_go_at_the_top():
    arena = Arena(0x10_0000, 16 * ALIGN)
    end = 0x10_0000 + 16 * ALIGN
    x = arena.allocate("x", 100)
    arena.free("x")
    assert arena.allocate_all({"prog": 3 * ALIGN}, top=True)["prog"].addr == end - 3 * ALIGN   # last fit
    assert arena.allocate("x2", 100).addr == x.addr               # the next frame's activation lands where it did
    arena.free("x2")
    arena.free("prog")
    assert arena.free_bytes == arena.largest_free == 16 * ALIGN


def test_arena_views_name_aligned_parts_and_keep_their_buffer_until_the_last_goes():
    arena = Arena(0x10_0000, 16 * ALIGN)
    x = arena.allocate("x", 3 * ALIGN)
    v1, v2 = arena.view("x1", "x", ALIGN, ALIGN), arena.view("x2", "x1", 0, 100)     # a view's view: of x
    assert (v1.addr, v1.size, v2.addr, v2.size) == (x.addr + ALIGN, ALIGN, x.addr + ALIGN, 100)
    assert arena.free_bytes == 13 * ALIGN                              # a view reserves nothing
    for bad in ((ALIGN // 2, 100), (2 * ALIGN, ALIGN + 1), (0, 0)):
        with pytest.raises(ValueError, match="must lie inside it and start on a multiple of 4096 bytes"):
            arena.view("bad", "x", *bad)
    assert arena.view("x3", "x", 64, 64, align=64).addr == x.addr + 64      # inside a page where asked
    arena.free("x3")
    arena.free("x")                                                    # its views live: x stays
    assert "x" in arena and arena.free_bytes == 13 * ALIGN
    with pytest.raises(KeyError):
        arena.free("x")
    arena.free("x1")
    assert arena.free_bytes == 13 * ALIGN
    arena.free("x2")                                                   # the last view: x given back
    assert "x" not in arena and arena.free_bytes == arena.largest_free == 16 * ALIGN
    arena.allocate("y", ALIGN)
    arena.view("y1", "y", 0, ALIGN)
    arena.free("y1")                                                   # a view freed first: y stays as it was
    assert "y" in arena and arena.free_bytes == 15 * ALIGN
    arena.free("y")
    assert arena.free_bytes == 16 * ALIGN


def test_arena_full_names_sizes_and_allocates_nothing():
    arena = Arena(0, 8 * ALIGN)
    arena.allocate("weights", 5 * ALIGN)
    with pytest.raises(ArenaFull, match=r"16,384 bytes asked \(x 4,096, y 12,288\), 12,288 of 32,768 free "
                                        r"\(largest block 12,288\); 1 buffers live \(weights 20,480\)"):
        arena.allocate_all({"x": ALIGN, "y": 3 * ALIGN})
    assert arena.buffers.keys() == {"weights"}                    # all or nothing: x was not kept
    arena.allocate_all({"x": ALIGN, "y": 2 * ALIGN})              # what fits, fits


def test_session_refuses_a_program_that_does_not_fit_before_writing():
    be = open_backend("sim", SIM, ddr_bytes=(1 << 20) + 8 * ALIGN)     # an 8-page arena
    session = Session(be)
    prog = compile_linear(SIM, *layer(np.random.default_rng(0), 64, 200, 64))
    with pytest.raises(ArenaFull, match="bytes asked"):
        session.load(prog, "big")
    assert be.traffic.to_ddr == 0 and not session.arena.buffers


# ---------------------------------------------------------------- backend interface, on sim and pynq

@pytest.fixture(params=["sim", "pynq"])
def backend(request):
    if request.param == "pynq":
        pytest.importorskip("pynq")
    be = open_backend(request.param, SIM)
    yield be
    be.close()


def test_backend_ddr_registers_and_traffic(backend):
    data = np.arange(300, dtype=np.uint16).view(np.uint8)
    addr = backend.ddr_base + 0x2000
    backend.write(addr, data)
    assert np.array_equal(backend.read(addr, data.size), data)
    assert backend.traffic.to_ddr == backend.traffic.from_ddr == data.size
    assert backend.read_reg(isa.REG["CONFIG"]) == isa.config_word(SIM)
    with pytest.raises(ValueError, match="outside"):
        backend.write(backend.ddr_base + backend.ddr_bytes - 2, data)


def test_loaded_program_reruns_on_new_data_weights_written_once(backend):
    rng = np.random.default_rng(3)
    a, b, bias, mult, shift = layer(rng, 9, 40, 20)
    prog = compile_linear(SIM, a, b, bias, mult, shift)
    session = Session(backend)
    loaded = session.load(prog, "fc")
    setup = backend.traffic.snapshot()
    weights = sum(size for r, (_, size) in prog.regions.items() if prog.ROLES[r] in ("weight", "program", "output"))
    assert setup.to_ddr == weights
    for seed in (1, 2):                  # new activations, same program and weights: no recompile, no rewrite
        a2 = np.random.default_rng(seed).integers(-128, 128, a.shape).astype(np.int8)
        before = backend.traffic.snapshot()
        loaded.write("A", compile_linear(SIM, a2, b, bias, mult, shift).region("A"))
        loaded.run()
        assert np.array_equal(loaded.output(), gemm(a2, b, bias, mult, shift))
        moved = backend.traffic.since(before)
        assert moved.to_ddr == prog.regions["A"][1] and moved.from_ddr == prog.regions["out"][1]
    loaded.free()
    assert not session.arena.buffers


def test_a_program_reading_pinned_slots_in_turn_keeps_a_list_per_placement(backend):
    """Session.pin (a memory bank's ring slots, read in turn): a program bound to pinned buffers keeps a
    descriptor list per placement of them (up to ALTERNATES x Session.placements). A placement met for the first
    time has its list written whole, one met before is relinked by writing nothing, and every run reads the slot its
    placement names; a placement of no pinned buffer met for the first time takes the least recently used list and
    rewrites only the descriptors that differ; a program bound to no pinned buffer keeps one list while no
    placement recurs."""
    rng = np.random.default_rng(4)
    a, b, bias, mult, shift = layer(rng, 9, 40, 20)
    prog = compile_linear(SIM, a, b, bias, mult, shift)
    session = Session(backend)
    slots = {}
    for i in range(4):
        slots[f"slot{i}"] = rng.integers(-128, 128, a.shape).astype(np.int8)
        session.buffer(f"slot{i}", prog.regions["A"][1])
        backend.write(session.arena[f"slot{i}"].addr, compile_linear(SIM, slots[f"slot{i}"], b, bias, mult,
                                                                     shift).region("A"))
    session.pin(["slot0", "slot1", "slot2"], 3)
    loaded = session.load(prog, "fc", bind={"A": "slot0"})
    whole = prog.regions["descriptors"][1]

    def step(slot):
        written = loaded.rebind({"A": slot})
        loaded.run()
        assert np.array_equal(loaded.output(), gemm(slots[slot], b, bias, mult, shift)), slot
        return written
    assert [step(s) for s in ("slot0", "slot1", "slot2")] == [0, whole, whole]     # slot0's list: the loaded one
    free = session.arena.free_bytes
    for _ in range(2):                   # the ring wraps: every placement met before
        assert [step(s) for s in ("slot0", "slot1", "slot2")] == [0, 0, 0]
    assert session.arena.free_bytes == free
    moved = step("slot3")               # not pinned: a fourth placement, in the least recently used list (slot0's)
    assert 0 < moved < whole and session.arena.free_bytes == free
    assert [step(s) for s in ("slot2", "slot0")] == [0, whole]      # slot0's list was taken: a new one
    loaded.free()
    other = session.load(prog, "other", bind={"A": "slot3"})
    session.buffer("act", prog.regions["A"][1])
    free = session.arena.free_bytes
    assert 0 < other.rebind({"A": "act"}) < whole and session.arena.free_bytes == free     # one list, relinked


def test_a_program_bound_to_alternating_buffers_keeps_a_list_for_each(backend):
    """A program rebound to buffers whose placements alternate (a video frame's activations while the last frame's
    features stay in DDR) relinks in place the first time a placement changes, keeps a second list once a placement
    comes back (written whole), and from then on relinks nothing (Session.relinks) and writes no descriptor; a third
    placement takes the least recently used list."""
    rng = np.random.default_rng(5)
    a, b, bias, mult, shift = layer(rng, 9, 40, 20)
    prog = compile_linear(SIM, a, b, bias, mult, shift)
    session = Session(backend)
    inputs = {}
    for name in ("x", "y", "z"):
        inputs[name] = rng.integers(-128, 128, a.shape).astype(np.int8)
        session.buffer(name, prog.regions["A"][1])
        backend.write(session.arena[name].addr, compile_linear(SIM, inputs[name], b, bias, mult, shift).region("A"))
    loaded = session.load(prog, "fc", bind={"A": "x"})
    whole = prog.regions["descriptors"][1]

    def step(name):
        relinks, written = session.relinks, loaded.rebind({"A": name})
        loaded.run()
        assert np.array_equal(loaded.output(), gemm(inputs[name], b, bias, mult, shift)), name
        return written, session.relinks - relinks
    first = step("y")                                   # a new placement: x's list relinked in place
    assert 0 < first[0] < whole and first[1] == 1
    assert step("x") == (whole, 1)                      # x's placement recurs: a list of its own
    free = session.arena.free_bytes
    assert [step(n) for n in ("y", "x", "y", "x")] == [(0, 0)] * 4
    assert session.arena.free_bytes == free
    third = step("z")                                   # a third: the least recently used list (y's) relinked
    assert 0 < third[0] < whole and third[1] == 1 and session.arena.free_bytes == free
    assert step("x") == (0, 0)


def test_backend_hang_resets_and_raises(backend):
    backend.timeout_s = 0.2
    session = Session(backend)
    loaded = session.load(compile_linear(SIM, *layer(np.random.default_rng(1), 4, 8, 8)), "fc")
    sync = isa.pack_descriptor(opcode=isa.OPCODES["SYNC"], wait_store=9)
    backend.write(loaded.addresses["descriptors"], np.frombuffer(sync, np.uint8))
    with pytest.raises(AcceleratorError, match=r"hung: not done after 0.2 s.*DESC_DONE=0.*reset") as err:
        loaded.run()
    assert err.value.timed_out and err.value.regs["STATUS"] & isa.STATUS_BUSY
    assert backend.read_reg(isa.REG["STATUS"]) == 0


@pytest.mark.rtl
def test_rtl_session_keeps_ddr_between_programs():
    """One Verilator run serves several programs; weights written once stay in its AXI RAM."""
    rng = np.random.default_rng(9)
    a, b, bias, mult, shift = layer(rng, 9, 40, 20)
    with open_backend("rtl", SIM, ddr_bytes=1 << 22, stall=0.2) as be:
        session = Session(be)
        first = session.load(compile_linear(SIM, a, b, bias, mult, shift), "fc")
        other = session.load(compile_linear(SIM, *layer(rng, 5, 9, 11)), "other")
        other.write_inputs()
        other.run()
        for seed in (1, 2):
            a2 = np.random.default_rng(seed).integers(-128, 128, a.shape).astype(np.int8)
            before = be.traffic.snapshot()
            first.write("A", compile_linear(SIM, a2, b, bias, mult, shift).region("A"))
            first.run()
            assert np.array_equal(first.output(), gemm(a2, b, bias, mult, shift))
            assert be.traffic.since(before).to_ddr == first.prog.regions["A"][1]
        assert first.last_run.wall_s > 0 and be.read_reg(isa.REG["CONFIG"]) == isa.config_word(SIM)


# ---------------------------------------------------------------- binding

def test_link_places_buffers_anywhere_and_checks_use_the_buffer_table():
    prog = compile_linear(SIM, *layer(np.random.default_rng(2), 5, 9, 11))
    far = {r: 0x40_0000 + i * 0x10_0000 for i, r in enumerate(prog.regions)}
    numeric, raw = link(prog.symbolic, far)
    loads = [d for d in numeric if d["opcode"] == isa.OPCODES["LOAD"]]
    assert all(far["A"] <= d["dram_addr"] < far["params"] + 0x10_0000 for d in loads)
    assert raw.size == 32 * len(prog.symbolic)
    with pytest.raises(LinkError, match="names buffer 'out', which is not bound"):
        link(prog.symbolic, {r: a for r, a in far.items() if r != "out"})
    # The columns a compiled linear shares with its shape's programs relink in NumPy to the same bytes.
    assert isinstance(prog.symbolic, ColumnDescriptors)
    for where in (far, {r: 0x20_0000 + 0x1000 * i for i, r in enumerate(reversed(prog.regions))}):
        assert np.array_equal(link_words(prog.symbolic, where), link(list(prog.symbolic), where)[1])
    with pytest.raises(LinkError, match="names buffer 'out', which is not bound"):
        link_words(prog.symbolic, {r: a for r, a in far.items() if r != "out"})
    # An access that runs from its buffer into the next is refused, naming the buffer.
    session = Session(open_backend("sim", SIM))
    bad = [dict(d) for d in prog.descriptors]
    i = next(j for j, d in enumerate(bad) if d["opcode"] == isa.OPCODES["LOAD"] and d["target"] == isa.TARGETS["A"])
    bad[i]["count"] = 200
    with pytest.raises(DescriptorError, match=r"source .* runs outside the buffer 'A'"):
        session.load(prog, "fc", descriptors=bad)
    assert not session.arena.buffers          # the failed load gave its buffers back


# ---------------------------------------------------------------- the chain in DDR

def check_chain(backend_name, spec=ChainSpec(), cfg=CHAIN_CFG, **options):
    session = Session(open_backend(backend_name, cfg, **options))
    try:
        chain = Chain(session, ChainWeights.random(spec))
        assert chain.setup_traffic.from_ddr == 0
        rng = np.random.default_rng(7)
        for _ in range(2):
            x = rng.integers(-128, 128, (spec.channels_in, spec.height, spec.width)).astype(np.int8)
            y = chain.run(x)
            want = chain.golden(x)
            assert np.array_equal(y, want) and want.std() > 2          # bit-exact on a non-trivial result
            # Per run only the chain's input and final output cross (planar maps with their margins).
            assert chain.last_traffic.to_ddr == chain.x_layout.size
            assert chain.last_traffic.from_ddr == chain.programs["depthwise"].out_layout.size
        return chain
    finally:
        session.close()


@pytest.mark.parametrize("backend_name,heads", [("sim", 1), ("sim", 2), ("pynq", 1)])
def test_chain_stays_in_ddr_bit_exact(backend_name, heads):
    if backend_name == "pynq":
        pytest.importorskip("pynq")
    chain = check_chain(backend_name, ChainSpec(heads=heads))
    assert chain.setup_bytes["weights"] > 0 and [r.descriptors for r in chain.last_runs]


@pytest.mark.parametrize("backend_name,sim_mode", [("sim", "fast"), ("sim", "checked"), ("pynq", None)])
def test_chain_on_a_non_square_array(backend_name, sim_mode):
    """kv260's 16 x 32 array: query tiles of 16 tokens are loaded from token tiles of 32, the relayout
    transposes with two selection tiles (docs/runtime.md)."""
    if backend_name == "pynq":
        pytest.importorskip("pynq")
    spec = ChainSpec(width=WIDE_CFG.cols)
    chain = check_chain(backend_name, spec, WIDE_CFG, sim_mode=sim_mode)
    if backend_name == "sim":       # fast: every step's data computed whole (two runs of six programs)
        assert chain.session.backend.model.fast_runs == (12 if sim_mode == "fast" else 0)


@pytest.mark.rtl
@pytest.mark.slow
def test_chain_on_rtl_bit_exact_one_session():
    """Every engine's program in one Verilator session, on the smallest array the chain runs on (8 x 16:
    a bench16 build took ~6 min; the engines are the same, the query tiles split as on kv260)."""
    check_chain("rtl", cfg=mid_overlay())


# ---------------------------------------------------------------- the CLI

def test_cli_sim_chain(capsys):
    from sw.cli import main
    assert main(["sim", "chain", "--backend", "sim", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "run 0: bit-exact against golden; 16,896 bytes to DDR, 16,896 from DDR" in out
    assert "once per session:" in out and "weights 9,472" in out


@pytest.mark.parametrize("argv,match", [(["--preset", "sim"], "whole 8-byte AXI beats"),
                                        (["--size", "16x12"], "multiple of the array's 16")])
def test_cli_sim_chain_refuses_clearly(argv, match, capsys):
    from sw.cli import main
    assert main(["sim", "chain", *argv]) == 1
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [(["--size", "16"], "HxW"),
                                        (["--preset", "ulx3s-gemm"], "no attention, depthwise engine")])
def test_cli_sim_chain_usage_errors(argv, match, capsys):
    from sw.cli import main
    with pytest.raises(SystemExit) as e:
        main(["sim", "chain", *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_driver_drops_programs_never_run_again_first():
    """A full program cache drops the least recently used of the programs not run again since their load
    before any that was (a frame's programs repeat in order: recency alone would drop each before its use)."""
    from sw.runtime.driver import Driver
    rng = np.random.default_rng(6)
    drv = Driver(SIM, "sim")
    drv.CACHED_PROGRAMS = 2
    a, *weights = layer(rng, 9, 40, 20)
    others = [layer(rng, 9, 40, 20)[1:] for _ in range(2)]
    for w in (weights, weights, *others):          # the first one twice, then two seen once
        drv.linear(a, *w)
    before = drv.program_bytes
    assert np.array_equal(drv.linear(a, *weights), gemm(a, *weights))
    assert drv.program_bytes == before                # still loaded: its weights not written again


def test_driver_repeated_layer_writes_only_its_input():
    from sw.runtime.driver import Driver
    rng = np.random.default_rng(4)
    a, b, bias, mult, shift = layer(rng, 9, 40, 20)
    drv = Driver(SIM, "sim")
    assert np.array_equal(drv.linear(a, b, bias, mult, shift), gemm(a, b, bias, mult, shift))
    a2 = rng.integers(-128, 128, a.shape).astype(np.int8)
    before = drv.device.traffic.snapshot()
    assert np.array_equal(drv.linear(a2, b, bias, mult, shift), gemm(a2, b, bias, mult, shift))
    prog = drv.compile(a2, b, bias, mult, shift)
    moved = drv.device.traffic.since(before)
    assert moved.to_ddr == prog.regions["A"][1] and moved.from_ddr == prog.regions["out"][1]
    b[0, 0] ^= 1                                                  # other weights: loaded afresh
    assert np.array_equal(drv.linear(a2, b, bias, mult, shift), gemm(a2, b, bias, mult, shift))
    assert len(drv.session.arena.buffers) == 2 * len(prog.regions)
    b[0, 1] ^= 1                       # keep=False (weights of one call: the mask product's): freed after its run
    assert np.array_equal(drv.linear(a2, b, bias, mult, shift, keep=False), gemm(a2, b, bias, mult, shift))
    assert len(drv.session.arena.buffers) == 2 * len(prog.regions) and len(drv._cache) == 2


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize("heads", [1, 3])
def test_token_tile_layout_round_trip_and_offsets(heads):
    from sw.runtime.layout import TokenTileLayout
    lay = TokenTileLayout(6, 2, 16, 8, heads=heads)
    x = np.arange(6 * 2 * 16).reshape(6, 2, 16).astype(np.int8)
    raw = lay.pack(x)
    assert raw.size == lay.size and np.array_equal(lay.unpack(raw), x)
    for c, y, xx in [(0, 0, 0), (5, 1, 15), (2, 0, 9), (3, 1, 3)]:
        assert raw.view(np.int8)[lay.offset(c, y, xx)] == x[c, y, xx]
    assert lay.offset(1, 0, 0) - lay.offset(0, 0, 0) == lay.channel_pitch
    assert lay.offset(0, 1, 0) - lay.offset(0, 0, 0) == lay.row_pitch
    if heads > 1:      # head 1 starts after all of head 0's tiles (the attention program's head-major regions)
        assert lay.offset(lay.head_dim, 0, 0) == lay.tokens * lay.head_dim


@pytest.mark.parametrize("heads", [1, 2])
def test_relayout_program_transposes_chunks_to_planes_on_the_overlay(heads):
    from sw.compile.conv import FmapLayout
    from sw.runtime.layout import compile_chunks_to_planar
    cfg = CHAIN_CFG
    c, h, w = 64, 2, 16
    tokens = np.random.default_rng(5).integers(-128, 128, (h * w, c)).astype(np.int8)
    # chunk-major per head: (chunk j, head, token, C), channel = head x d + j x C + i
    d = c // heads
    chunked = tokens.reshape(h * w, heads, d // cfg.cols, cfg.cols).transpose(2, 1, 0, 3).reshape(-1)
    prog = compile_chunks_to_planar(cfg, c, h, w, heads=heads)
    session = Session(open_backend("sim", cfg))
    loaded = session.load(prog, "relayout")
    loaded.write("in", chunked.view(np.uint8))
    loaded.run()
    want = np.ascontiguousarray(tokens.T).reshape(c, h, w)
    assert np.array_equal(loaded.output(), want)
    assert loaded.read("out").size == FmapLayout(c, h, w, cfg.cols).size


def test_chain_that_does_not_fit_fails_before_writing():
    be = open_backend("sim", CHAIN_CFG, ddr_bytes=(1 << 20) + 16 * ALIGN)
    with pytest.raises(ArenaFull, match="bytes asked"):
        Chain(Session(be), ChainWeights.random(ChainSpec()))
    assert be.traffic.to_ddr == 0


def test_a_list_relinked_to_the_same_buffers_is_checked_once(monkeypatch):
    """Session._link checks a descriptor list once per (bytes, buffer table, runs): a program relinked to
    buffers at the addresses it had before skips them; one at new addresses, or that fails, is checked (a
    placement that comes back has a list of its own, at its own address: checked once)."""
    from sw.runtime import session as S
    rng = np.random.default_rng(5)
    prog = compile_linear(SIM, *layer(rng, 9, 40, 20))
    session = Session(open_backend("sim", SIM))
    calls = []
    check = S.check_descriptors
    monkeypatch.setattr(S, "check_descriptors", lambda *a: (calls.append(1), check(*a))[1])
    session.buffer("x", prog.regions["A"][1])
    loaded = session.load(prog, "fc", bind={"A": "x"})
    session.buffer("y", prog.regions["A"][1])
    loaded.rebind({"A": "y"})                   # new addresses: checked
    session.free("x")
    session.buffer("x2", prog.regions["A"][1])  # at x's address again: a second list (LoadedProgram.rebind)
    loaded.rebind({"A": "x2"})
    assert len(calls) == 3
    assert loaded.rebind({"A": "y"}) == 0 and loaded.rebind({"A": "x2"}) == 0 and len(calls) == 3    # both kept
    links = []
    monkeypatch.setattr(S, "link_words", lambda *a: (links.append(1), link_words(*a))[1])
    session.free("x2")
    session.buffer("x3", prog.regions["A"][1])  # where x2 was, as large: the list the last link made, no link
    assert loaded.rebind({"A": "x3"}) == 0 and not links and loaded.buffers["A"] == "x3"
    session.free("y")
    session.buffer("z", 64)                     # too small for A: refused before any check
    with pytest.raises(ValueError, match="needs"):
        loaded.rebind({"A": "z"})
    assert len(calls) == 3
