"""`sam2fpga track --backend sim|pynq`: the int8 tracker on the overlay (sw.runtime.video_exec), its
per-frame progress (stderr) and per-stage figures.

Per frame and stage (image encoder, prompt + decoder, memory encoder, memory attention): the overlay's
cycles as modelled time at the preset's clock, the host ops' wall time, and the host <-> DDR bytes
(every Driver call's program, weights, inputs and outputs, plus the memory bank's slot writes and
gather reads); with several objects, the frame's memory-attention runs (objects batched in each,
their memory lengths: video_exec.VideoGraphExecutor.run_objects). One driver session (one backend,
one DDR arena) serves the whole video.
"""
from __future__ import annotations

import sys
import time

from sw.runtime.video_exec import STAGES


def overlay_predictor(args, qm, cache: int, prompts):
    from hw.config import preset
    from sw.cli import CommandError
    from sw.commands.segment import program_store
    from sw.runtime.arena import ArenaFull
    from sw.runtime.graph_exec import GraphExecError
    from sw.runtime.video_exec import VideoGraphExecutor, overlay_video_predictor, video_driver
    cfg = preset(args.preset)
    objects = len({p.obj_id for p in prompts})
    pairs = len({(p.obj_id, p.frame) for p in prompts})
    try:
        drv = video_driver(cfg, args.backend, qm.graph, cond_frames=pairs, objects=objects, bitfile=args.bitfile,
                           program_store=program_store(args))
        ex = VideoGraphExecutor(qm, cfg, args.backend, drv)
    except GraphExecError as e:
        raise CommandError(str(e)) from e
    try:
        predictor = overlay_video_predictor(qm, ex, cond_frames=pairs, objects=objects, feature_cache_size=cache)
    except ArenaFull as e:
        raise CommandError(f"the memory bank does not fit the overlay's DDR arena: {e}") from e
    if args.fault is not None:
        predictor.faults[args.fault_frame] = args.fault
    predictor.frame_figures = []         # per tracked frame: (stem, {stage: StageStats}, wall seconds)
    predictor.frame_clock = time.perf_counter()
    bank = predictor.tracker.bank
    rings = ", ".join(f"{n} {ring}" for ring, n in bank.counts.items())
    print(f"track: on the {cfg.name} overlay ({args.backend} backend, {cfg.clock_mhz:g} MHz); memory bank in DDR: "
          f"slots of {rings}; {bank.nbytes:,} bytes")
    return predictor


def frame_done(predictor, idx: int, stem: str) -> None:
    """A frame's figures to stderr and kept for the report; the executor's counters restart."""
    from tqdm import tqdm
    ex = predictor.executor
    stats = ex.frame_stats.stages
    now = time.perf_counter()
    wall, predictor.frame_clock = now - predictor.frame_clock, now
    predictor.frame_figures.append((stem, stats, wall, ex.frame_stats.batch_note()))
    mhz = ex.cfg.clock_mhz
    parts = [f"{name} {s.cycles / (mhz * 1e3):.2f} ms" for name, s in stats.items()]
    ddr = sum(s.ddr_bytes for s in stats.values())
    batch = ex.frame_stats.batch_note()
    # tqdm.write: the line above track's progress bar (a plain print would be appended to the bar's line)
    tqdm.write(f"frame {idx} ({stem}): modelled {', '.join(parts)}; DDR {ddr:,} B; wall {wall:.1f} s"
               + (f"; memory attention runs: {batch}" if batch else ""), file=sys.stderr)
    ex.frame_stats.reset()


def report(predictor, tracked: list) -> None:
    """Per stage: the last (steady-state) frame's and the whole video's figures; recovered faults."""
    ex = predictor.executor
    mhz = ex.cfg.clock_mhz
    figures = predictor.frame_figures
    if not figures:
        return
    print(f"per stage (overlay modelled at {mhz:g} MHz; host = the host ops' wall time; DDR = host <-> DDR bytes)")
    print(f"  {'stage':18s} {'last frame: modelled ms':>24s} {'host ms':>8s} {'DDR bytes':>11s}   "
          f"{'all frames: modelled ms':>24s} {'host ms':>8s} {'DDR bytes':>12s}")
    last = figures[-1][1]
    for name in STAGES:
        s = last[name]
        total = [f[1][name] for f in figures]
        print(f"  {name:18s} {s.cycles / (mhz * 1e3):24.3f} {s.host_s * 1e3:8.1f} {s.ddr_bytes:11,d}   "
              f"{sum(t.cycles for t in total) / (mhz * 1e3):24.3f} {sum(t.host_s for t in total) * 1e3:8.1f} "
              f"{sum(t.ddr_bytes for t in total):12,d}")
    modelled = sum(s.cycles for s in last.values()) / (mhz * 1e3)
    print(f"  last frame: {modelled:.3f} ms modelled on the overlay, {figures[-1][2]:.2f} s wall "
          f"(this process: simulation, compilation, host ops)")
    if figures[-1][3]:
        print(f"  last frame's memory attention runs: {figures[-1][3]} (a run: each node once over all its "
              "objects' rows, attention once per memory length)")
    for note in predictor.retries + ex.driver.session.recoveries:
        print(f"  recovered: {note}")
    if ex.driver.compiles.store is not None:
        print("  " + ex.driver.compiles.store.summary())
