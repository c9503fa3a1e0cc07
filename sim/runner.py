"""Run a cocotb bench on generated Verilog, from Python (pytest, the CLI, the driver)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from sim.toolchain import icarus_available, setup_verilator_env

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
BENCHES = Path(__file__).resolve().parent / "benches"

# Amaranth's Verilog trips width lints that are harmless in generated code;
# the lint check in the test suite (not the simulation build) is where they are judged.
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3"]


def waves_requested() -> bool:
    """Waveforms on demand: SAM2FPGA_WAVES=1 (or `--waves` on the CLI / pytest)."""
    return os.environ.get("SAM2FPGA_WAVES", "") not in ("", "0")


def run_amaranth(sim, name: str, until: float | None = None) -> None:
    """Run an Amaranth simulation (to `until` seconds, or until its testbenches end), writing
    build/amaranth_<name>.vcd when waveforms are requested."""
    run = (lambda: sim.run_until(until)) if until is not None else sim.run
    if waves_requested():
        BUILD.mkdir(parents=True, exist_ok=True)
        with sim.write_vcd(str(BUILD / f"amaranth_{name}.vcd")):
            run()
    else:
        run()


class BenchFailed(AssertionError):
    """A cocotb bench reported failing tests."""


@dataclass
class BenchResult:
    build_dir: Path
    results_xml: Path
    passed: int
    failed: int
    waves: Path | None
    reports: list[dict]   # what the bench passed to sim.benches.report.write_report


def run_bench(verilog: Path | list[Path], toplevel: str, bench_module: str, *,
              name: str | None = None, simulator: str = "verilator",
              waves: bool | None = None, extra_env: dict[str, str] | None = None,
              testcase: str | None = None, seed: int | None = None) -> BenchResult:
    """Build `verilog` and run the cocotb tests in `sim.benches.<bench_module>`.

    `extra_env` reaches the bench through os.environ (how benches get their
    parameters). Raises BenchFailed when any cocotb test fails.
    """
    from cocotb_tools.runner import get_runner

    waves = waves_requested() if waves is None else waves
    sources = [verilog] if isinstance(verilog, (str, Path)) else list(verilog)
    if simulator == "verilator":
        setup_verilator_env()
        build_args = list(VERILATOR_BUILD_ARGS)
    elif simulator == "icarus":
        if not icarus_available():
            raise RuntimeError("icarus requested but iverilog/vvp are not on PATH")
        build_args = []
    else:
        raise ValueError(f"unknown simulator {simulator!r} (verilator, icarus)")

    # The simulator binary is shared by every run of the same sources (build/sim/objs/, keyed by their
    # content): pytest workers and benches under different names build each design once. A run's
    # results, log and waveforms stay in its own build/sim/<name>/<simulator>/.
    test_dir = BUILD / "sim" / (name or toplevel) / simulator
    runner = get_runner(simulator)
    with _shared_build(sources, toplevel, simulator, build_args, waves) as build_dir:
        runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=build_dir,
                     build_args=build_args, waves=waves, timescale=("1ns", "1ps"),
                     log_file=build_dir / "build.log")
    test_dir.mkdir(parents=True, exist_ok=True)
    report = test_dir / "report.jsonl"
    report.unlink(missing_ok=True)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "BENCH_REPORT": str(report), **(extra_env or {})}
    results = runner.test(test_module=f"sim.benches.{bench_module}", hdl_toplevel=toplevel,
                          build_dir=build_dir, test_dir=test_dir, extra_env=env,
                          waves=waves, testcase=testcase, seed=seed,
                          log_file=test_dir / "test.log")
    passed, failed = _count_results(Path(results))
    wave_file = next(iter(sorted(test_dir.glob("*.vcd")) + sorted(test_dir.glob("*.fst"))), None)
    reports = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    result = BenchResult(test_dir, Path(results), passed, failed, wave_file if waves else None, reports)
    if failed or not passed:
        raise BenchFailed(f"{bench_module} on {toplevel}: {passed} passed, {failed} failed "
                          f"(log: {test_dir / 'test.log'})")
    return result


#: Shared simulator builds not used for this long are removed when another build of the same top
#: starts (each hardware change makes a new one of ~200 MB).
STALE_BUILD_S = 6 * 3600


class _shared_build:
    """The build directory of these sources under build/sim/objs/, locked while it is (re)built:
    a second process building the same design waits, then finds it built (Verilator and make skip
    identical work)."""

    def __init__(self, sources, toplevel, simulator, build_args, waves):
        key = hashlib.sha1(json.dumps([toplevel, simulator, build_args, bool(waves)]).encode())
        for src in sources:   # the path too: Verilator rebuilds everything when its inputs' paths change
            key.update(str(Path(src).resolve()).encode() + b"\0" + Path(src).read_bytes() + b"\0")
        self.root = BUILD / "sim" / "objs"
        self.dir = self.root / f"{toplevel}-{key.hexdigest()[:16]}" / simulator
        self.toplevel = toplevel

    def __enter__(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = open(self.dir.parent / "build.lock", "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        os.utime(self.dir.parent)                # last used: kept from pruning
        return self.dir

    def __exit__(self, *exc):
        self.lock.close()
        self._prune()

    def _prune(self):
        """Remove this top's builds unused for STALE_BUILD_S whose lock is free."""
        import shutil
        for old in self.root.glob(f"{self.toplevel}-*"):
            try:
                if old == self.dir.parent or time.time() - old.stat().st_mtime < STALE_BUILD_S:
                    continue
                with open(old / "build.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:          # in use (BlockingIOError) or removed by another process meanwhile
                continue


def _count_results(xml_path: Path) -> tuple[int, int]:
    root = ET.parse(xml_path).getroot()
    passed = failed = 0
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is None:
            passed += 1
    return passed, failed
