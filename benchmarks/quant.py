"""int8 SAM 2 against float: per-node SQNR (worst first), mask IoU and predicted-IoU deltas, host speed.

    python -m benchmarks quant                      # tiny, 1024, estimator percentile, 6 photos x 3 clicks
    python -m benchmarks.quant --model tiny small --estimator max percentile mse [--image-size 256]
    python -m benchmarks.quant --image-size 256 --stages          # which half (encoder / decoder) loses the IoU
    python -m benchmarks.quant --checkpoint sam2.1_hiera_tiny.pt --model tiny       # a real checkpoint
    python -m benchmarks.quant --video [--model tiny small] [--image-size 256] [--frames 12] [--mask-prompts]
    python -m benchmarks.quant --speed [--model tiny] [--image-size 256] [--repeats 2]       # encoder speed only

Calibration: golden_model.quant.calibset.CALIB_PHOTOS (3 clicks each); evaluation: EVAL_PHOTOS (a
disjoint set) x the fixed clicks of golden_model.quant.accuracy.eval_clicks. Weights: seeded random
(seed 0) unless --checkpoint. Tables:
  quant           per node of the first model/estimator: SQNR end to end (int8 graph vs float graph on
                  the first evaluation photo + its centre click) and on its own (float inputs quantised),
                  worst end-to-end first;
  quant-noise-floor (--noise-floor) the float model's own sensitivity: IoU of its masks with white
                  noise of a given SQNR added to the image features;
  quant-stages    (--stages) which half loses the IoU: int8 encoder + float decoder, float encoder + int8
                  decoder, all int8 (IoU median / worst / mean, mean mask-logit SQNR);
  quant-accuracy  per model and estimator: mask IoU (logits > 0) median / worst, the largest predicted-IoU
                  delta, the refined IoU (the click again with the float model's best low-res mask as
                  the mask prompt: the int8 mask branch), and the image-encoder time of the int8
                  reference against the golden float model (same image, same run; a ratio, so machine
                  load hits both).
  --video: quant-video (per model, per frame: mask IoU of the int8 tracker with its int8 memory bank
                  against the golden float tracker, foreground fractions, the float graph's largest
                  logit error against the golden tracker) and quant-video-nodes (SQNR of every video
                  node over the track, worst first), plus the track times. One click on the centre of
                  the first evaluation photo tracked through shifted copies of it; the object-score
                  head is shifted so the click scores +2 on random weights (else the object is absent
                  everywhere); calibration: the calibration photos, image clicks and 4-frame tracks.
                  With --mask-prompts, a second track (rows "mask+correction"): the float click track's
                  frame-0 mask as a mask prompt on frame 0, tracked, then a click on the middle frame
                  (a correction: its tracked logits through the int8 mask branch).
  --speed: quant-speed (per model: the image encoder's wall time, golden float model and int8
                  reference on the same photo, alternated, best of --repeats each, and their ratio:
                  the issue's <= 3x target) and quant-speed-ops (the int8 encoder's time per op kind).
                  Calibration is one photo x one click: the scales do not change the work.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import report

TARGETS = "targets: IoU median >= 0.95, worst >= 0.90, |pred IoU delta| <= 0.02, int8/float time <= 3"


def _model(name, image_size, checkpoint):
    from golden_model.model import SAM2Model
    from golden_model.quant.builder import random_model
    if checkpoint:
        return SAM2Model.from_checkpoint(name, checkpoint)
    return random_model(name, image_size, seed=0)


def _speed(model, qm, image) -> tuple[float, float]:
    """Seconds of set_image (image encoder) for the golden float model and the int8 reference, alternated."""
    from golden_model.predictor import ImagePredictor
    from golden_model.quant.intinterp import IntRunner
    from golden_model.quant.predictor import GraphPredictor
    fp, ip = ImagePredictor(model), GraphPredictor(qm.graph, IntRunner(qm))
    t0 = time.perf_counter()
    fp.set_image(image)
    t1 = time.perf_counter()
    ip.set_image(image)
    return t1 - t0, time.perf_counter() - t1


def run_speed(models=("tiny",), image_size=None, preset="kv260", checkpoint=None, repeats: int = 2) -> None:
    from golden_model.predictor import ImagePredictor
    from golden_model.quant.builder import build_graph
    from golden_model.quant.calibset import CALIB_PHOTOS, EVAL_PHOTOS, skimage_photos
    from golden_model.quant.predictor import GraphPredictor
    from golden_model.quant.quantize import calibrate, quantize
    from hw.config import preset as overlay_preset
    photo = next(iter(skimage_photos(EVAL_PHOTOS[:1]).values()))
    calib = list(skimage_photos(CALIB_PHOTOS[:1]).values())
    rows, op_rows = [], []
    for name in models:
        model = _model(name, image_size, checkpoint)
        graph = build_graph(model)
        qm = quantize(graph, calibrate(graph, calib, prompts_per_image=1), key_tile=overlay_preset(preset).cols,
                      preset=preset)
        per_op: dict[str, float] = {}
        fp, ip = ImagePredictor(model), GraphPredictor(qm.graph, _timed_int_runner(qm, per_op))
        float_s, int_s = [], []
        for _ in range(repeats):        # alternated: load changes hit both
            per_op.clear()
            for p, times in ((fp, float_s), (ip, int_s)):
                t0 = time.perf_counter()
                p.set_image(photo)
                times.append(time.perf_counter() - t0)
            ops = dict(per_op)
        rows.append({"model": name, "image_size": graph.image_size, "float_s": min(float_s), "int8_s": min(int_s),
                     "ratio": min(int_s) / min(float_s), "ratios": " ".join(f"{i / f:.2f}" for f, i in
                                                                            zip(float_s, int_s))})
        total = sum(ops.values())
        op_rows += [{"model": name, "op": op, "int8_s": t, "share": t / total}
                    for op, t in sorted(ops.items(), key=lambda kv: -kv[1])]
    report("quant-speed", rows, notes=f"image encoder (set_image), golden float vs int8 reference, same photo, "
                                      f"alternated, best of {repeats}; ratios: each round's; target int8/float <= 3")
    report("quant-speed-ops", op_rows, notes="the int8 encoder's time per op kind (last round)")


def _timed_int_runner(qm, per_op: dict):
    """An IntRunner adding each node's seconds to per_op[op]."""
    from golden_model.quant.intinterp import IntRunner

    class Timed(IntRunner):
        def op_fn(self, node):
            fn = super().op_fn(node)

            def timed(n, a, r):
                t0 = time.perf_counter()
                y = fn(n, a, r)
                per_op[n.op] = per_op.get(n.op, 0.0) + time.perf_counter() - t0
                return y
            return timed
    return Timed(qm)


def _stage_row(model, est, split, rows) -> dict:
    ious = np.array([r["mask_iou"] for r in rows])
    return {"model": model, "estimator": est, "int8 part": split, "iou_median": float(np.median(ious)),
            "iou_worst": float(ious.min()), "iou_mean": float(ious.mean()),
            "logit_sqnr_db": float(np.mean([r["logit_sqnr_db"] for r in rows]))}


def run(models=("tiny",), estimators=("percentile",), image_size=None, preset="kv260", checkpoint=None,
        n_photos: int = 6, n_prompts: int = 3, noise: bool = False, stages: bool = False) -> None:
    from golden_model.quant.accuracy import (compare_masks, eval_clicks, local_sqnr, node_sqnr, noise_floor,
                                             stage_split)
    from golden_model.quant.builder import build_graph
    from golden_model.quant.calibset import CALIB_PHOTOS, EVAL_PHOTOS, skimage_photos
    from golden_model.quant.quantize import calibrate, quantize
    from hw.config import preset as overlay_preset
    key_tile = overlay_preset(preset).cols
    calib = list(skimage_photos(CALIB_PHOTOS).values())
    photos = skimage_photos(EVAL_PHOTOS[:n_photos])
    first_photo = next(iter(photos.values()))
    summary, node_rows = [], None
    for name in models:
        model = _model(name, image_size, checkpoint)
        graph = build_graph(model)
        if noise:
            report("quant-noise-floor", noise_floor(graph, photos, n_prompts=n_prompts),
                   notes=f"{name}, {graph.image_size} px: float masks with white noise at the image features "
                         "vs clean float masks (how much any quantisation can keep)")
        t0 = time.perf_counter()
        stats = calibrate(graph, calib)
        calib_s = time.perf_counter() - t0
        for est in estimators:
            qm = quantize(graph, stats, est, key_tile, preset)
            if stages:
                split = stage_split(qm, graph, photos, n_prompts)
                report("quant-stages", [_stage_row(name, est, k, [r for r in split if r["split"] == k])
                                        for k in dict.fromkeys(r["split"] for r in split)],
                       notes=f"{name}, {graph.image_size} px, {len(photos)} photos x {n_prompts} clicks")
            rows = compare_masks(qm, graph, photos, n_prompts)
            ious = np.array([r["mask_iou"] for r in rows])
            deltas = np.array([r["pred_iou_delta"] for r in rows])
            refined = np.array([r["refined_iou"] for r in rows])
            float_s, int_s = _speed(model, qm, first_photo)
            summary.append({"model": name, "image_size": graph.image_size, "estimator": est,
                            "weights": "checkpoint" if checkpoint else "random(seed 0)",
                            "cases": len(rows), "iou_median": float(np.median(ious)), "iou_worst": float(ious.min()),
                            "iou_mean": float(ious.mean()), "pred_iou_delta_max": float(deltas.max()),
                            "same_choice": f"{sum(r['same_choice'] for r in rows)}/{len(rows)}",
                            "refined_iou_median": float(np.median(refined)), "refined_iou_worst": float(refined.min()),
                            "float_s": float_s, "int8_s": int_s, "ratio": int_s / float_s, "calib_s": calib_s})
            print(f"{name} {est}: " + ", ".join(f"{r['image']}@{r['click']} {r['mask_iou']:.3f}" for r in rows))
            if node_rows is None:
                click = eval_clicks(first_photo.shape[:2], 1)[0]
                e2e = node_sqnr(qm, graph, first_photo, click)
                alone = local_sqnr(qm, graph, first_photo, click)
                node_rows = sorted(({"node": n.name, "op": n.op, "engine": n.engine, "stage": n.stage,
                                     "sqnr_db": e2e[n.outputs[0]], "alone_db": alone.get(n.outputs[0], "")}
                                    for n in graph.nodes if n.outputs[0] in e2e     # a click: no mask branch
                                    and (qm.graph.tensors[n.outputs[0]].dtype == "int8"
                                         or n.op in ("mask_product", "mlp"))), key=lambda r: r["sqnr_db"])
                node_note = f"{name}, {graph.image_size} px, estimator {est}, photo {next(iter(photos))}"
    report("quant", node_rows, notes="per-node SQNR (dB) int8 vs float, worst first; sqnr_db end to end, "
                                     f"alone_db the node on its own ({node_note})")
    report("quant-accuracy", summary, notes=f"{len(photos)} photos x {n_prompts} clicks, preset {preset} "
                                            f"(key tile {key_tile}); {TARGETS}")


def run_video(models=("tiny",), image_size=None, preset="kv260", checkpoint=None, n_frames: int = 12,
              estimator="percentile", mask_prompts: bool = False) -> None:
    from golden_model.quant.calibset import CALIB_PHOTOS, EVAL_PHOTOS, skimage_photos
    from golden_model.quant.quantize import calibrate
    from golden_model.quant.video import build_full_graph, calibrate_video, quantize_video, shifted_frames
    from golden_model.quant.video_accuracy import compare_tracks, shift_object_score, track
    from golden_model.video import VideoPredictor
    from hw.config import preset as overlay_preset
    key_tile = overlay_preset(preset).cols
    calib = list(skimage_photos(CALIB_PHOTOS).values())
    name0, photo = next(iter(skimage_photos(EVAL_PHOTOS[:1]).items()))
    click = [photo.shape[1] / 2, photo.shape[0] / 2]
    frames = shifted_frames(photo, n_frames)
    rows, node_rows, summary = [], [], []
    for name in models:
        model = _model(name, image_size, checkpoint)
        if not checkpoint:
            shift_object_score(model, frames[0], click)
        graph = build_full_graph(model)
        t0 = time.perf_counter()
        stats = calibrate(graph, calib)
        calibrate_video(graph, calib, stats)
        calib_s = time.perf_counter() - t0
        qm = quantize_video(graph, stats, estimator, key_tile, preset)
        frame_rows, sqnr, times = compare_tracks(qm, model, frames, click, graph)
        runs = [("click", frame_rows, times)]
        if mask_prompts:
            first = track(VideoPredictor(model.tracker), frames[:1], click)[0][0] > 0
            mid = len(frames) // 2
            m_rows, _, m_times = compare_tracks(qm, model, frames, click, graph, mask=first,
                                                correction=(mid, [click[0] + photo.shape[1] / 8, click[1]]))
            runs.append(("mask+correction", m_rows, m_times))
        for prompts, p_rows, p_times in runs:
            rows += [{"model": name, "image_size": graph.image_size, "prompts": prompts, **r} for r in p_rows]
            ious = [r["mask_iou"] for r in p_rows]
            summary.append({"model": name, "image_size": graph.image_size, "prompts": prompts, "frames": len(ious),
                            "iou_min": min(ious), "iou_median": float(np.median(ious)), **p_times,
                            "ratio": p_times["int8_s"] / p_times["float_s"], "calib_s": calib_s})
        if not node_rows:
            node_rows = sorted(({"node": n.name, "op": n.op, "engine": n.engine, "stage": n.stage,
                                 "sqnr_db": sqnr[n.outputs[0]]} for n in graph.nodes if n.outputs[0] in sqnr),
                               key=lambda r: r["sqnr_db"])
            node_note = f"{name}, {graph.image_size} px, {len(frames)} frames"
    report("quant-video-nodes", node_rows, notes="per video node: SQNR (dB) of the int8 tracker against the float "
                                                 f"graph's over the whole track, end to end, worst first ({node_note})")
    report("quant-video", rows, notes=f"per frame: IoU (logits > 0) int8 tracker vs golden float tracker, "
                                      f"{name0} shifted, centre click, preset {preset}; target IoU >= 0.90 per frame")
    report("quant-video-summary", summary, notes="times: golden float tracker and int8 reference tracker, whole "
                                                 "track, same run; target int8/float <= 3")


if __name__ == "__main__":
    import argparse
    import os
    p = argparse.ArgumentParser()
    p.add_argument("--model", nargs="+", default=os.environ.get("SAM2FPGA_BENCH_MODELS", "tiny").split(","))
    p.add_argument("--estimator", nargs="+", default=["percentile"])
    p.add_argument("--image-size", type=int)
    p.add_argument("--preset", default="kv260")
    p.add_argument("--checkpoint")
    p.add_argument("--photos", type=int, default=6)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--noise-floor", action="store_true",
                   help="also: IoU of float masks with white noise of given SQNR at the image features")
    p.add_argument("--stages", action="store_true",
                   help="also: IoU with only the encoder or only the decoder in int8 (which half loses it)")
    p.add_argument("--video", action="store_true", help="tracking: per-frame IoU and video-node SQNR instead")
    p.add_argument("--frames", type=int, default=12, help="--video: frames tracked (default 12)")
    p.add_argument("--mask-prompts", action="store_true",
                   help="--video: also a track from a mask prompt with a correction (the int8 mask branch)")
    p.add_argument("--speed", action="store_true", help="the image encoder's int8 / float time only")
    p.add_argument("--repeats", type=int, default=2, help="--speed: alternated rounds (default 2)")
    a = p.parse_args()
    if a.speed:
        run_speed(tuple(a.model), a.image_size, a.preset, a.checkpoint, a.repeats)
        raise SystemExit(0)
    if a.video:
        run_video(tuple(a.model), a.image_size, a.preset, a.checkpoint, a.frames, a.estimator[0], a.mask_prompts)
        raise SystemExit(0)
    run(tuple(a.model), tuple(a.estimator), a.image_size, a.preset, a.checkpoint, a.photos, a.prompts,
        a.noise_floor, a.stages)
