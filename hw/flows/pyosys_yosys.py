"""`yosys [-q] [-l LOG] [-p COMMANDS] [SCRIPT.ys ...]` on pyosys (PyPI's native libyosys build).

YoWASP's yosys is WebAssembly and stops at 4 GiB of memory, which the 16 x 32 board presets with every
engine need more than; pyosys has no such limit and ships no `yosys` executable, so hw.flows.estimate
runs this file with the interpreter instead (a plain script: it imports nothing from the project, as
yosys runs in its work folder). yosys's log goes to LOG (or nowhere); errors to stderr, exit 1.
"""
import argparse
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pyosys_yosys")
    ap.add_argument("-q", action="store_true", help="(the log goes to -l only, as yosys -q)")
    ap.add_argument("-l", dest="log", default=os.devnull)
    ap.add_argument("-p", dest="commands", default="")
    ap.add_argument("scripts", nargs="*")
    args = ap.parse_args(argv)
    # libyosys logs to the process's stdout: point file descriptor 1 at the log before it loads.
    sys.stdout.flush()
    with open(args.log, "w") as log:
        os.dup2(log.fileno(), 1)
    from pyosys import libyosys as ys
    design = ys.Design()
    for script in args.scripts:
        ys.run_pass(f"script {script}", design)     # a yosys error ends the process (exit 1, stderr)
    if args.commands:
        ys.run_pass(args.commands, design)
    return 0


if __name__ == "__main__":
    sys.exit(main())
