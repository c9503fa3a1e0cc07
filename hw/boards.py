"""The boards and their chips: the physical limits every preset must fit in.

The one place for part names and capacities (from the vendors' data sheets and
product briefs). Resource estimates are checked against these.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    name: str
    part: str              # the vendor part number the flow targets
    family: str            # yosys synth family: "xc7", "xcup" or "ecp5"
    luts: int
    ffs: int
    dsps: int
    bram36: int            # Xilinx BRAM36 tiles; for ECP5, EBR (18 Kb) blocks
    uram: int
    macs_per_dsp: int      # int8 MACs one DSP does a cycle where the product packs (the overlay's packed PE
                           # pair, WP486: DSP48E2 and DSP48E1; the ECP5 presets do not pack)
    axi_data_bits: int     # PS DDR port width the overlay's AXI master uses
    vendor: str            # "xilinx" (Vivado flow) or "lattice" (open flow)
    ps: str = ""           # Zynq processing system: "zynq_ultra_ps_e" or "processing_system7"
    vivado_board_part: str = ""   # Vivado board part (board files) for the PS presets (DDR, MIO)


BOARDS: dict[str, Board] = {b.name: b for b in [
    Board("kv260", "xck26-sfvc784-2LV-c", "xcup", 117_120, 234_240, 1_248, 144, 64, 2, 128, "xilinx",
          "zynq_ultra_ps_e", "xilinx.com:kv260_som:part0:1.4"),
    Board("zcu104", "xczu7ev-ffvc1156-2-e", "xcup", 230_400, 460_800, 1_728, 312, 96, 2, 128, "xilinx",
          "zynq_ultra_ps_e", "xilinx.com:zcu104:part0:1.1"),
    Board("pynq-z2", "xc7z020clg400-1", "xc7", 53_200, 106_400, 220, 140, 0, 2, 64, "xilinx",
          "processing_system7", "tul.com.tw:pynq-z2:part0:1.0"),
    Board("ulx3s-85f", "LFE5U-85F-6BG381C", "ecp5", 83_640, 83_640, 156, 208, 0, 1, 32, "lattice"),
]}


def board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
