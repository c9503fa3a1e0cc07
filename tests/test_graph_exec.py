"""The int8 graph on the overlay (sw.runtime.graph_exec): a scaled-down tiny SAM 2 (128 px, seeded random
weights) runs image encoder, prompt encoder and mask decoder node by node on the sim backend, every node
where the preset's placement puts it, and every node's output equals the integer interpreter's."""
import dataclasses
import numpy as np
import pytest

from golden_model.quant.builder import MASK_INPUT
from golden_model.quant.intinterp import IntRunner
from golden_model.quant.predictor import GraphPredictor
from hw.config import preset
from sw.runtime.graph_exec import GraphExecError, GraphExecutor
from sw.runtime.layout import TokenRowLayout

from tests.conftest import SCALED_CLICK as CLICK
from tests.conftest import scaled_quantised as _quantised

STAGES = ("image_encoder", "prompt_encoder", "mask_decoder")


def test_sim_every_node_bit_exact_with_intinterp(scaled):
    """The sim preset: its placement puts many linears on the host (a 4 x 8 array), the rest on every engine.
    With a mask prompt: its branch runs and stands for `src` (one node fewer)."""
    cfg = preset("sim")
    qm = _quantised(scaled, cfg)
    mask = np.random.default_rng(1).normal(0, 8, qm.graph.tensors[MASK_INPUT].shape).astype(np.float32)
    feeds = {"image": GraphPredictor(qm.graph, IntRunner(qm)).image_input(scaled[2]),
             "point_coords": np.array([[CLICK]], np.float32), "point_labels": np.ones((1, 1), np.float32),
             MASK_INPUT: mask}
    ref = IntRunner(qm).run(feeds, stages=STAGES)
    ex = GraphExecutor(qm, cfg, "sim", read_back=True)
    assert ex.check(ex.run(feeds, stages=STAGES), ref) == []
    recs = list(ex.records.values())
    assert len(recs) == sum(n.stage in STAGES for n in qm.graph.nodes) - 1 and "src" not in ex.records
    on_engine = [r for r in recs if r.where not in ("host", "layout")]
    assert {r.where for r in on_engine} == {"gemm", "conv", "attention", "vector"}
    ridden = [r for r in on_engine if r.reason.startswith("fused into")]       # GELUs in their fc1's store
    assert all(r.cycles > 0 and r.calls > 0 and r.ddr_bytes > 0 for r in on_engine if r not in ridden)
    assert all(0 < r.device_s <= r.wall_s for r in on_engine if r not in ridden)    # the runs' part of the node's
    assert ex.table().count(" yes ") == len(recs)


def _programs(result):
    """The programs in a compiler's result (a program, or lists and tuples holding them)."""
    if isinstance(result, (list, tuple)):
        return [p for r in result for p in _programs(r)]
    return [result] if hasattr(result, "symbolic") else []


def test_bench16_segment_equals_int8_host_node_by_node(scaled, monkeypatch):
    """bench16 places every engine op kind of the image path on the overlay; the predictor on the executor
    gives the `--precision int8` masks, scores and logits bit for bit, and every node equals intinterp's.
    Every program it compiles (descriptors emitted as columns: sw.runtime.program.Emitter) packs to the bytes
    hw.isa.pack_descriptor makes of its descriptors one by one, relinks as its descriptor dicts do, and each
    attention's equals the one its Python schedule makes without replaying groups (REPLAY_GROUPS)."""
    from hw import isa
    from sw.compile import attention as attention_compiler
    from sw.compile import linear as linear_compiler
    from sw.runtime import compile_cache
    from sw.runtime.program import ColumnDescriptors, link, link_words
    compiled = []
    get = compile_cache.CompileCache.get

    def recording(self, owner, compiler, *args, **kwargs):
        result = get(self, owner, compiler, *args, **kwargs)
        compiled.append((compiler, args, kwargs, result))
        return result
    monkeypatch.setattr(compile_cache.CompileCache, "get", recording)
    cfg = preset("bench16")
    qm = _quantised(scaled, cfg)
    ex = GraphExecutor(qm, cfg, "sim", read_back=True)
    envs, outs = [], []
    for runner in (IntRunner(qm), ex):
        p = GraphPredictor(qm.graph, runner)
        p.set_image(scaled[2])
        envs.append(p.decode_click(CLICK))
        outs.append(p.predict(point_coords=np.array([CLICK], np.float32), point_labels=np.array([1])))
    assert ex.check(envs[1], envs[0]) == []
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    on_engine = {r.op for r in ex.records.values() if r.where not in ("host", "layout") and r.cycles > 0}
    assert on_engine >= {"linear", "conv", "conv_transpose", "mask_product", "attention", "layernorm", "gelu",
                         "add", "maxpool2x2", "upsample2x"}
    # every MLP's GELU rode in its fc1's store (store_lut), checked bit for bit above through the fc1's output
    fused = [r for r in ex.records.values() if r.op == "gelu" and r.where == "gemm"]
    assert fused and all(r.cycles == 0 and ".mlp." in r.name for r in fused)
    assert all(ex.records[n].holds == g.outputs[0] for n, g in ex.fused.items())
    # the decoder's upscaling chains in DDR: each transposed convolution reads its input in place and leaves its
    # output as the GEMM wrote it (no pixel shuffle: subpixel_order), which the adds, layernorm, GELUs and the
    # mask product read so (the adds their skip feature, in the map's order, run by run); the mask product moves
    # only its B (the hypernetwork tokens) and the logits
    relayed = {n: r.ddr_bytes - r.program_bytes for n, r in ex.records.items()}
    # the image run's outputs stay in DDR for the decoder runs (Residents): none read back, none written again
    # (image_embed's run wrote its constant, once a session; src's second run reads its own in place)
    g = qm.graph
    assert {n: relayed[n] for n in ("dec.up.conv0", "dec.up.conv3", "dec.up.norm1", "dec.up.add_s1", "dec.up.add_s0",
                                    "src", "feat_s0", "feat_s1") if relayed[n]} == {}
    assert relayed["image_embed"] == np.prod(g.tensors["image_embed"].shape)
    m, c = g.tensors["masks"].shape[1], g.tensors["dec.up.gelu2"].shape[-1]
    logits = 4 * np.prod(g.tensors["masks"].shape)          # int32, C / m pixels a row: no padding read
    b_bytes = cfg.cols // m * c * m              # B's diagonal blocks: C / m copies of the c x m tokens (the zeros
    assert relayed["masks"] == logits + b_bytes  # written once a session)
    assert ex.records["masks"].own_bytes == logits + min(b_bytes, m * c * 4)    # at most the float tokens' bytes

    programs = [p for *_, result in compiled for p in _programs(result)]
    assert {type(p).__name__ for p in programs} >= {"Program", "AttentionProgram", "VectorProgram"}, {type(p).__name__ for p in programs}
    assert sum(isinstance(p.symbolic, ColumnDescriptors) for p in programs) > len(programs) // 2
    for prog in programs:
        n = len(prog.descriptors)
        assert prog.image[:n * isa.DESCRIPTOR_BYTES].tobytes() == b"".join(
            isa.pack_descriptor(**d) for d in prog.descriptors)
        where = {r: 0x100_0000 + 0x10_0000 * i for i, r in enumerate(reversed(list(prog.regions)))}
        assert np.array_equal(link_words(prog.symbolic, where), link([dict(d) for d in prog.symbolic], where)[1])
    monkeypatch.setattr(attention_compiler, "REPLAY_GROUPS", False)
    linear_compiler._PLANS.clear()
    attentions = [(c, a, k, r) for c, a, k, r in compiled if any(hasattr(p, "slots") for p in _programs(r))]
    assert attentions
    for compiler, args, kwargs, result in attentions:
        for kept, again in zip(_programs(result), _programs(compiler(*args, **kwargs)), strict=True):
            assert np.array_equal(kept.image, again.image) and kept.descriptors == again.descriptors
            assert [list(d.items()) for d in kept.symbolic] == [list(d.items()) for d in again.symbolic]


def test_element_wise_rows_wider_than_the_engine():
    """lut / add rows past the vector engine's MAX_DIM (tiny's 1,536- and 3,072-wide GELUs) run as narrower
    rows, bit-identical to intvec, and the placement times the commands the compiler emits for them."""
    from golden_model import intvec
    from hw import isa
    from hw.vector.params import MAX_DIM
    from sw.compile import graph as G
    from sw.runtime.driver import Driver
    cfg = preset("sim")
    rng = np.random.default_rng(5)
    x, b = (rng.integers(-128, 128, (3, 2 * MAX_DIM + 512), dtype=np.int8) for _ in range(2))
    drv = Driver(cfg, "sim")
    lut, add = intvec.LutParams.gelu(0.05, 0.02), intvec.AddParams.make(0.08, 0.05, 0.03)
    for op, y, ref in [("gelu", drv.vector("lut", x, lut), intvec.lut(x, lut)),
                       ("add", drv.vector("add", x, add, b=b), intvec.add(x, b, add)),
                       ("add", drv.vector("add", x, add, b=b[0]), intvec.add(x, b[0], add))]:
        np.testing.assert_array_equal(y, ref)
        emitted = [d for d in drv.last_programs[0].descriptors if d["opcode"] == isa.OPCODES["VECTOR"]]
        assert all(d["vec_dim"] <= MAX_DIM for d in emitted)
        if op == "gelu" or len(emitted) == 1:
            planned = G.vector_commands(cfg, op, x.shape)
            assert [d["vec_rows"] for d in emitted] == [c["vec_rows"] for c in planned]
            assert [d["vec_dim"] for d in emitted] == [c["vec_dim"] for c in planned]


def test_key_tile_of_another_preset_is_refused(scaled):
    with pytest.raises(GraphExecError, match="key tile 16.*'sim'.* 8"):
        GraphExecutor(_quantised(scaled, preset("bench16")), preset("sim"))


def test_activations_chain_in_ddr_and_the_arena_is_freed(scaled):
    """kv260's image encoder with its activations chained in DDR: the same outputs as every node's output
    read back (chain=False) with far fewer host <-> DDR bytes; a vector node fed by an engine node moves
    only its program (input read in place, output left in DDR); after the run no activation is left in
    the arena but the outputs a later run reads (Residents, freed with them), and a freed intermediate says
    so when read; a second run rewrites no weights, a third nothing of its programs."""
    cfg = preset("kv260")
    qm = _quantised(scaled, cfg)
    feeds = {"image": GraphPredictor(qm.graph, IntRunner(qm)).image_input(scaled[2])}
    outs, moved = {}, {}
    for chain in (False, True):
        ex = GraphExecutor(qm, cfg, "sim", chain=chain)
        env = ex.run(feeds, stages=("image_encoder",))
        outs[chain] = [np.asarray(env[t]) for t in qm.graph.meta["image_outputs"]]    # chained: read back (counted)
        moved[chain] = sum(r.ddr_bytes for r in ex.records.values())
    for a, b in zip(outs[False], outs[True]):
        np.testing.assert_array_equal(a, b)
    assert moved[True] < 0.8 * moved[False], moved
    norms = [r for r in ex.records.values() if r.op == "layernorm" and r.where == "vector"]
    assert norms and all(0 < r.ddr_bytes == r.program_bytes for r in norms)
    arena = ex.driver.session.arena
    assert len([b for b in arena.buffers if b.startswith("act")]) == len(qm.graph.meta["image_outputs"])
    with pytest.raises(GraphExecError, match="freed after its last reader"):
        np.asarray(env[next(n.outputs[0] for n in qm.graph.nodes if n.name == norms[0].name)])
    del env
    assert not [b for b in arena.buffers if b.startswith("act")]
    # again (a video's next frame): the programs still loaded are relinked, their weights not written again
    first = sum(r.program_bytes for r in ex.records.values())
    again = ex.run(feeds, stages=("image_encoder",))
    for a, t in zip(outs[True], qm.graph.meta["image_outputs"]):
        np.testing.assert_array_equal(a, again[t])
    assert sum(r.program_bytes for r in ex.records.values()) < first / 3
    del again           # its outputs' buffers free again (as GraphPredictor.set_image and a video's next frame do)
    # a third run allocates its activations where the second did: the descriptors in DDR are already right,
    # even with a program loaded in between (a video frame's other stages: activations sit apart, at the top)
    rng = np.random.default_rng(0)
    ex.driver.linear(rng.integers(-5, 5, (40, 32), np.int8), rng.integers(-5, 5, (32, 48), np.int8), out_int32=True)
    ex.run(feeds, stages=("image_encoder",))
    assert sum(r.program_bytes for r in ex.records.values()) == 0
    # a full arena (the 20th activation's buffer refused, and every retry while the Driver drops its kept
    # programs one by one, the one after the last too): the run's activations are read back to the host
    # and the nodes go on from there, same outputs
    from sw.runtime.arena import ArenaFull
    session, calls, refusing = ex.driver.session, [], []
    make = session.buffer

    def refused(name, size, **kw):
        calls.append(name)
        if len(calls) == 20 or refusing:
            refusing[:] = [True] if ex.driver._cache else []
            raise ArenaFull("refused by the test")
        return make(name, size, **kw)
    session.buffer = refused
    spilled = ex.run(feeds, stages=("image_encoder",))
    assert ex.spilled_bytes > 0
    for a, t in zip(outs[True], qm.graph.meta["image_outputs"]):
        np.testing.assert_array_equal(a, spilled[t])


def test_attention_reads_and_writes_token_rows_with_load_t(scaled):
    """bench16 with the transposing LOAD (load_t): the image encoder's attentions read Q, K, V where their
    projections left them (token rows, in place) and leave their output there for the proj, heads merged:
    every node equals intinterp's, and an attention fed by three GEMM projections moves only its program; so
    do the nodes around it that read windows, pooled windows and residuals in place."""
    cfg = preset("bench16")
    assert "load_t" in cfg.engines          # the preset's own transposing LOAD
    qm = _quantised(scaled, cfg)
    feeds = {"image": GraphPredictor(qm.graph, IntRunner(qm)).image_input(scaled[2])}
    ex, stages = GraphExecutor(qm, cfg, "sim", read_back=True), ("image_encoder",)
    assert ex.check(ex.run(feeds, stages=stages), IntRunner(qm).run(feeds, stages=stages)) == []
    writers = {t: n.name for n in qm.graph.nodes for t in n.outputs}
    attn = [(n, ex.records[n.name]) for n in qm.graph.nodes if n.op == "attention" and n.name in ex.records]
    fed = [r for n, r in attn if r.where == "attention" and all(ex.records[writers[t]].where == "gemm"
                                                               for t in n.inputs)]
    assert fed and all(0 < r.ddr_bytes == r.program_bytes for r in fed), [(r.name, r.ddr_bytes) for r in fed]
    assert all("via the host" not in r.reason for _, r in attn)
    # what else stays in DDR: windows that tile their map exactly by addressing (the map's rows kept in window
    # order), a padded partition written once for its three projections, a batch of windows max-pooled in
    # one call, a residual add whose residual is in DDR on the vector engine (not through the store)
    rec = ex.records
    assert rec["enc.blocks.0.window"].ddr_bytes == rec["enc.blocks.1.unwindow"].ddr_bytes == 0
    # stage 2's last block: its unpartition in window order, its residual add writing the map's order
    assert rec["enc.blocks.3.unwindow"].ddr_bytes == 0
    assert rec["enc.blocks.3.res1"].ddr_bytes == rec["enc.blocks.3.res1"].program_bytes
    shared = {n.outputs[0] for n in qm.graph.nodes if n.name in ex.shared}
    readers = [rec[n.name] for n in qm.graph.nodes if set(n.inputs) & shared]
    assert len(readers) > 3 and all(r.ddr_bytes == r.program_bytes for r in readers)
    assert rec["enc.blocks.1.attn.q_pool"].calls == 1
    assert rec["enc.blocks.0.res2"].where == "vector" and rec["enc.blocks.0.res2"].cycles > 0
    assert rec["enc.blocks.0.mlp.fc2"].ddr_bytes == rec["enc.blocks.0.mlp.fc2"].program_bytes
    # the later stages' one padded window: the partition copies the map into it on the vector engine (the window
    # zeroed once: the first run's), the unpartition is addressing, the residual add reads the map inside it
    padded = [n for n in qm.graph.nodes if n.op == "window_partition" and n.attrs["ws"] > qm.graph.tensors[
        n.inputs[0]].shape[1]]
    assert len(padded) == 5 and set(ex.pad_into) == {n.name for n in padded}
    for n in padded:
        block, (_, ws, _, c) = n.name.rsplit(".", 1)[0], qm.graph.tensors[n.outputs[0]].shape
        assert rec[n.name].where == "vector" and rec[n.name].cycles > 0
        assert rec[n.name].ddr_bytes == rec[n.name].program_bytes + TokenRowLayout(ws * ws, c, cfg.cols).size
        assert rec[f"{block}.unwindow"].ddr_bytes == 0
        assert rec[f"{block}.res1"].ddr_bytes == rec[f"{block}.res1"].program_bytes


def test_attention_split_into_calls_fills_one_token_row_tensor(monkeypatch):
    """An attention too big for one program (8 query rows a program here): its calls' STOREs fill one
    token-row buffer, each its own item's rows and head's columns, each reading its own rows of the Q, K, V
    buffers (written once from the host). Equals the integer interpreter's attention."""
    from types import SimpleNamespace

    import sw.compile.attention as ca
    from golden_model.quant.intinterp import INT_OPS
    from sw.runtime import graph_exec
    from sw.runtime.driver import Driver
    cfg = preset("sim")
    assert "load_t" in cfg.engines          # the preset's own transposing LOAD
    monkeypatch.setattr(ca, "max_query_tiles", lambda cfg, lk, d=None, **kw: 2)
    rng = np.random.default_rng(3)
    q, k, v = (rng.integers(-128, 128, (2, n, 32), dtype=np.int8) for n in (19, 21, 21))   # 2 windows, 2 heads
    node = SimpleNamespace(name="a", attrs={"heads": 2}, op="attention")
    r = SimpleNamespace(params={"a": {"quant": np.array([3000, 14, 1 << 28, 30])}}, key_tile=cfg.cols,
                        cached=lambda key, make: make())
    drv = Driver(cfg, "sim")
    y, runs = graph_exec._attention_dev(drv, node, [q, k, v], r)
    assert isinstance(y, graph_exec.DeviceTensor) and len(runs) == 2 * 2 * 3       # items x query chunks
    np.testing.assert_array_equal(np.asarray(y), INT_OPS["attention"](node, [q, k, v], r))
    assert [b for b in drv.session.arena.buffers if b.startswith("act")] == [y.buffer]     # the inputs' freed


@pytest.mark.parametrize("conv_engine", [True, False])
def test_strided_convolution_writes_token_rows_its_readers_read_in_place(scaled, conv_engine):
    """bench16's patch embedding (7 x 7, stride 4) on the conv engine between token rows (sw.compile.graph
    conv_route "planes"): the host writes the frame's pixels into its input planes (the frame's bytes alone),
    the GEMM array writes its output planes as token rows in the window order its reader wants; without the conv
    engine ("patches") a linear over its im2col patches gathered on the host. Either way its output stays in DDR
    as token rows, and the positional add reads it in place (no bytes on a second run: programs kept); every
    node equals intinterp's."""
    cfg = preset("bench16")
    if not conv_engine:
        cfg = dataclasses.replace(cfg, engines=tuple(e for e in cfg.engines if e != "conv"))
    qm = _quantised(scaled, cfg)
    feeds = {"image": GraphPredictor(qm.graph, IntRunner(qm)).image_input(scaled[2])}
    nodes = [n for n in qm.graph.nodes if n.name in ("image_q", "patch_embed", "pos_embed", "enc.blocks.0.norm1")]

    def run(runner):
        env = dict(feeds)
        for n in nodes:
            env[n.outputs[0]] = runner.op_fn(n)(n, [runner.arg(i, env) for i in n.inputs], runner)
        return env
    ref = run(IntRunner(qm))
    ex = GraphExecutor(qm, cfg, "sim", read_back=True)
    for _ in range(2):
        env = ex.chained(nodes, lambda: run(ex))
    assert ex.check(env, ref) == []
    pe, (_, h, w, c) = ex.records["patch_embed"], qm.graph.tensors[nodes[1].outputs[0]].shape
    k = qm.graph.constants[nodes[1].inputs[1]].shape[2]
    assert pe.own_bytes == feeds["image"].size
    # of the bytes written, the fed input's count only where data beside the programs was written (none: 0)
    from sw.runtime.backend import Traffic
    pe_node, pe_args = nodes[1], [env[t] if t in env else qm.graph.constants[t] for t in nodes[1].inputs]
    image_q = env[nodes[1].inputs[0]]
    assert ex._own_bytes(pe_node, pe_args, Traffic(to_ddr=100), 100) == 0
    assert ex._own_bytes(pe_node, pe_args, Traffic(to_ddr=110), 100) == min(10, image_q.nbytes)
    assert ex._own_bytes(pe_node, pe_args, Traffic(to_ddr=10 ** 9), 100) == image_q.nbytes
    if conv_engine:
        assert pe.where == "conv" and pe.calls == 2 and pe.ddr_bytes - pe.program_bytes == feeds["image"].size
        assert pe.reason.endswith("its planes from and to token rows on the GEMM array")
        assert pe.cycles == ex.placements["patch_embed"].cycles        # the placement prices what runs
    else:
        assert pe.where == "gemm" and pe.ddr_bytes - pe.program_bytes == h * w * 3 * k * k
        assert pe.reason.endswith("as a linear over its im2col patches")
    assert ex.records["enc.blocks.0.norm1"].ddr_bytes == h * w * c      # only its output, read back at the end


def test_transposed_convolution_row_order_and_a_run_output_left_in_ddr():
    """A 2 x 2 / 2 transposed convolution's output as the GEMM stores it (input row r's four pixels as four rows)
    is the map in subpixel_order, its input's order refined by 2 x 2 windows; a row op reading a map stored in
    another order takes it run by run (RowRuns.gather puts the map's rows where the stored order has them). A
    Resident: a view transposed and transposed back is the tensor (bound in place), another is not; np.asarray
    reads it once (counted); its buffer goes with its last view."""
    from sw.runtime import graph_exec
    from sw.runtime.device_tensor import (DeviceTensor, Resident, _map_order, _window_order, order_index,
                                          reorder_rows, subpixel_order)
    from sw.runtime.driver import Driver
    from sw.runtime.layout import RowRuns
    h, w = 4, 6
    for order in (None, 2):
        shape = (1, 2 * h, 2 * w, 1)
        o = subpixel_order(order, 2, shape)
        stored = np.arange(h * w) if order is None else order_index(h, w, (order,))     # the input's rows
        gemm = [(2 * (p // w) + dy) * 2 * w + 2 * (p % w) + dx for p in stored for dy in (0, 1) for dx in (0, 1)]
        assert np.array_equal(order_index(2 * h, 2 * w, o if isinstance(o, tuple) else (o,)), gemm)
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 8, 8, 16), dtype=np.int8)
    for order in ((4, 2), 2):
        kept = _window_order(x, order)
        np.testing.assert_array_equal(_map_order(kept, order, x.shape), x)
        runs = RowRuns.gather(reorder_rows(x.shape, None, order), 64)       # the map's rows read where kept
        # _vector_dev's runs, made once per arguments: each order's own, not the last order's
        assert graph_exec._row_runs("gather", x.shape, None, order, 64) == runs
        ws = order if isinstance(order, int) else order[0]
        assert graph_exec._row_runs("windows", 6, 6, ws) == RowRuns.windows(6, 6, ws)
        assert graph_exec._row_runs("unwindows", 8, 8, ws) == RowRuns.unwindows(8, 8, ws)
        assert len(runs.runs) <= 32          # a command per pair of rows at most (2 x 2 windows innermost)
        np.testing.assert_array_equal(runs.spread(x.reshape(64, 16).view(np.uint8), 16).view(np.int8),
                                      kept.reshape(-1))

    drv = Driver(preset("bench16"), "sim")
    layout = TokenRowLayout(64, 16, 16)
    buf = drv.buffer(layout.size).name
    drv.session.backend.write(drv.session.arena[buf].addr, layout.pack(x.reshape(64, 16)))
    t = DeviceTensor(drv, buf, layout, x.shape, "x")
    reads = []
    r = Resident.of(t, lambda t: reads.append(t.layout.size))
    nchw = r.transpose(0, 3, 1, 2)
    assert nchw.shape == (1, 16, 8, 8) and nchw.device(nchw.shape) is None
    assert nchw.transpose(0, 2, 3, 1).device(x.shape) is t
    tokens = nchw.reshape(1, 16, 64).transpose(0, 2, 1).copy()
    assert tokens.reshape(1, 8, 8, 16).device(x.shape) is t and reads == []
    np.testing.assert_array_equal(np.asarray(nchw), x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(tokens[0], x.reshape(64, 16))
    np.testing.assert_array_equal(nchw.astype(np.int32) - 1, x.transpose(0, 3, 1, 2).astype(np.int32) - 1)
    assert reads == [layout.size]                               # read back once
    view = tokens.reshape(1, 8, 8, 16)
    del r, nchw, tokens
    assert buf in drv.session.arena
    del view
    assert buf not in drv.session.arena and t.buffer is None
