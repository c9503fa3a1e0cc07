"""The board presets' MAC utilisation: GEMM 256^3 and attention in steady state, per preset.

Sim model (sw/backends/sim_model.py, within 0.3 % of the RTL on bench16) for every board preset, and the
RTL (Verilator, operands in DDR behind cocotbext-axi) for the presets small enough to simulate
(pynq-z2: 8 x 8, packed). Attention as benchmarks/attention.py measures it: one pass of S R queries
(the engine's resident slots) over 4096 keys and over 2048 keys, d = 256; the steady state is the
difference per key tile, over both arrays (Q K^T on the GEMM array, P V on the engine's own).

The P V array's LUT rows (zcu104's last 13 of 32 rows, hw.config attn_pv_lut_rows) are measured on the RTL too:
pynq-z2 with its last 4 rows in LUTs (`LUT_ROWS_CHECK`, not a board preset), on the sim model and Verilator.

    python -m benchmarks presets                       # sim model, every board preset; RTL of pynq-z2
    python -c "from benchmarks.presets import run; run(rtl=())"    # sim model only (seconds)
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import report

BOARD_PRESETS = ("pynq-z2", "kv260", "zcu104")
RTL_PRESETS = ("pynq-z2",)
LUT_ROWS_CHECK = ("pynq-z2", 4)      # (preset, attn_pv_lut_rows): the LUT rows on an array Verilator runs
KEYS, D = 4096, 256


def gemm_program(drv, m=256, k=256, n=256):
    """(program, its golden result)."""
    from golden_model.intops import gemm
    from sw.commands.sim import random_layer
    a, b, bias, mult, shift = random_layer(np.random.default_rng(m + k + n), m, k, n)
    return drv.compile(a, b, bias, mult, shift), gemm(a, b, bias, mult, shift)


def attention_programs(drv, cfg):
    """[(program, its golden result)] for 4096 and 2048 keys."""
    from benchmarks.attention import case
    from golden_model.intattn import attention
    from sw.compile.attention import compile_attention
    queries = cfg.attn_q_slots * cfg.rows
    q, k, v, quant = case(np.random.default_rng(5), queries, KEYS, D)
    return [(compile_attention(cfg, q, k[:n], v[:n], quant, base_addr=drv.BUFFER_BASE),
             attention(q, k[:n], v[:n], quant, cfg.cols)) for n in (KEYS, KEYS // 2)]


def output(prog, image):
    out = prog.output(image)
    return out[0] if out.ndim == 3 else out        # attention: (heads, queries, d), one head here


def rows_for(cfg, rtl: bool) -> list[dict]:
    from sw.backends.rtl import run_images
    from sw.runtime.driver import Driver
    drv = Driver(cfg, "sim")
    cases = [gemm_program(drv), *attention_programs(drv, cfg)]
    gemm, attn = cases[0][0], [c[0] for c in cases[1:]]
    names = ("gemm", "attn_full", "attn_half")
    cycles, exact = {}, {}
    for what, (prog, want) in zip(names, cases):
        image = drv.run(prog)
        cycles[("sim", what)] = drv.last_run.cycles
        exact["sim"] = exact.get("sim", True) and bool(np.array_equal(output(prog, image), want))
    if rtl:
        # GEMM and attention programs on one overlay build (its engines: the preset's).
        res = run_images(cfg, [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors),
                                    timeout=20_000_000) for p, _ in cases])
        for what, (prog, want), r in zip(names, cases, res):
            assert r["error"] == 0 and not r["timed_out"], (cfg.name, what, r)
            cycles[("rtl", what)] = int(r["cycles"])
            exact["rtl"] = exact.get("rtl", True) and bool(np.array_equal(output(prog, r["image"]), want))
    rows = []
    tiles = (KEYS - KEYS // 2) // cfg.cols
    tile_macs = 2 * attn[0].lq * cfg.cols * D
    for model in ("sim", "rtl") if rtl else ("sim",):
        per_tile = (cycles[(model, "attn_full")] - cycles[(model, "attn_half")]) / tiles
        rows.append({"preset": cfg.name, "model": model, "array": f"{cfg.rows}x{cfg.cols}",
                     "packed": cfg.dsp_packing, "gemm_256^3_cycles": cycles[(model, "gemm")],
                     "gemm_mac_util": gemm.macs / (cycles[(model, "gemm")] * cfg.macs),
                     "attn_cycles_per_key_tile": per_tile,
                     "attn_steady_mac_util": tile_macs / (per_tile * 2 * cfg.macs), "bit_exact": exact[model],
                     "int8_macs_per_cycle": cfg.macs, "pv_macs_per_cycle": cfg.macs if "attention" in cfg.engines else 0})
    return rows


def run(synth: bool = False, presets=BOARD_PRESETS, rtl=RTL_PRESETS) -> None:
    from hw.config import preset
    rows = []
    for name in presets:
        rows += rows_for(preset(name), name in rtl)
    name, lut_rows = LUT_ROWS_CHECK
    if name in presets:
        rows += rows_for(preset(name).replace(name=f"{name}+{lut_rows}lut", attn_pv_lut_rows=lut_rows), name in rtl)
    report("presets", rows, notes=f"GEMM 256x256x256 int8 (whole layer, DMA included); attention: {KEYS} vs "
                                  f"{KEYS // 2} keys, d {D}, S x R queries, steady state per key tile over both arrays")
