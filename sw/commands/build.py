"""`sam2fpga build --board B [--preset P] [-o DIR]`: a bitstream flow for one board.

Zynq boards: the overlay's Verilog, a yosys resource estimate checked against
the part, and the Vivado batch Tcl flow (run when Vivado is on PATH).
ULX3S-85F (ECP5): the whole open flow, yosys + nextpnr + ecppack, with Fmax.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from hw.boards import BOARDS
from hw.isa import VERILOG_NAME as TOP
from sw import outputs

#: The share of each of the part's resources a preset aims to stay within (issue 15; room for Vivado's placer).
TARGET_SHARE = 85

#: The ECP5 flow's placement seeds, tried in turn while router2 cannot route a placement (`ulx3s` at seed 1
#: stalls at one overused wire; bitstreams/README.md, ULX3S section). `--seed N` tries N only.
ECP5_SEEDS = (1, 2, 3)

#: The preset each board builds unless told otherwise.
DEFAULT_PRESET = {"kv260": "kv260", "zcu104": "zcu104", "pynq-z2": "pynq-z2", "ulx3s-85f": "ulx3s"}


def add_arguments(parser):
    parser.add_argument("--board", required=True, choices=sorted(BOARDS), help="target board")
    parser.add_argument("--preset", help="overlay preset (default: the board's own, `ulx3s` for ulx3s-85f)")
    parser.add_argument("-o", "--out", type=Path, help="output folder (default: bitstreams/<board>/)")
    parser.add_argument("--jobs", type=int, default=4, help="Vivado implementation jobs (default 4)")
    parser.add_argument("--skip-estimate", action="store_true",
                        help="Zynq boards: skip the yosys estimate (minutes for the large presets)")
    parser.add_argument("--seed", type=int,
                        help=f"ulx3s-85f: nextpnr's placement seed (default: {', '.join(map(str, ECP5_SEEDS))} "
                             "in turn, the next where one does not route)")
    parser.add_argument("--placer", choices=("static", "heap"),
                        help="ulx3s-85f: nextpnr's placer (default static: it routes `ulx3s`, HeAP does not)")


def run(args) -> int:
    from hw.boards import board as get_board
    from hw.config import preset as get_preset
    from hw.flows.estimate import dsp_floor, dsp_floor_by_engine
    from sw.cli import CommandError, UsageError

    board = get_board(args.board)
    try:
        cfg = get_preset(args.preset or DEFAULT_PRESET[board.name])
    except ValueError as e:
        raise UsageError(str(e)) from None
    if board.vendor == "xilinx" and cfg.axi_data_bits != board.axi_data_bits:
        raise UsageError(f"preset {cfg.name!r} has a {cfg.axi_data_bits}-bit AXI master but {board.name}'s "
                         f"HP port is {board.axi_data_bits}-bit: pick a preset made for {board.name}")
    if board.vendor != "lattice" and (args.placer or args.seed is not None):
        raise UsageError("--seed and --placer choose nextpnr's placement: they are for --board ulx3s-85f; "
                         "Vivado places the Zynq boards")
    floors = dsp_floor_by_engine(cfg)
    print(f"[floor]    DSP blocks per engine, from the structure ({cfg.rows} x {cfg.cols} array, "
          f"{'two int8 MACs' if cfg.dsp_packing else 'one int8 MAC'} per DSP): "
          + ", ".join(f"{e} {n}" for e, n in floors.items()) + f"; {dsp_floor(cfg)} of {board.dsps}")
    if dsp_floor(cfg) > board.dsps:
        raise CommandError(f"preset {cfg.name!r} cannot fit {board.part}: its {cfg.rows} x {cfg.cols} array, "
                           f"requantisers and engines ({', '.join(cfg.engines)}) need at least {dsp_floor(cfg)} "
                           f"multipliers (DSP blocks), the part has {board.dsps}; pick a smaller preset")
    out = outputs.check_output_dir(args.out or Path("bitstreams") / board.name, "-o")
    report = {"board": board.name, "part": board.part, "preset": cfg.summary()}
    try:
        if board.vendor == "lattice":
            report |= _open_flow(cfg, board, out, args.seed, args.placer)
        else:
            verilog, signature = _generate(cfg, out)
            if not args.skip_estimate:
                report["estimate"] = _estimate(verilog, board, out)
            report |= _vivado_flow(cfg, signature, board, out, args.jobs)
    finally:
        outputs.write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    print(f"report: {out / 'report.json'}")
    return 0


def _generate(cfg, out: Path):
    """The overlay's Verilog, and its signature (ports) for the Tcl flow."""
    from hw.overlay import Overlay
    from hw.verilog import write_verilog
    print(f"[generate] overlay Verilog for preset {cfg.name} ({cfg.rows}x{cfg.cols} array, "
          f"{cfg.axi_data_bits}-bit AXI, {cfg.clock_mhz:g} MHz target)")
    overlay = Overlay(cfg)
    path = write_verilog(overlay, TOP, out)
    print(f"           {path}")
    return path, overlay.signature


def _estimate(verilog: Path, board, out: Path) -> dict:
    from hw.flows import estimate as est
    from sw.cli import CommandError
    print(f"[estimate] yosys synth_xilinx -family {board.family}, hierarchy kept (minutes; the 16 x 32 "
          "presets about 15)...")
    t0 = time.monotonic()
    try:
        res, parts = est.estimate_by_engine(verilog, TOP, board.family, out / "yosys",
                                            progress=lambda line: print(f"           {line}", flush=True))
    except est.EstimateError as e:
        raise CommandError(f"the resource estimate failed: {e}") from None
    caps = {"luts": board.luts, "ffs": board.ffs, "dsps": board.dsps, "bram36": board.bram36, "uram": board.uram}
    for k, cap in caps.items():
        # The part's LUTs hold logic and LUT memories alike (est.fits checks their sum).
        used = res.luts + res.lutram if k == "luts" else getattr(res, k)
        share = 100 * used / cap if cap else 0
        print(f"           {k:>6}: {used:>9g} / {cap:<9} ({share:5.1f} %)"
              + (f"  over the {TARGET_SHARE} % target" if share > TARGET_SHARE else "")
              + (f"  ({res.luts} logic + {res.lutram} as memory)" if k == "luts" else ""))
    print(f"           per engine  {'LUT':>8} {'FF':>8} {'DSP':>6} {'BRAM36':>7} {'URAM':>5} {'LUTRAM':>7}")
    for part, r in parts.items():
        print(f"           {part:<11} {r.luts:>8} {r.ffs:>8} {r.dsps:>6} {r.bram36:>7g} {r.uram:>5} {r.lutram:>7}")
    print(f"           ({time.monotonic() - t0:.0f} s; yosys estimates, Vivado's numbers will differ)")
    over = est.fits(res, board)
    if over:
        raise CommandError(f"preset does not fit {board.part}: " + "; ".join(over))
    return res.as_dict() | {"by_engine": {part: r.as_dict() for part, r in parts.items()}}


def _vivado_flow(cfg, signature, board, out: Path, jobs: int) -> dict:
    from hw.flows.vivado import vivado_tcl
    from sw.cli import CommandError
    design = f"sam2fpga_{board.name.replace('-', '_')}"
    tcl = out / f"{design}.tcl"
    outputs.write_text(tcl, vivado_tcl(signature=signature, top_name=TOP, verilog_file=f"{TOP}.v", board=board,
                                       clock_mhz=cfg.clock_mhz, axi_data_bits=cfg.axi_data_bits,
                                       axi_addr_bits=cfg.axi_addr_bits, design_name=design, jobs=jobs))
    print(f"[vivado]   Tcl flow: {tcl}")
    vivado = shutil.which("vivado")
    if vivado is None:
        print("           Vivado is not on PATH here, so the flow stops after generating.\n"
              f"           On a machine with Vivado (2022.1 or newer, with the {board.name} board files):\n"
              f"             cd {out} && vivado -mode batch -source {tcl.name}\n"
              f"           It writes {design}.bit and {design}.hwh; copy both to the board (see bitstreams/README.md).")
        return {"vivado": "not run (not on PATH)", "tcl": str(tcl)}
    proc = subprocess.run([vivado, "-mode", "batch", "-source", tcl.name, "-nojournal",
                           "-log", "vivado.log"], cwd=out)
    if proc.returncode != 0:
        raise CommandError(f"Vivado failed (exit {proc.returncode}): see {out / 'vivado.log'}")
    return {"vivado": "ok", "bitstream": str(out / f"{design}.bit"), "hwh": str(out / f"{design}.hwh")}


def _open_flow(cfg, board, out: Path, seed: int | None = None, placer: str | None = None) -> dict:
    from hw.flows.ecp5 import OVERLAY_PLACER, Ecp5FlowError, RoutingFailed, build_ecp5
    from hw.flows.tools import ToolMissing
    from hw.overlay import Overlay
    from sw.cli import CommandError
    placer = placer or OVERLAY_PLACER
    seeds = ECP5_SEEDS if seed is None else (seed,)
    t0 = time.monotonic()

    def progress(line):
        print(f"           {time.monotonic() - t0:5.0f} s  {line}", flush=True)
    for seed in seeds:
        print(f"[ecp5]     yosys synth_ecp5 + nextpnr-ecp5 ({placer} placer, seed {seed}) + ecppack for {board.part} "
              f"at {cfg.clock_mhz:g} MHz (minutes: 5 for `ulx3s-gemm`, 10-15 for `ulx3s`)...")
        progress("synthesis (yosys)")
        try:
            rep = build_ecp5(Overlay(cfg), TOP, out / "ecp5", target_mhz=cfg.clock_mhz, board=board.name, seed=seed,
                             placer=placer, port_registers=True, global_reset=True, progress=progress)
            break
        except RoutingFailed as e:
            if seed == seeds[-1]:
                tried = f" (seeds {', '.join(map(str, seeds))} tried)" if len(seeds) > 1 else ""
                raise CommandError(f"{e}{tried}") from None
            print(f"[ecp5]     seed {seed} does not route ({e.status}): the next seed", flush=True)
        except (ToolMissing, Ecp5FlowError) as e:
            raise CommandError(str(e)) from None
    for k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD"):
        used, cap = rep.utilisation.get(k, (0, 0))
        print(f"           {k:>12}: {used:>6} / {cap}")
    verdict = "meets" if rep.meets_timing else "MISSES"
    print(f"           Fmax {rep.fmax_mhz:.1f} MHz {verdict} the {cfg.clock_mhz:g} MHz target "
          f"({time.monotonic() - t0:.0f} s); bitstream {rep.bitstream}")
    result = {"fmax_mhz": rep.fmax_mhz, "target_mhz": cfg.clock_mhz, "seed": seed, "utilisation": rep.utilisation,
              "bitstream": str(rep.bitstream), "critical_path": rep.critical_path}
    if not rep.meets_timing:
        outputs.write_text(out / "critical_path.txt", rep.critical_path)
        raise CommandError(f"timing not met: Fmax {rep.fmax_mhz:.1f} MHz < {cfg.clock_mhz:g} MHz "
                           f"(critical path in {out / 'critical_path.txt'})")
    return result
