"""Where the LUTs and FFs go: yosys synth_xilinx with the module hierarchy kept, counted per subtree.

    python -m hw.flows.breakdown --preset bench16 [--set dsp_packing=False] [--family xcup] [--depth 4]

The flat estimate (hw.flows.estimate, what `sam2fpga build` runs) is the total to trust: keeping the
hierarchy stops optimisation across module boundaries (and runs the classic abc, as abc9 fails on the
hierarchical overlay), so its totals differ by a few per cent. Writes the table to stdout and
`<out>/breakdown.json`.
"""
from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

from hw.flows.estimate import Resources, cell_resources, run_yosys


def subtree_resources(stat: dict, top: str) -> dict[str, Resources]:
    """{instance path: Resources of the instance and everything below it}, from a hierarchical `stat -json`."""
    modules = {name.lstrip("\\"): m.get("num_cells_by_type", {}) for name, m in stat["modules"].items()}
    memo: dict[str, Resources] = {}

    def total(mod: str) -> Resources:
        if mod not in memo:
            r = cell_resources(modules[mod])
            for cell, n in modules[mod].items():
                child = cell.lstrip("\\")
                if child in modules:
                    c = total(child)
                    for k, v in c.as_dict().items():
                        setattr(r, k, getattr(r, k) + n * v)
            memo[mod] = r
        return memo[mod]

    return {mod: total(mod) for mod in modules if mod == top or mod.startswith(top + ".")}


def main(argv=None) -> int:
    from hw.config import preset
    from hw.overlay import VERILOG_NAME, Overlay
    from hw.verilog import write_verilog
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench16")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field (Python literal), e.g. engines=('gemm',)")
    ap.add_argument("--family", default="xcup", choices=("xc7", "xcup"))
    ap.add_argument("--depth", type=int, default=4, help="hierarchy levels shown")
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args(argv)
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = ast.literal_eval(value)
    cfg = preset(args.preset).replace(**changes)
    out = args.out or Path("build/breakdown") / cfg.name
    verilog = write_verilog(Overlay(cfg), VERILOG_NAME, out)
    t0 = time.monotonic()
    stat = run_yosys(verilog, VERILOG_NAME, args.family, out / "yosys", abc9=False, flatten=False,
                     progress=lambda line: print(line, flush=True))
    tree = subtree_resources(stat, VERILOG_NAME)
    print(f"{cfg.name} {changes or ''}: {cfg.rows} x {cfg.cols}, engines {', '.join(cfg.engines)}; "
          f"yosys synth_xilinx -family {args.family}, hierarchy kept ({time.monotonic() - t0:.0f} s)")
    print(f"{'module':<60} {'LUT':>8} {'FF':>8} {'DSP':>6} {'BRAM36':>7} {'LUTRAM':>7}")
    for mod in sorted(tree):
        if mod.count(".") > args.depth:
            continue
        r = tree[mod]
        print(f"{mod:<60} {r.luts:>8} {r.ffs:>8} {r.dsps:>6} {r.bram36:>7g} {r.lutram:>7}")
    (out / "breakdown.json").write_text(json.dumps({"config": cfg.summary(), "family": args.family,
                                                    "modules": {k: v.as_dict() for k, v in tree.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
