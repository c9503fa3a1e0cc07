"""`sam2fpga generate --preset NAME -o DIR`: the overlay's Verilog and a summary of its parameters."""
from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser):
    from hw.config import PRESETS
    parser.add_argument("--preset", default="sim", choices=sorted(PRESETS), help="overlay configuration (default: sim)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output directory")


def run(args) -> int:
    from hw import isa
    from hw.config import preset
    from hw.overlay import VERILOG_NAME, Overlay
    from hw.verilog import write_verilog
    from sw import outputs

    outputs.check_output_dir(args.out, "-o")
    cfg = preset(args.preset)
    path = write_verilog(Overlay(cfg), VERILOG_NAME, args.out)
    summary = {"config": cfg.summary(), "top": VERILOG_NAME, "verilog": path.name,
               "ports": {"s_axil": f"AXI4-Lite slave, {isa.CSR_ADDR_BITS}-bit address, 32-bit data",
                         "m_axi": f"AXI4 master, {cfg.axi_addr_bits}-bit address, {cfg.axi_data_bits}-bit data",
                         "irq": "level, IRQ_ENABLE & (DONE | ERROR)"},
               "registers": {r.name: hex(r.offset) for r in isa.REGISTERS},
               "isa_version": isa.ISA_VERSION}
    outputs.write_text(args.out / "overlay.json", json.dumps(summary, indent=2))
    print(f"wrote {path} ({len(path.read_text().splitlines())} lines) and {args.out / 'overlay.json'}")
    print(f"preset {cfg.name}: {cfg.rows} x {cfg.cols} int8 MACs, AXI {cfg.axi_data_bits}-bit, "
          f"scratchpads A {cfg.a_depth} x {cfg.rows} B, B {cfg.b_depth} x {cfg.cols} B, "
          f"acc {cfg.acc_depth} x {cfg.cols} x int32, params {cfg.param_depth}; engines {', '.join(cfg.engines)}; "
          f"target {cfg.clock_mhz:g} MHz ({cfg.board})")
    return 0
