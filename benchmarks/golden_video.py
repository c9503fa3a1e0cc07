"""A steady-state video frame with a full memory bank: golden vs official, same run, same weights.

The bank is what frame 16 of a long video sees: 1 conditioning frame + 6 recent
frames (7 x 64 x 64 memory tokens) and 16 object pointers (64 tokens): 28,736 keys.
Timed: the whole tracking step (image encoder, memory attention, SAM heads, memory
encoder) and memory attention alone (_prepare_memory_conditioned_features).
`python -m benchmarks golden_video` (tiny; SAM2FPGA_BENCH_MODELS=tiny,small for more);
benchmarks/golden.py may also call video_frame_rows().
"""
from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import report

FRAME = 16          # the frame being tracked; frames 1..15 are in the bank, frame 0 is the conditioning frame


def _bank(rng, pos_enc, side=64, mem_dim=64, hidden=256):
    from golden_model.video import to_bfloat16

    def out():
        return {"maskmem_features": to_bfloat16(rng.standard_normal((1, mem_dim, side, side)).astype(np.float32)),
                "maskmem_pos_enc": pos_enc,
                "pred_masks": rng.standard_normal((1, 1, 4 * side, 4 * side)).astype(np.float32),
                "obj_ptr": rng.standard_normal((1, hidden)).astype(np.float32),
                "object_score_logits": np.ones((1, 1), np.float32)}
    return {"cond_frame_outputs": {0: out()}, "non_cond_frame_outputs": {t: out() for t in range(1, FRAME)}}


def _torch_bank(bank):
    import torch
    conv = {}
    for key, frames in bank.items():
        conv[key] = {t: {"maskmem_features": torch.from_numpy(o["maskmem_features"]).to(torch.bfloat16),
                         "maskmem_pos_enc": [torch.from_numpy(np.ascontiguousarray(o["maskmem_pos_enc"]))],
                         "pred_masks": torch.from_numpy(o["pred_masks"]),
                         "obj_ptr": torch.from_numpy(o["obj_ptr"]),
                         "object_score_logits": torch.from_numpy(o["object_score_logits"])}
                     for t, o in frames.items()}
    return conv


def _best(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def video_frame_rows(name: str = "tiny", repeats: int = 2) -> list[dict]:
    import torch

    from golden_model.model import SAM2Model
    from golden_model.video import frame_features
    from tests.golden.oracle import official_model

    official = official_model(name, seed=0, video=True)
    golden = SAM2Model(name, state_dict={k: v.detach().numpy() for k, v in official.state_dict().items()})
    rng = np.random.default_rng(0)
    pos = golden.tracker.memory_encoder.position_encoding(64, 64)[None]
    bank = _bank(rng, pos)
    tbank = _torch_bank(bank)
    img = rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    num_frames = FRAME + 1

    def golden_frame():
        feats = frame_features(golden.forward_image(img))
        return golden.tracker.track_step(FRAME, False, feats, None, None, bank, num_frames)

    def official_frame():
        with torch.inference_mode():
            _, vf, vp, fs = official._prepare_backbone_features(official.forward_image(torch.from_numpy(img)))
            return official.track_step(FRAME, False, vf, vp, fs, None, None, tbank, num_frames)

    feats = frame_features(golden.forward_image(img))
    with torch.inference_mode():
        _, vf, vp, fs = official._prepare_backbone_features(official.forward_image(torch.from_numpy(img)))

    def golden_memattn():
        return golden.tracker.prepare_memory_conditioned_features(FRAME, False, feats.vision_feat, feats.vision_pos,
                                                                  bank, num_frames)

    def official_memattn():
        with torch.inference_mode():
            return official._prepare_memory_conditioned_features(FRAME, False, vf[-1:], vp[-1:], fs[-1:], tbank,
                                                                 num_frames)

    rows = []
    for part, g, o, compare in (
            ("memory attention (28,736 keys)", golden_memattn, official_memattn,
             lambda a, b: np.abs(a - b.numpy()).max() / max(1.0, np.abs(b.numpy()).max())),
            ("whole video frame, full bank", golden_frame, official_frame,
             lambda a, b: max(np.abs(a[k] - b[k].numpy()).max() / max(1.0, np.abs(b[k].numpy()).max())
                             for k in ("pred_masks", "obj_ptr", "maskmem_features")))):
        tg, rg = _best(g, repeats)
        to, ro = _best(o, repeats)
        rows.append({"case": f"{name}: {part}", "golden_s": tg, "official_s": to, "golden/official": tg / to,
                     "max_rel_err": float(compare(rg, ro))})
    return rows


def run() -> None:
    import torch
    torch.set_num_threads(2)
    rows = []
    for name in os.environ.get("SAM2FPGA_BENCH_MODELS", "tiny").split(","):
        rows += video_frame_rows(name.strip())
    report("golden_video", rows,
           notes="Steady-state video frame (frame 16: 1 conditioning + 6 recent memory frames, 16 object "
                 "pointers = 28,736 keys), seeded random weights, best of 2, 2 threads; target golden/official <= 1.5")
