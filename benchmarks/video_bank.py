"""The int8 tracker on the overlay over a long clip: the DDR arena and the memory bank's slots per frame,
a steady-state frame's modelled time per stage and its wall time (sw/runtime/video_exec.py); then the
objects' memory attentions batched against one by one.

    python -m benchmarks video_bank          # SAM2FPGA_BENCH_FRAMES=30 frames, tiny at 128 px, bench16, sim (the
                                             # steady state from frame 25: the ring's placements all met)
                                             # SAM2FPGA_BENCH_OBJECT_FRAMES=4 frames per objects case (0: none)
    SAM2FPGA_BENCH_OBJECTS=3 python -m benchmarks video_bank # the long clip with 3 objects (batched)
    SAM2FPGA_BENCH_CORRECTION=1 ...                          # and object 1 prompted on frame 2 too (its memory longer)
    SAM2FPGA_BENCH_CHAIN=0 python -m benchmarks video_bank   # every engine output back to the host (no chaining)
    SAM2FPGA_BENCH_LOAD_T=0 python -m benchmarks video_bank  # bench16 without the transposing LOAD (load_t)
    SAM2FPGA_BENCH_TABLE=1 python -m benchmarks video_bank   # and the last frame's nodes: where the bytes go (every
                                                             # run: the host's own, programs, relayed; each node's last)
    SAM2FPGA_BENCH_TRACE=1 python -m benchmarks video_bank   # the last frame's host <-> DDR bytes per node, every
                                                             # run of it (the table: its last run), and outside nodes

Scaled-down tiny (128 px, seeded random weights, calibrated on one random image), shifted copies of a
random image, one click on frame 0 per object; bench16's own placement (every engine). "Modelled" is
the sim backend's cycle model of the Driver calls (each call's DMA of program, weights and inputs,
its compute, its output) at the preset's clock; DDR bytes are the host <-> DDR bytes those calls and
the bank's reads and writes move."""
from __future__ import annotations

import os
import time

import numpy as np

SIZE = 128
CLICKS = ([60.0, 70.0], [30.0, 30.0], [100.0, 40.0])


def _case():
    from golden_model.quant.builder import random_model
    from golden_model.quant.quantize import calibrate
    from golden_model.quant.video import build_full_graph, calibrate_video, quantize_video
    from hw.config import preset
    cfg = preset("bench16")
    if os.environ.get("SAM2FPGA_BENCH_LOAD_T", "1") == "0":         # the before of the transposing LOAD
        cfg = cfg.replace(engines=tuple(e for e in cfg.engines if e != "load_t"))
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    graph = build_full_graph(random_model("tiny", SIZE, seed=0))
    stats = calibrate(graph, [photo], prompts_per_image=1)
    calibrate_video(graph, [photo], stats, frames_per_video=3)
    return quantize_video(graph, stats, key_tile=cfg.cols, preset=cfg.name), cfg, photo


def _predictor(qm, cfg, objects: int, batched: bool = True, cond_frames: int | None = None):
    from sw.runtime.video_exec import VideoGraphExecutor, overlay_video_predictor, video_driver
    cond = objects if cond_frames is None else cond_frames
    ex = VideoGraphExecutor(qm, cfg, "sim", video_driver(cfg, "sim", qm.graph, cond_frames=cond, objects=objects))
    ex.chain = os.environ.get("SAM2FPGA_BENCH_CHAIN", "1") != "0"
    predictor = overlay_video_predictor(qm, ex, cond_frames=cond, objects=objects)
    predictor.batch_objects = batched
    return ex, predictor


def long_clip(qm, cfg, photo, n: int, k: int = 1) -> None:
    """`n` frames of `k` objects (one click each on frame 0, their memory attentions batched): per frame the
    arena, the bank's slots, modelled ms and host <-> DDR bytes; the last frame's bytes by kind (and by node)."""
    from golden_model.quant.video import shifted_frames
    from sw.runtime.video_exec import STAGES
    correction = os.environ.get("SAM2FPGA_BENCH_CORRECTION") == "1"
    ex, predictor = _predictor(qm, cfg, k, cond_frames=k + correction)
    state = predictor.init_state(shifted_frames(photo, n))
    for i in range(k):
        predictor.add_new_points_or_box(state, 0, i + 1, points=[CLICKS[i % len(CLICKS)]], labels=[1])
    if correction:          # object 1 prompted on frame 2 too: its memory longer (a prompted (object, frame) more)
        predictor.add_new_points_or_box(state, 2, 1, points=[[30.0, 90.0]], labels=[1])
    arena, bank = ex.driver.session.arena, predictor.tracker.bank
    print(f"video_bank: tiny {SIZE} px on {cfg.name} (sim, {cfg.clock_mhz:g} MHz), {n} frames, {k} object"
          f"{'s' * (k > 1)}; bank "
          f"{bank.nbytes:,} bytes ({', '.join(f'{c} {r}' for r, c in bank.counts.items())} slots)")
    print(f"{'frame':>5s} {'arena bytes':>12s} {'slots in use':>28s} {'modelled ms':>11s} {'host<->DDR':>12s} "
          f"{'wall s':>7s}")
    trace = _trace(ex) if os.environ.get("SAM2FPGA_BENCH_TRACE") == "1" else None
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
        last_nodes = dict(ex.frame_stats.nodes)
        ex.frame_stats.reset()
        last_trace = dict(trace or {})
        if trace is not None:
            trace.clear()
        t = now
    print("last frame, modelled ms per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in last.items()))
    print("last frame, host<->DDR bytes per stage: " + ", ".join(f"{k} {v:,d}" for k, v in last_ddr.items())
          + f"; of them programs + weights (each node's last run) "
          f"{sum(r.program_bytes for r in ex.records.values()):,d}")
    totals: dict = {}
    for name, v in last_nodes.items():       # every run of each node in the frame (FrameStats.nodes)
        t = totals.setdefault(ex.records[name].stage, [0, 0, 0])
        t[:] = [a + b for a, b in zip(t, v)]
    print("last frame, per stage: nodes' host<->DDR bytes (every run) / of them the host ops' own (frame in, logits "
          "out, host nodes) / programs: " + ", ".join(f"{k} {b:,d} / {o:,d} / {p:,d}" for k, (b, p, o) in totals.items()))
    _frame_bytes(ex, last_ddr, last_nodes, os.environ.get("SAM2FPGA_BENCH_TABLE") == "1")
    if os.environ.get("SAM2FPGA_BENCH_TABLE") == "1":
        print(ex.table())
    if trace is not None:
        print(f"last frame, host<->DDR bytes by the node running (all its runs), {sum(last_trace.values()):,d} in all:")
        for name, n in sorted(last_trace.items(), key=lambda kv: -kv[1]):
            print(f"{n:12,d}  {name}")


def _frame_bytes(ex, stage_ddr: dict, nodes: dict, per_node: bool) -> None:
    """The last frame's host <-> DDR bytes, every run of each node summed (FrameStats.nodes): the host ops' own
    (issue 18's allowed kind: the frame in, the logits out, host nodes' bytes), the programs', the rest relayed;
    and outside the nodes (the bank's reads and writes for the tracker). `per_node`: each node that moved any."""
    total, ddr, program, own = sum(stage_ddr.values()), *(sum(v[i] for v in nodes.values()) for i in range(3))
    print(f"last frame, host<->DDR bytes {total:,d}: the nodes' (every run) {ddr:,d} = host own {own:,d} + programs "
          f"{program:,d} + relayed {ddr - own - program:,d}; outside the nodes {total - ddr:,d}")
    if per_node:
        print(f"{'node (every run of the last frame)':44s} {'DDR bytes':>9s} {'programs':>9s} {'host own':>9s} "
              f"{'relayed':>8s}  the host's own: the host's tensors it moves (programs: descriptors relinked to "
              f"the bank's slots, weights on a first load)")
        for name, (b, p, o) in sorted(nodes.items(), key=lambda kv: -kv[1][0]):
            if b:
                print(f"{name:44s} {b:9,d} {p:9,d} {o:9,d} {b - p - o:8,d}  {ex.own_reason(name) if o else ''}")


def _trace(ex) -> dict:
    """Host <-> DDR bytes from now on by the graph node running (every run of it), the rest ("outside a node":
    the bank's reads and writes at the tracker's calls) apart."""
    out, inside, dev = {}, [], ex.driver.device
    op_fn, read, write = ex.op_fn, dev.read, dev.write

    def count(n):
        key = inside[-1] if inside else "outside a node (the bank's reads and writes for the tracker)"
        out[key] = out.get(key, 0) + n

    def traced(node):
        fn = op_fn(node)

        def run(n, args, r):
            inside.append(n.name)
            try:
                return fn(n, args, r)
            finally:
                inside.pop()
        return run
    ex.op_fn = traced
    dev.read = lambda addr, size: count(size) or read(addr, size)
    dev.write = lambda addr, data: count(np.asarray(data).nbytes) or write(addr, data)
    return out


def objects(qm, cfg, photo, n: int, counts=(1, 3)) -> None:
    """Per object count: the last frame's memory attention (all objects) batched and one object at a time."""
    from golden_model.quant.video import shifted_frames
    print(f"\nobjects: frame {n - 1} of {n} (one click each on frame 0); memory attention of all objects, modelled "
          f"at {cfg.clock_mhz:g} MHz (sim cycle model)")
    print(f"{'objects':>7s} {'memory attention':>17s} {'modelled ms':>11s} {'DDR bytes':>11s} {'frame ms':>9s} "
          f"{'wall s':>7s}  runs (wall: all frames, this process)")
    for k in counts:
        for batched in (False, True) if k > 1 else (True,):
            ex, predictor = _predictor(qm, cfg, k, batched)
            state = predictor.init_state(shifted_frames(photo, n))
            for i in range(k):
                predictor.add_new_points_or_box(state, 0, i + 1, points=[CLICKS[i % len(CLICKS)]], labels=[1])
            t = time.perf_counter()
            for _ in predictor.propagate_in_video(state):
                fs = ex.frame_stats
                ma, note = fs.stages["memory attention"], fs.batch_note()
                frame_ms = sum(s.cycles for s in fs.stages.values()) / (cfg.clock_mhz * 1e3)
                fs.reset()
            mode = "batched" if batched else "one by one"
            print(f"{k:7d} {mode:>17s} {ma.cycles / (cfg.clock_mhz * 1e3):11.2f} {ma.ddr_bytes:11,d} "
                  f"{frame_ms:9.2f} {time.perf_counter() - t:7.1f}  {note}", flush=True)


def run() -> None:
    qm, cfg, photo = _case()
    frames = int(os.environ.get("SAM2FPGA_BENCH_FRAMES", "30"))
    if frames:
        long_clip(qm, cfg, photo, frames, int(os.environ.get("SAM2FPGA_BENCH_OBJECTS", "1")))
    if int(os.environ.get("SAM2FPGA_BENCH_OBJECT_FRAMES", "4")):
        objects(qm, cfg, photo, int(os.environ.get("SAM2FPGA_BENCH_OBJECT_FRAMES", "4")))
