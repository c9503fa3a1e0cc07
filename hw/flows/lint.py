"""Verilator lint of generated Verilog: -Wall, with each waived rule given its reason."""
from __future__ import annotations

import subprocess
from pathlib import Path

from sim.toolchain import setup_verilator_env

#: Rules waived for Amaranth-generated Verilog, and why. Nothing else is waived.
WAIVERS: dict[str, str] = {
    "PROCASSINIT": "Amaranth emits `reg x = init;` for reset values and also assigns x in "
                   "always blocks; that is its documented way to give registers power-on values.",
    "UNUSEDSIGNAL": "Amaranth keeps named wires for struct fields and debug views that no "
                    "logic reads; they are optimised away by synthesis.",
    "WIDTHEXPAND": "Amaranth's semantics fix every operand width; its Yosys backend relies on "
                   "Verilog's implicit sign/zero extension in comparisons and adds.",
    "WIDTHTRUNC": "As WIDTHEXPAND, for the implicit truncation of wide intermediate results.",
    "UNUSEDPARAM": "Generated modules carry parameters for debug annotations only.",
    "DECLFILENAME": "One file may hold a top module and its generated submodules.",
    "CASEINCOMPLETE": "An Amaranth Switch without a Default keeps the signal's prior value; the "
                      "backend assigns that value before the case, so uncovered values are intended.",
    "ASCRANGE": "Amaranth emits zero-width signals (the address of a one-entry FIFO) as [-1:0]; "
                "nothing reads them.",
}


class LintError(RuntimeError):
    pass


def waiver_file(out_dir: Path) -> Path:
    """A Verilator control file with the waivers, each preceded by its reason."""
    lines = ["`verilator_config"]
    for rule, why in WAIVERS.items():
        lines.append(f"// {rule}: {why}")
        lines.append(f"lint_off -rule {rule}")
    path = Path(out_dir) / "lint_waivers.vlt"
    path.write_text("\n".join(lines) + "\n")
    return path


def lint(verilog: Path, top: str) -> str:
    """Run `verilator --lint-only -Wall` with the waivers; raise LintError with its output on any warning."""
    root = setup_verilator_env()
    verilog = Path(verilog)
    cmd = [str(root / "bin" / "verilator"), "--lint-only", "-Wall", "--top-module", top,
           str(waiver_file(verilog.parent)), str(verilog)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or "%Warning" in output or "%Error" in output:
        raise LintError(f"verilator lint of {verilog} failed:\n{output}")
    return output
