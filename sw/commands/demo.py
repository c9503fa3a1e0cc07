"""`sam2fpga demo`: the most complete path the project has, end to end.

Today: generate Verilog for the requantiser (the output stage every engine
shares), simulate it under cocotb/Verilator against its NumPy reference with
random stalls, and say what was built and checked.
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
        return _requant_smoke(args)
    except ToolchainError as e:
        raise CommandError(str(e)) from e


def _requant_smoke(args) -> int:
    from hw.requant import Requantizer
    from hw.verilog import write_verilog
    from sim.runner import run_bench

    print("[1/2] Amaranth -> Verilog: requantiser (int32 -> int8, fixed-point multiplier and shift)")
    path = write_verilog(Requantizer(), "requant", args.out)
    print(f"      wrote {path} ({len(path.read_text().splitlines())} lines)")
    print("[2/2] cocotb + Verilator: RTL vs golden_model.intops.requantize, random stalls on both streams")
    t0 = time.monotonic()
    result = run_bench(path, "requant", "requant_bench", name="demo-requant", waves=args.waves)
    print(f"      {result.passed} cocotb tests passed, 0 failed, bit-exact against golden "
          f"({time.monotonic() - t0:.1f} s incl. Verilator build)")
    if result.waves:
        print(f"      waveforms: {result.waves}")
    print("demo: OK")
    return 0
