"""`sam2fpga`: the project's one command line.

Each subcommand lives in its own module under `sw/commands/` with two names:
`add_arguments(parser)` and `run(args) -> int`. Add a module and list it in
COMMANDS to add a subcommand; imports are lazy so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from sw.errors import CommandError, UsageError  # noqa: F401  (subcommands import them from here)

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sw.commands.demo", "run the most complete path the project has, end to end"),
    "toolchain": ("sw.commands.toolchain", "show which simulators and FPGA tools this machine has"),
    "generate": ("sw.commands.generate", "write the overlay's Verilog and a summary of its parameters"),
    "sim": ("sw.commands.sim", "simulate one layer (sim model or Verilator), check it against golden"),
    "build": ("sw.commands.build", "bitstream flow for a board: Vivado Tcl (Zynq) or open ECP5 flow"),
    "convert": ("sw.commands.convert", "convert an official SAM 2 checkpoint (.pt) to .safetensors, without torch"),
    "track": ("sw.commands.track", "track objects through a folder of video frames (golden SAM 2)"),
    "segment": ("sw.commands.segment", "segment an image from point/box prompts on the golden SAM 2"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam2fpga",
        description="SAM 2 on Zynq FPGAs: golden model, hardware generation, simulation, drivers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("sam2-fpga")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        parser.error(str(e))  # exits 2
    except CommandError as e:
        print(f"sam2fpga {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
