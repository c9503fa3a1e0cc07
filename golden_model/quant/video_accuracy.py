"""int8 video tracking against float: per-frame mask IoU and per-node SQNR of the video nodes.

    shift_object_score(model, frames[0], click)           # random weights: make the object present
    rows, sqnr = compare_tracks(qm, model, frames, click)  # one row per frame; {node: dB} of video nodes

The float reference is the golden float tracker (golden_model.video on model.tracker, checked against
the official SAM2VideoPredictor); the int8 side is the integer graph's tracker with its int8 memory
bank. Both track one click on frame 0 (or a mask prompt: `mask=`) through every frame; with
`correction=(frame, click)`, that frame's logits are then those of a click on it (its tracked logits
go in as a mask prompt). SQNR compares every video node's output
over the whole track (the float graph's tracker against the integer one, end to end: errors carry
from frame to frame through the bank).
"""
from __future__ import annotations

import time

import numpy as np

from golden_model.quant.accuracy import mask_iou
from golden_model.quant.quantize import dequantize_tensor
from golden_model.quant.video import VideoFloatRunner, VideoIntRunner, graph_video_predictor
from golden_model.video import VideoPredictor

VIDEO_STAGES = ("memory_encoder", "memory_attention")


def shift_object_score(model, frame: np.ndarray, click, target: float = 2.0) -> float:
    """Shift the object-score head's output bias so `click` on `frame` scores `target`: random weights often
    call the object absent on every frame (all masks -1024, a comparison that proves little); the golden
    video tests do the same. Returns the shift. Build graphs after this (they copy the weights)."""
    p = VideoPredictor(model.tracker)
    state = p.init_state([frame])
    p.add_new_points_or_box(state, 0, 1, points=[list(click)], labels=[1])
    shift = np.float32(target - p.object_score_logits(state, 0, 1))
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += shift
    return float(shift)


def track(predictor, frames, click, mask=None, correction=None) -> tuple[dict, float]:
    """{frame: (H, W) logits} of one click (or `mask`, (H, W) bool) on frame 0 tracked forward, after the
    `correction` (frame, click) when given (module docstring); and the seconds it took."""
    t0 = time.perf_counter()
    state = predictor.init_state(frames)
    if mask is not None:
        predictor.add_new_mask(state, 0, 1, mask)
    else:
        predictor.add_new_points_or_box(state, 0, 1, points=[list(click)], labels=[1])
    out = {i: masks[0, 0].copy() for i, _, masks in predictor.propagate_in_video(state)}
    if correction is not None:
        _, _, masks = predictor.add_new_points_or_box(state, correction[0], 1, points=[list(correction[1])],
                                                      labels=[1])
        out[correction[0]] = masks[0, 0].copy()
    return out, time.perf_counter() - t0


def _recorder(graph, store: dict):
    def observe(node, value):
        if node.stage in VIDEO_STAGES:
            store.setdefault(node.outputs[0], []).append(np.asarray(value))
    return observe


def compare_tracks(qm, model, frames, click, float_graph=None, **prompts) -> tuple[list[dict], dict[str, float], dict]:
    """Per-frame rows (IoU int8 vs float, foreground fractions) and, when `float_graph` (the float video
    graph of `model`) is given, {video tensor: SQNR dB} over the track and, per row, the largest
    |logit| difference of the float graph's track from the golden tracker's (float rounding: the graph
    is the golden model). Also the seconds of the golden float and the int8 tracks. `prompts`: track's
    mask / correction."""
    float_logits, float_s = track(VideoPredictor(model.tracker), frames, click, **prompts)
    fvals, ivals = {}, {}
    int_logits, int_s = track(graph_video_predictor(qm.graph, VideoIntRunner(qm), _recorder(qm.graph, ivals)),
                              frames, click, **prompts)
    rows = [{"frame": i, "mask_iou": mask_iou(float_logits[i] > 0, int_logits[i] > 0),
             "float_fg": float((float_logits[i] > 0).mean()), "int8_fg": float((int_logits[i] > 0).mean())}
            for i in sorted(float_logits)]
    sqnr = {}
    if float_graph is not None:
        graph_logits, _ = track(graph_video_predictor(float_graph, VideoFloatRunner(float_graph),
                                                      _recorder(float_graph, fvals)), frames, click, **prompts)
        for r in rows:
            r["float_graph_err"] = float(np.abs(graph_logits[r["frame"]] - float_logits[r["frame"]]).max())
        for name, refs in fvals.items():
            spec = qm.graph.tensors[name]
            tests = [dequantize_tensor(v, spec) if spec.dtype == "int8" else v for v in ivals.get(name, [])]
            if len(tests) != len(refs):
                continue
            sig = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in refs)
            err = sum(float(np.sum((np.asarray(r, np.float64) - t) ** 2)) for r, t in zip(refs, tests))
            sqnr[name] = float("inf") if err == 0 else (10 * np.log10(sig / err) if sig > 0 else float("-inf"))
    return rows, sqnr, {"float_s": float_s, "int8_s": int_s}
