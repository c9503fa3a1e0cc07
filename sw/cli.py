"""`sam2fpga`: the project's one command line.

Each subcommand lives in its own module under `sw/commands/` with two names:
`add_arguments(parser)` and `run(args) -> int`. Add a module and list it in
COMMANDS to add a subcommand; imports are lazy so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
import threading

from sw import outputs

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
    "quantize": ("sw.commands.quantize", "calibrate SAM 2 and write its int8 model (the overlay's integer reference)"),
    "plan": ("sw.commands.plan", "where each node of the int8 SAM 2 graph runs on a preset (engine or host), and why"),
    "profile": ("sw.commands.profile", "time SAM 2 on a preset layer by layer without data: table, JSON, PNG"),
    "sweep": ("sw.commands.sweep", "array shapes and engines for a board: resources, frame times, Pareto plot"),
}


class Parser(argparse.ArgumentParser):
    """argparse, except that a value starting with a minus sign and a digit is a value, not an option:
    `--point -5,10` reaches the command (which says the point lies outside the image) instead of
    argparse's "expected one argument". No option of ours looks like a number, so nothing is lost.
    Subcommand parsers are of this class too (add_subparsers uses the parent's class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    """Run one subcommand. Expected failures are one line on stderr: usage errors exit 2, other
    errors 1 (OSError and MemoryError included: full disk, read-only folder, too big a problem),
    Ctrl-C 130 (start-up included)."""
    name = "sam2fpga"
    outputs.interrupted = False
    previous = _catch_sigint()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        name = f"sam2fpga {args.command}"
        module = importlib.import_module(args._module)
        try:
            code = int(module.run(args) or 0)
        except UsageError as e:
            parser.error(str(e))  # exits 2
        if outputs.interrupted:            # a library swallowed the KeyboardInterrupt
            raise KeyboardInterrupt
        return code
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except CommandError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{name}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{name}: error: out of memory (the problem is too big for this machine's RAM)", file=sys.stderr)
        return 1
    except Exception as e:
        if not _caused_by_interrupt(e):
            raise
        print(f"{name}: interrupted", file=sys.stderr)     # e.g. numpy turns Ctrl-C in its import into ImportError
        return 130
    finally:
        outputs.interrupted = False        # (a library using sw.outputs after main() writes as before)
        if previous is not None:
            signal.signal(signal.SIGINT, previous[0])
            sys.unraisablehook = previous[1]


def _on_sigint(signum, frame):
    outputs.interrupted = True
    raise KeyboardInterrupt


def _catch_sigint():
    """Python's own Ctrl-C handling that also remembers the Ctrl-C (sw.outputs.interrupted), so that a
    KeyboardInterrupt some library's bare `except:` swallows still ends the command as interrupted, its outputs
    unwritten. Only where Python handles SIGINT itself (not ignored, as for a shell's background job) and in the
    main thread; returns the SIGINT handler and unraisable hook to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    before = sys.unraisablehook

    def quiet(unraisable):
        """A KeyboardInterrupt raised where Python cannot pass it on (a weakref callback of an import's module
        lock, a __del__): CPython would print it as ignored and run on. _on_sigint has remembered it
        (sw.outputs.interrupted): the command runs on to its first output, which is not written, and ends as
        interrupted."""
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            before(unraisable)
    sys.unraisablehook = quiet
    return signal.signal(signal.SIGINT, _on_sigint), before


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def describe_os_error(e: OSError) -> str:
    """`[Errno 28] No space left on device: 'x.png'` as `x.png: No space left on device`."""
    if e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return e.strerror or str(e)


# Imported last: once it is loaded only main() is left to run, which turns a Ctrl-C into one line
# (tests/test_bad_inputs.py sends SIGINT from the moment `-X importtime` shows it).
from sw.errors import CommandError, UsageError  # noqa: E402, F401  (subcommands import them from here)

if __name__ == "__main__":
    sys.exit(main())
