"""Requantiser throughput in RTL simulation: items per cycle with and without stalls."""
import time

from benchmarks.common import report


def run() -> None:
    from hw.requant import Requantizer
    from hw.verilog import write_verilog
    from sim.runner import BUILD, run_bench

    verilog = write_verilog(Requantizer(), "requant", BUILD / "verilog" / "requant")
    rows = []
    for stall in (0.0, 0.3):
        t0 = time.monotonic()
        result = run_bench(verilog, "requant", "requant_bench", name="bench-requant",
                           extra_env={"BENCH_N": "20000", "BENCH_STALL": str(stall)})
        wall = time.monotonic() - t0
        for rec in result.reports:
            rows.append({"stall_prob": stall, "relu": rec["relu"], "items": rec["items"],
                         "cycles": rec["cycles"], "items_per_cycle": rec["items"] / rec["cycles"],
                         "wall_s_incl_build": wall})
    report("requant", rows, notes="Requantiser under cocotb/Verilator; ideal is 1 item/cycle at stall 0.")
