"""SAM 2 end to end on the rtl backend (the generated overlay Verilog under Verilator): the `micro` model
(golden_model.config.SCALED_CONFIGS: tiny's graph code and op kinds at a few channels, 64 px) clicked on
frame 0 and tracked over 3 frames on preset sim, so the image path (image encoder, prompt encoder, mask
decoder) runs three times and the memory encoder and memory attention with it. Every node the overlay
runs equals the host integer tracker's (VideoIntRunner), the logits equal the sim backend's, bit for bit.

Verilator through cocotb runs ~10^4 cycles a second unloaded: the track is ~0.56 M cycles (figures in
docs/overlay-run.md, section rtl), one Verilator session for the whole test."""
from __future__ import annotations

import numpy as np
import pytest

from golden_model.config import load_config
from golden_model.quant.builder import random_model
from golden_model.quant.quantize import calibrate
from golden_model.quant.video import (VideoIntRunner, build_full_graph, calibrate_video, graph_video_predictor,
                                      quantize_video, shifted_frames)
from hw.config import preset
from sw.runtime.backend import Backend
from sw.runtime.video_exec import VideoGraphExecutor, overlay_video_predictor

from tests.test_video_exec import _digests, _fused_outputs

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
    cfg = preset("sim")
    model = random_model("micro", seed=0)
    size = model.image_size
    photo = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    graph = build_full_graph(model)
    stats = calibrate(graph, [photo], prompts_per_image=1)
    calibrate_video(graph, [photo], stats, frames_per_video=2)
    qm = quantize_video(graph, stats, key_tile=cfg.cols, preset=cfg.name)
    return qm, cfg, shifted_frames(photo, FRAMES), [size * 0.45, size * 0.55]


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
    expected = _fused_outputs(ref_nodes, ex.fused)
    assert len(seen["rtl"]) == len(expected)
    assert [a[0] for a, b in zip(seen["rtl"], expected) if a != b] == []       # node by node, every frame
    assert seen["rtl"] == seen["sim"]
    on = {(r.where, r.op) for r in ex.records.values() if r.where not in ("host", "layout")}
    assert on == ENGINE_KINDS
    assert all(ex.records[n].where == "attention" for n in (WINDOWED, Q_POOLED, GLOBAL))
    assert cycles["rtl"] > 0 and cycles["sim"] > 0
    print(f"\nmicro SAM 2, {FRAMES}-frame track on preset sim: rtl {cycles['rtl']:,} cycles "
          f"(sim's cycle model {cycles['sim']:,})")
