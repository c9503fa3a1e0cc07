"""`sam2fpga sweep`: array shapes (and engine choices) for a board -> resources, frame times, Pareto plot.

    sam2fpga sweep --board kv260 --rows 8,16,32 --cols 16,32
    sam2fpga sweep --board kv260 --rows 16 --cols 32 --engines gemm,attention,conv --estimate

Each configuration is the board's preset with rows, cols (and engines) replaced. DSPs: the structural
floor (hw.flows.estimate.dsp_floor; instant) or, with --estimate, yosys's estimate (LUT, FF, DSP, BRAM;
minutes per configuration, cached per configuration in the output folder). Times: `sam2fpga profile`'s
image embedding and steady-state video frame. Prints a table marking what fits the part and the Pareto
front (frame time vs DSPs, and LUTs when estimated); writes sweep.json and sweep.png. docs/profile.md.
"""
from __future__ import annotations

from pathlib import Path

from sw.errors import CommandError, UsageError

BOARDS = ("kv260", "zcu104", "pynq-z2")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser):
    parser.add_argument("--board", choices=BOARDS, default="kv260", help="board (its preset is the base)")
    parser.add_argument("--rows", default="16", help="array rows to try, comma-separated (default 16)")
    parser.add_argument("--cols", default="32", help="array columns to try, comma-separated (default 32)")
    parser.add_argument("--engines", help="comma-separated engines (default: the preset's)")
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "base_plus", "large"))
    parser.add_argument("--image-size", type=int, metavar="N", help="input size (default 1024)")
    parser.add_argument("--vector-lanes", type=int, default=0, metavar="L",
                        help="profile as if each configuration had a vector engine of L lanes")
    parser.add_argument("--estimate", action="store_true",
                        help="yosys resource estimate per configuration (minutes each; cached)")
    parser.add_argument("-o", "--out", type=Path, default=Path("build/sweep"), help="output folder")


def run(args) -> int:
    import json

    from hw.boards import board as get_board
    from hw.config import ENGINES, preset
    from hw.flows.estimate import EstimateError
    from sw.outputs import check_output_dir, write_text
    from sw.perf import sweep
    rows, cols = _ints(args.rows), _ints(args.cols)
    engines = [e.strip() for e in args.engines.split(",")] if args.engines else None
    unknown = [e for e in engines or () if e not in ENGINES]
    if unknown:
        raise UsageError(f"unknown engines {unknown} (known: {', '.join(ENGINES)})")
    if args.image_size is not None and (args.image_size < 128 or args.image_size % 128):
        raise UsageError(f"--image-size {args.image_size} must be a positive multiple of 128")
    if not rows or not cols:
        raise UsageError("--rows and --cols need at least one value each")
    out = check_output_dir(args.out)
    board = get_board(args.board)
    cfgs, bad = sweep.configs(preset(args.board), rows, cols, engines)
    for why in bad:
        print(f"skipped {why}")
    if not cfgs:
        raise CommandError("no valid configuration to sweep")
    points = []
    for cfg in cfgs:
        try:
            points.append(sweep.measure(cfg, board, args.model, args.image_size, args.vector_lanes, out,
                                        args.estimate))
        except EstimateError as e:
            raise CommandError(str(e)) from None
        p = points[-1]
        print(f"  {cfg.rows:2d} x {cfg.cols:2d}: {p.dsps} DSPs, frame {p.frame_s:.3f} s"
              + ("" if p.fits else f" (does not fit: {'; '.join(p.problems)})"), flush=True)
    sweep.mark_pareto(points)
    table = [p.row() for p in points]
    print(f"{'rows':>4s} {'cols':>4s} {'engines':32s} {'DSPs':>6s} {'LUTs':>8s} {'fits':5s} {'image s':>8s} "
          f"{'frame s':>8s} pareto")
    for r in table:
        luts = "-" if r["luts"] is None else f"{r['luts']:,d}"
        print(f"{r['rows']:4d} {r['cols']:4d} {r['engines']:32s} {r['dsps']:6d} {luts:>8s} {str(r['fits']):5s} "
              f"{r['image_s']:8.3f} {r['frame_s']:8.3f} {'*' if r['pareto'] else ''}")
    write_text(out / "sweep.json", json.dumps({"board": board.name, "model": args.model, "points": table}, indent=1))
    png = sweep.chart(points, out / "sweep.png", f"SAM 2.1 {args.model} on {board.name}: frame time vs resources")
    print(f"-> {out / 'sweep.json'}, {png}")
    return 0
