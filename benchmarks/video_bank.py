"""The int8 tracker on the overlay over a long clip: the DDR arena and the memory bank's slots per frame,
a steady-state frame's modelled time per stage and its wall time (sw/runtime/video_exec.py).

    python -m benchmarks video_bank          # SAM2FPGA_BENCH_FRAMES=24 frames, tiny at 128 px, bench16, sim
    SAM2FPGA_BENCH_CHAIN=0 python -m benchmarks video_bank   # every engine output back to the host (no chaining)

Scaled-down tiny (128 px, seeded random weights, calibrated on one random image), shifted copies of a
random image, one click on frame 0; bench16's own placement (every engine)."""
from __future__ import annotations

import os
import time

import numpy as np

SIZE = 128


def run() -> None:
    from golden_model.quant.builder import random_model
    from golden_model.quant.quantize import calibrate
    from golden_model.quant.video import build_full_graph, calibrate_video, quantize_video, shifted_frames
    from hw.config import preset
    from sw.runtime.video_exec import STAGES, VideoGraphExecutor, overlay_video_predictor, video_driver
    n = int(os.environ.get("SAM2FPGA_BENCH_FRAMES", "24"))
    cfg = preset("bench16")
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    graph = build_full_graph(random_model("tiny", SIZE, seed=0))
    stats = calibrate(graph, [photo], prompts_per_image=1)
    calibrate_video(graph, [photo], stats, frames_per_video=3)
    qm = quantize_video(graph, stats, key_tile=cfg.cols, preset=cfg.name)
    ex = VideoGraphExecutor(qm, cfg, "sim", video_driver(cfg, "sim", qm.graph))
    ex.chain = os.environ.get("SAM2FPGA_BENCH_CHAIN", "1") != "0"
    predictor = overlay_video_predictor(qm, ex)
    state = predictor.init_state(shifted_frames(photo, n))
    predictor.add_new_points_or_box(state, 0, 1, points=[[60.0, 70.0]], labels=[1])
    arena, bank = ex.driver.session.arena, predictor.tracker.bank
    print(f"video_bank: tiny {SIZE} px on {cfg.name} (sim, {cfg.clock_mhz:g} MHz), {n} frames; bank "
          f"{bank.nbytes:,} bytes ({', '.join(f'{c} {r}' for r, c in bank.counts.items())} slots)")
    print(f"{'frame':>5s} {'arena bytes':>12s} {'slots in use':>28s} {'modelled ms':>11s} {'host<->DDR':>12s} "
          f"{'wall s':>7s}")
    t = time.perf_counter()
    for idx, _, _ in predictor.propagate_in_video(state):
        stages = ex.frame_stats.stages
        ms = sum(s.cycles for s in stages.values()) / (cfg.clock_mhz * 1e3)
        now = time.perf_counter()
        used = ", ".join(f"{r} {bank.in_use(r)}" for r in bank.counts)
        ddr = sum(s.ddr_bytes for s in stages.values())
        print(f"{idx:5d} {arena.size - arena.free_bytes:12,d} {used:>28s} {ms:11.2f} {ddr:12,d} {now - t:7.2f}",
              flush=True)
        last = {name: stages[name].cycles / (cfg.clock_mhz * 1e3) for name in STAGES}
        last_ddr = {name: stages[name].ddr_bytes for name in STAGES}
        ex.frame_stats.reset()
        t = now
    print("last frame, modelled ms per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in last.items()))
    print("last frame, host<->DDR bytes per stage: " + ", ".join(f"{k} {v:,d}" for k, v in last_ddr.items())
          + f"; of them programs + weights (each node's last run) "
          f"{sum(r.program_bytes for r in ex.records.values()):,d}")
