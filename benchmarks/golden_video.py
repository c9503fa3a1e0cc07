"""A steady-state video frame with a full memory bank: golden vs official, same run, same weights.

The bank is what frame 16 of a long video sees: 1 conditioning frame + 6 recent
frames (7 x 64 x 64 memory tokens) and 16 object pointers (64 tokens): 28,736 keys.
Timed: the whole tracking step (image encoder, memory attention, SAM heads, memory
encoder) and memory attention alone (_prepare_memory_conditioned_features).

`python -m benchmarks golden_video` (tiny; SAM2FPGA_BENCH_MODELS=tiny,small for more).
benchmarks/golden.py takes the same cases through `video_setup(model, part)`.
"""
from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import report

FRAME = 16          # the frame being tracked; frames 1..15 are in the bank, frame 0 is the conditioning frame
PARTS = {"memory_attention": "memory attention, full bank (28,736 keys)",
         "frame": "video frame, full bank (encoder + memory attention + heads + memory encoder)"}


def _bank(rng, pos_enc, side=64, mem_dim=64, hidden=256):
    from golden_model.video import to_bfloat16

    def out():
        return {"maskmem_features": to_bfloat16(rng.standard_normal((1, mem_dim, side, side)).astype(np.float32)),
                "maskmem_pos_enc": pos_enc,
                "pred_masks": rng.standard_normal((1, 1, 4 * side, 4 * side)).astype(np.float32),
                "obj_ptr": rng.standard_normal((1, hidden)).astype(np.float32),
                "object_score_logits": np.ones((1, 1), np.float32)}
    return {"cond_frame_outputs": {0: out()}, "non_cond_frame_outputs": {t: out() for t in range(1, FRAME)}}


def video_setup(name: str = "tiny", part: str = "frame"):
    """(golden_fn, official_fn, compare(golden_result, official_result) -> max relative error)."""
    import torch

    from golden_model.model import SAM2Model
    from golden_model.video import frame_features
    from tests.golden.oracle import official_model
    from tests.golden.video_helpers import torch_bank

    if part not in PARTS:
        raise ValueError(f"part must be one of {list(PARTS)}")
    official = official_model(name, seed=0, video=True)
    golden = SAM2Model(name, state_dict={k: v.detach().numpy() for k, v in official.state_dict().items()})
    rng = np.random.default_rng(0)
    bank = _bank(rng, golden.tracker.memory_encoder.position_encoding(64, 64)[None])
    tbank = torch_bank(bank)
    img = rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    num_frames = FRAME + 1

    def rel(a, b):
        b = b.float().numpy()
        return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))

    if part == "frame":
        def golden_fn():
            feats = frame_features(golden.forward_image(img))
            return golden.tracker.track_step(FRAME, False, feats, None, None, bank, num_frames)

        def official_fn():
            with torch.inference_mode():
                _, vf, vp, fs = official._prepare_backbone_features(official.forward_image(torch.from_numpy(img)))
                return official.track_step(FRAME, False, vf, vp, fs, None, None, tbank, num_frames)

        def compare(a, b):
            return max(rel(a[k], b[k]) for k in ("pred_masks", "obj_ptr", "maskmem_features"))
        return golden_fn, official_fn, compare

    feats = frame_features(golden.forward_image(img))
    with torch.inference_mode():
        _, vf, vp, fs = official._prepare_backbone_features(official.forward_image(torch.from_numpy(img)))

    def golden_fn():
        return golden.tracker.prepare_memory_conditioned_features(FRAME, False, feats.vision_feat, feats.vision_pos,
                                                                  bank, num_frames)

    def official_fn():
        with torch.inference_mode():
            return official._prepare_memory_conditioned_features(FRAME, False, vf[-1:], vp[-1:], fs[-1:], tbank,
                                                                 num_frames)
    return golden_fn, official_fn, rel


def rows_for(name: str, repeats: int = 2) -> list[dict]:
    rows = []
    for part, label in PARTS.items():
        g, o, compare = video_setup(name, part)
        tg, to = [], []
        for _ in range(repeats):      # alternate, so background load hits both alike
            t0 = time.perf_counter()
            rg = g()
            tg.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ro = o()
            to.append(time.perf_counter() - t0)
        rows.append({"case": f"{name}: {label}", "golden_s": min(tg), "official_s": min(to),
                     "ratio": min(tg) / min(to), "max_rel_err": compare(rg, ro)})
    return rows


def run() -> None:
    import torch
    torch.set_num_threads(2)
    rows = []
    for name in os.environ.get("SAM2FPGA_BENCH_MODELS", "tiny").split(","):
        rows += rows_for(name.strip())
    report("golden_video", rows,
           notes="Steady-state video frame (frame 16: 1 conditioning + 6 recent memory frames, 16 object "
                 "pointers = 28,736 keys), seeded random weights, best of 2 alternating runs, 2 threads; "
                 "ratio = golden/official, target <= 1.5")
