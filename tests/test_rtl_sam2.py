"""SAM 2 end to end on the rtl backend (the generated overlay Verilog under Verilator): the `micro` model
(golden_model.config.SCALED_CONFIGS: tiny's graph code and op kinds at a few channels, 64 px) clicked on
frame 0 and tracked over 3 frames on preset sim, so the image path (image encoder, prompt encoder, mask
decoder) runs three times and the memory encoder and memory attention with it. Every node the overlay
runs equals the host integer tracker's (VideoIntRunner), the logits equal the sim backend's, bit for bit.

And every kind of engine program of the full-size tiny graph (1024 px, image and video stages), compiled
for preset sim on a sample of its tiles, gives the same bytes on rtl as on sim.

Verilator through cocotb runs ~10^4 cycles a second unloaded: the track is ~0.56 M cycles, the program
kinds ~0.21 M (figures in docs/overlay-run.md, section rtl); one Verilator session per test."""
from __future__ import annotations

import numpy as np
import pytest

from golden_model.config import load_config
from golden_model.quant.builder import random_model
from golden_model.quant.video import VideoIntRunner, graph_video_predictor
from hw.config import preset
from sw.runtime.backend import Backend
from sw.runtime.video_exec import VideoGraphExecutor, overlay_video_predictor

from tests.test_video_exec import _digests, _fused_outputs, micro_video_case

FRAMES = 3
#: every kind of node the overlay runs in the track on preset sim, by the placement rule: (engine, op)
ENGINE_KINDS = {("attention", "attention"), ("conv", "conv"), ("depthwise", "depthwise"), ("gemm", "linear"),
                ("gemm", "conv_transpose"), ("gemm", "mask_product"), ("gemm", "gelu"), ("vector", "add"),
                ("vector", "gelu"), ("vector", "layernorm"), ("vector", "maxpool2x2"), ("vector", "rescale"),
                ("vector", "rope"), ("vector", "upsample2x")}
#: the image encoder's attentions the engine must take: windowed, q-pooled (stage 2's first block) and global
WINDOWED, Q_POOLED, GLOBAL = "enc.blocks.0.attn.sdpa", "enc.blocks.1.attn.sdpa", "enc.blocks.3.attn.sdpa"


def test_micro_config_is_tiny_scaled_down():
    """micro keeps tiny's structure (stage count, q-pooling, a global block, every memory module) at a
    few channels and 64 px; it is no official size (the CLI does not offer it)."""
    tiny, micro = load_config("tiny"), load_config("micro")
    t, m = tiny.image_encoder.trunk, micro.image_encoder.trunk
    assert len(m.stages) == len(t.stages) and m.q_pool == t.q_pool and m.global_att_blocks == (3,)
    assert m.channel_list == (64, 32, 16, 8) and micro.image_encoder.neck.d_model == 32
    assert micro.image_size == 64 and micro.options["num_maskmem"] == 3
    assert micro.memory_attention["num_layers"] == 1 and micro.memory_encoder["out_dim"] == 16
    model = random_model("micro", seed=0)
    assert model.tracker.cfg.hidden_dim == 32 and model.tracker.cfg.mem_dim == 16


@pytest.fixture(scope="module")
def micro_case():
    return micro_video_case(FRAMES)


def _track(predictor, frames, click):
    state = predictor.init_state(frames)
    predictor.add_new_points_or_box(state, 0, 1, points=[click], labels=[1])
    return [logits for _, _, logits in predictor.propagate_in_video(state, 0, len(frames) - 1)]


@pytest.mark.slow
@pytest.mark.rtl
def test_micro_sam2_image_path_and_track_on_rtl_equal_sim_and_host(micro_case, monkeypatch):
    qm, cfg, frames, click = micro_case
    ref_nodes: list = []
    ref = _track(graph_video_predictor(qm.graph, VideoIntRunner(qm), _digests(ref_nodes)), frames, click)
    cycles = {"sim": 0, "rtl": 0}
    run = Backend.run

    def counted(be, *args):
        c = run(be, *args)
        cycles[be.name] += c
        return c
    monkeypatch.setattr(Backend, "run", counted)
    got, seen, executors = {}, {}, {}
    for backend in ("sim", "rtl"):
        seen[backend] = []
        ex = executors[backend] = VideoGraphExecutor(qm, cfg, backend)
        try:
            got[backend] = _track(overlay_video_predictor(qm, ex, observe=_digests(seen[backend])), frames, click)
        finally:
            ex.driver.close()
    ex = executors["rtl"]
    assert len(got["rtl"]) == len(ref) == FRAMES
    for host, sim, rtl in zip(ref, got["sim"], got["rtl"]):
        np.testing.assert_array_equal(rtl, sim)
        np.testing.assert_array_equal(rtl, host)
    expected = _fused_outputs(ref_nodes, ex)
    assert len(seen["rtl"]) == len(expected)
    assert [a[0] for a, b in zip(seen["rtl"], expected) if a != b] == []       # node by node, every frame
    assert seen["rtl"] == seen["sim"]
    on = {(r.where, r.op) for r in ex.records.values() if r.where not in ("host", "layout")}
    assert on >= ENGINE_KINDS
    assert all(ex.records[n].where == "attention" for n in (WINDOWED, Q_POOLED, GLOBAL))
    assert cycles["rtl"] > 0 and cycles["sim"] > 0
    print(f"\nmicro SAM 2, {FRAMES}-frame track on preset sim: rtl {cycles['rtl']:,} cycles "
          f"(sim's cycle model {cycles['sim']:,})")


# ---------------------------------------------------------------- every program kind of the full-size tiny graph

def _tiny_kinds() -> dict:
    """The full-size tiny graph's engine nodes (image path at 1024 px, and the video stages), one per program
    kind: {kind: Layer}. A kind is what shapes the program beyond its row count: the op and its kernel,
    stride, padding, heads, K (reduction length), channels or row width."""
    from sw.perf.layers import image_layers, video_layers
    layers = image_layers("tiny") + video_layers("tiny")
    gelu_inputs = {x.inputs[0] for x in layers if x.op == "gelu" and x.inputs}
    kinds: dict = {}
    for x in layers:
        a, i = x.attrs, x.in_shapes[0] if x.in_shapes else ()
        if x.op == "linear" or (x.op == "conv" and a.get("k") == 1):
            key = ("linear_gelu" if x.output in gelu_inputs else "linear", i[-1])
        elif x.op == "mask_product":
            key = (x.op, i[-1])
        elif x.op == "conv_transpose":
            key = (x.op, i[-1], a["k"])
        elif x.op in ("conv", "depthwise"):
            key = (x.op, i[-1], a["k"], a.get("stride", 1), a.get("padding", 0))
        elif x.op == "attention":
            heads = a.get("heads", 1)
            key = (x.op, heads, i[-1] // heads, x.in_shapes[1][-2] != i[-2])     # q-pooled: fewer queries
        elif x.op in ("layernorm", "gelu", "add", "rescale", "rope", "maxpool2x2", "upsample2x"):
            key = (x.op, i[-1])
        else:
            continue
        kinds.setdefault(key, x)
    return kinds


def _quant(rng, n, k):
    """Per-channel requantisation of a K-long int8 dot product to a spread-out int8."""
    return (rng.integers(1 << 13, 1 << 14, n), np.full(n, 21 + int(np.log2(k)) // 2),
            rng.integers(-(1 << 12), 1 << 12, n))


def _reduced_call(kind, layer, cfg, rng):
    """(driver method, args, kwargs): the kind's program on random int8 data, a sample of its tiles (a few
    tiles of rows or output pixels, of output channels, of query rows and key tiles, of vector rows); the
    reduction length K, kernels, strides, heads, head and row widths as the layer's."""
    from golden_model import intvec as V
    from golden_model.intattn import AttentionQuant
    from golden_model.memory_attention import axial_rope

    def i8(*shape):
        return rng.integers(-128, 128, shape).astype(np.int8)
    op = kind[0]
    rows = 2 * cfg.rows
    if op in ("linear", "linear_gelu", "mask_product"):
        k = kind[1]
        n = 4 if op == "mask_product" else min(layer.w_shape[0] if layer.w_shape else k, 2 * cfg.cols)
        if op == "mask_product":
            return "linear", (i8(rows, k), i8(k, n)), dict(out_int32=True)
        mult, shift, bias = _quant(rng, n, k)
        lut = V.LutParams.gelu(0.05, 0.02) if op == "linear_gelu" else None
        return "linear", (i8(rows, k), i8(k, n), bias, mult, shift), dict(lut=lut)
    if op == "conv_transpose":
        _, cin, k = kind
        cout = min(layer.w_shape[1], cfg.cols // (k * k) or 1)      # N = cout k k: a tile of columns
        mult, shift, bias = _quant(rng, cout, cin)
        return "conv_transpose2d", (i8(cin, 2, 2), i8(cin, cout, k, k), bias, mult, shift), dict(stride=k)
    if op in ("conv", "depthwise"):
        _, cin, k, s, p = kind
        cout = layer.out_shape[-1] if op == "depthwise" else min(layer.out_shape[-1], 2 * cfg.cols)
        side = 3 * s + k - 2 * p                       # 4 x 4 output pixels
        w = i8(cout, 1 if op == "depthwise" else cin, k, k)
        mult, shift, bias = _quant(rng, cout, k * k * (1 if op == "depthwise" else cin))
        method = "depthwise_conv2d" if op == "depthwise" else "conv2d"
        return method, (i8(cin, side, side), w, bias, mult, shift), dict(stride=s, padding=p)
    if op == "attention":
        _, heads, d, pooled = kind
        lk = min(layer.in_shapes[1][-2] * (layer.in_shapes[1][-3] if len(layer.in_shapes[1]) > 3 else 1), 4 * cfg.cols)
        lq = lk // 4 if pooled else 2 * cfg.attn_q_slots
        quant = AttentionQuant.from_scales(0.05, 0.05, 0.05, 0.05, d)
        return "attention", (i8(heads, lq, d), i8(heads, lk, d), i8(heads, lk, d), quant), {}
    d = kind[1]
    if op == "layernorm":
        return "vector", ("layernorm", i8(rows, d), V.LayerNormParams.make(rng.normal(1, .5, d), rng.normal(0, .5, d),
                                                                           0.05, 0.03, 1e-6)), {}
    if op == "gelu":
        return "vector", ("lut", i8(rows, d), V.LutParams.gelu(0.05, 0.02)), {}
    if op == "add":
        return "vector", ("add", i8(rows, d), V.AddParams.make(0.05, 0.04, 0.06)), dict(b=i8(rows, d))
    if op == "rescale":
        return "vector", ("rescale", i8(rows, d), V.RescaleParams.make(0.05, 0.04)), {}
    if op == "rope":                                   # the whole rows of the 64-wide map, 2 of its 64 rows
        end_x = layer.attrs.get("end_x", 64)
        p = V.RopeParams.make(*axial_rope(d, end_x, 2), 0.05, 0.04)
        return "vector", ("rope", i8(2 * end_x, d), p), dict(end_x=end_x)
    if op == "maxpool2x2":
        return "vector", ("maxpool", i8(4, 4, d)), {}
    return "vector", ("upsample", i8(2, 2, d)), {}


@pytest.mark.slow
@pytest.mark.rtl
def test_every_program_kind_of_tiny_on_rtl_equals_sim():
    """Each kind of engine program the full-size tiny graph has, compiled for preset sim with its rows sampled,
    runs on rtl and on sim with the same bits out (one Verilator session)."""
    from sw.runtime.driver import Driver
    cfg = preset("sim")
    kinds = _tiny_kinds()
    assert {k[0] for k in kinds} >= {"linear", "linear_gelu", "mask_product", "conv_transpose", "conv", "depthwise",
                                     "attention", "layernorm", "gelu", "add", "rope", "maxpool2x2", "upsample2x"}
    rng = np.random.default_rng(0)
    calls = {kind: _reduced_call(kind, layer, cfg, rng) for kind, layer in kinds.items()}
    outs, cycles = {}, {}
    for backend in ("sim", "rtl"):
        drv = Driver(cfg, backend)
        try:
            for kind, (method, args, kw) in calls.items():
                outs[backend, kind] = getattr(drv, method)(*args, **kw)
                cycles[backend, kind] = drv.last_run.cycles
        finally:
            drv.close()
    bad = [kind for kind in calls if not np.array_equal(outs["sim", kind], outs["rtl", kind])]
    assert bad == []
    assert all(np.ptp(outs["rtl", kind].astype(np.int64)) > 0 for kind in calls)   # none compared on a constant
    print(f"\n{len(calls)} program kinds of tiny on rtl: {sum(cycles['rtl', k] for k in calls):,} cycles")
