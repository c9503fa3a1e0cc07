"""Multi-object video tracking on the golden model: time per frame for 1, 3 and 8 objects.

Each object is clicked on frame 0 of a synthetic clip, then propagate_in_video tracks them all;
frames 1..FRAMES are timed. The image encoder runs once per frame whatever the object count (its
passes are counted); each object then takes its own tracking step (memory attention over its own
bank, SAM heads, memory encoder), so time per frame = encoder + objects x per-object step. The
banks are young here (1..FRAMES memories): a full bank costs more per object (benchmarks/golden_video.py).

`python -m benchmarks golden_video_objects` (tiny at 1024; SAM2FPGA_BENCH_OBJECTS=1,3,8,
SAM2FPGA_BENCH_FRAMES=3 to change the cases).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def rows_for(model, counts, frames: int) -> list[dict]:
    from golden_model.video import VideoPredictor
    from tests.golden.video_helpers import write_moving_shape_clip

    encoder_s, encoder_cpu_s = [], []
    forward_image = model.forward_image

    def timed_forward_image(img):
        t0, c0 = time.perf_counter(), time.process_time()
        out = forward_image(img)
        encoder_s.append(time.perf_counter() - t0)
        encoder_cpu_s.append(time.process_time() - c0)
        return out

    model.forward_image = timed_forward_image
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clip = write_moving_shape_clip(Path(tmp), n_frames=frames + 1)
            for n_obj in counts:
                predictor = VideoPredictor(model.tracker)
                state = predictor.init_state(clip)
                for obj_id in range(n_obj):     # clicks spread over the frame, one object each
                    predictor.add_new_points_or_box(state, 0, obj_id, points=[[10 + 17 * obj_id, 20 + 9 * obj_id]],
                                                    labels=[1])
                tracking = predictor.propagate_in_video(state)
                next(tracking)                  # frame 0: prompt outputs, their memories encoded
                encoder_s.clear()
                encoder_cpu_s.clear()
                calls = state.image_encoder_calls
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in tracking:
                    pass
                per_frame = (time.perf_counter() - t0) / frames
                cpu = (time.process_time() - c0) / frames
                enc, enc_cpu = sum(encoder_s) / frames, sum(encoder_cpu_s) / frames
                rows.append({"objects": n_obj, "s_per_frame": per_frame, "encoder_s_per_frame": enc,
                             "s_per_object_step": (per_frame - enc) / n_obj,
                             "cpu_s_per_frame": cpu, "encoder_cpu_s_per_frame": enc_cpu,
                             "cpu_s_per_object_step": (cpu - enc_cpu) / n_obj,
                             "encoder_passes_per_frame": (state.image_encoder_calls - calls) / frames})
    finally:
        model.forward_image = forward_image
    return rows


def run() -> None:
    from benchmarks.common import report
    from golden_model.model import SAM2Model
    counts = [int(n) for n in os.environ.get("SAM2FPGA_BENCH_OBJECTS", "1,3,8").split(",")]
    frames = int(os.environ.get("SAM2FPGA_BENCH_FRAMES", "3"))
    rows = rows_for(SAM2Model("tiny", seed=0), counts, frames)
    report("golden_video_objects", rows,
           notes=f"golden SAM 2.1 tiny at 1024, seeded random weights, 160x120 clip, objects clicked on frame 0, "
                 f"frames 1..{frames} timed (young banks); one image-encoder pass per frame shared by all "
                 "objects, one tracking step per object. Wall times (s_*) follow the machine's load; CPU times "
                 "(cpu_s_*, all threads of this process) much less so")
