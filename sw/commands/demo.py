"""`sam2fpga demo`: the most complete path the project has, end to end.

Today: generate Verilog for the requantiser (the output stage every engine
shares), simulate it under cocotb/Verilator against its NumPy reference with
random stalls; then one quantised linear layer through the whole GEMM overlay
(compiler -> descriptors -> DDR) on the sim and rtl backends, checked bit-exact
against golden, with cycles and MAC utilisation.
"""
from __future__ import annotations

import time
from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--waves", action="store_true", help="dump waveforms (VCD) into build/sim/")
    parser.add_argument("-o", "--out", type=Path, default=Path("build/demo"),
                        help="where generated Verilog goes (default: build/demo)")


def run(args) -> int:
    from sw.cli import CommandError
    from sim.toolchain import ToolchainError

    try:
        _requant_smoke(args)
        return _gemm_layer(args)
    except ToolchainError as e:
        raise CommandError(str(e)) from e


def _requant_smoke(args) -> int:
    from hw.requant import Requantizer
    from hw.verilog import write_verilog
    from sim.runner import run_bench

    print("[1/3] Amaranth -> Verilog: requantiser (int32 -> int8, fixed-point multiplier and shift)")
    path = write_verilog(Requantizer(), "requant", args.out)
    print(f"      wrote {path} ({len(path.read_text().splitlines())} lines)")
    print("[2/3] cocotb + Verilator: RTL vs golden_model.intops.requantize, random stalls on both streams")
    t0 = time.monotonic()
    result = run_bench(path, "requant", "requant_bench", name="demo-requant", waves=args.waves)
    print(f"      {result.passed} cocotb tests passed, 0 failed, bit-exact against golden "
          f"({time.monotonic() - t0:.1f} s incl. Verilator build)")
    if result.waves:
        print(f"      waveforms: {result.waves}")
    return 0


def _gemm_layer(args) -> int:
    import numpy as np

    from golden_model.intops import gemm
    from hw.config import preset
    from sw.cli import CommandError
    from sw.commands.sim import random_layer
    from sw.driver import Driver

    cfg = preset("sim")
    m, k, n = 24, 96, 40
    print(f"[3/3] GEMM overlay ({cfg.rows} x {cfg.cols} systolic array, preset {cfg.name}): quantised linear layer "
          f"{m} x {k} x {n}, int8 + per-channel requantisation + ReLU, operands in DDR")
    a, b, bias, mult, shift = random_layer(np.random.default_rng(0), m, k, n)
    want = gemm(a, b, bias, mult, shift, relu=True)
    for backend in ("sim", "rtl"):
        t0 = time.monotonic()
        drv = Driver(cfg, backend, waves=args.waves or None)
        got = drv.linear(a, b, bias, mult, shift, relu=True)
        if not np.array_equal(got, want):
            raise CommandError(f"{backend} backend differs from golden in {int((got != want).sum())} outputs")
        r = drv.last_run
        print(f"      {backend:<3}: bit-exact against golden; {r.cycles} cycles, MAC utilisation {r.utilisation:.1%}, "
              f"{r.descriptors} descriptors ({time.monotonic() - t0:.1f} s)")
    print("demo: OK")
    return 0
