"""GELU fused into the GEMM store (engine store_lut) against a linear and then the vector engine's GELU.

`python -m benchmarks fused [--preset bench16]`. The MLP fc1 layers of SAM 2.1 tiny's Hiera image encoder
at 1024 px (tokens x dim -> 4 dim, one per stage), timed by the sim cycle model (program_cycles: the
cycles the RTL is checked against) with their DDR bytes (sw.compile.graph.descriptor_ddr_bytes):
`fused` = the linear with lut=GELU; `separate` = the plain linear, then a VECTOR LUT pass over its output
(which reads and writes the 4 dim hidden tensor once more). Cycles only: no data is computed.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import report

#: (stage, tokens, dim) of Hiera tiny at 1024 px (patch stride 4, q-pool 2x2 per stage).
FC1 = ((1, 256 * 256, 96), (2, 128 * 128, 192), (3, 64 * 64, 384), (4, 32 * 32, 768))


def costs(cfg, m: int, k: int, n: int) -> dict:
    """(cycles, DDR bytes) of fc1 + GELU, fused and separate, for an M x K -> N layer (zero data)."""
    from golden_model.intvec import LutParams
    from sw.compile.graph import program_cost
    from sw.compile.linear import compile_linear
    from sw.compile.vector import compile_vector

    a, b, ones = np.zeros((m, k), np.int8), np.zeros((k, n), np.int8), np.ones(n, np.int64)
    gelu = LutParams.gelu(0.05, 0.02)
    fused = program_cost(compile_linear(cfg, a, b, None, ones, ones, lut=gelu, max_ddr_bytes=1 << 31))
    plain = program_cost(compile_linear(cfg, a, b, None, ones, ones, max_ddr_bytes=1 << 31))
    vec = program_cost(compile_vector(cfg, "lut", np.zeros((m, n), np.int8), gelu, max_ddr_bytes=1 << 31))
    return {"fused": fused, "linear": plain, "vector_gelu": vec}


def table_resources(cfg, family: str = "xcup") -> dict:
    """yosys estimate of the store table alone (StoreTable and its write-ported memory, cfg.requant_lanes
    lanes): what store_lut adds to the GEMM store."""
    from amaranth import Module, signed
    from amaranth.lib import data, stream, wiring
    from amaranth.lib.memory import Memory
    from amaranth.lib.wiring import In, Out

    from benchmarks.common import BENCH_DIR
    from golden_model.intops import OUT_BITS
    from hw.flows.estimate import estimate
    from hw.gemm.engine import EngineLayouts, StoreTable
    from hw.verilog import write_verilog

    layouts = EngineLayouts(cfg)

    class Table(wiring.Component):
        def __init__(self):
            self.mems = [Memory(shape=layouts.lut_write.members["data"], depth=layouts.lut_depth, init=[])
                         for _ in range(cfg.requant_lanes)]
            self.stage = StoreTable(cfg, [mem.read_port() for mem in self.mems])
            lanes = data.ArrayLayout(signed(OUT_BITS), cfg.requant_lanes)
            super().__init__({"wr": In(stream.Signature(layouts.lut_write)), "enable": In(1),
                              "i": In(stream.Signature(lanes)), "o": Out(stream.Signature(lanes))})

        def elaborate(self, platform):
            m = Module()
            m.submodules.stage = self.stage
            m.d.comb += [self.wr.ready.eq(1), self.stage.enable.eq(self.enable)]
            for l, mem in enumerate(self.mems):
                m.submodules[f"mem{l}"] = mem
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(self.wr.payload.addr), wp.data.eq(self.wr.payload.data), wp.en.eq(self.wr.valid)]
            wiring.connect(m, wiring.flipped(self.i), self.stage.i)
            wiring.connect(m, self.stage.o, wiring.flipped(self.o))
            return m

    folder = BENCH_DIR / f"store_table_{cfg.name}"
    verilog = write_verilog(Table(), "store_table", folder)
    return estimate(verilog, "store_table", family, folder).as_dict()


def run(preset_name: str = "bench16", resources: bool = True) -> None:
    from hw.config import preset
    cfg = preset(preset_name)
    rows = []
    for stage, m, d in FC1:
        c = costs(cfg, m, d, 4 * d)
        (fc, fb), (lc, lb), (vc, vb) = c["fused"], c["linear"], c["vector_gelu"]
        rows.append({"stage": stage, "fc1": f"{m}x{d}->{4 * d}", "fused_cycles": fc, "separate_cycles": lc + vc,
                     "linear_cycles": lc, "gelu_cycles": vc, "saved_cycles": f"{1 - fc / (lc + vc):.1%}",
                     "fused_MB": round(fb / 1e6, 2), "separate_MB": round((lb + vb) / 1e6, 2),
                     "saved_MB": round((lb + vb - fb) / 1e6, 2)})
    notes = (f"{cfg.name} overlay ({cfg.rows} x {cfg.cols}, {cfg.vec_lanes}-lane vector engine): fc1 + GELU of "
             "Hiera tiny's MLPs at 1024 px, sim cycle model, one block per stage")
    if resources:
        r = table_resources(cfg)
        notes += (f"; the store table ({cfg.requant_lanes} lanes x 256 x int8), yosys synth_xilinx xcup: "
                  f"{r['luts']} LUTs ({r['lutram']} as LUTRAM), {r['ffs']} FFs, {r['bram36']} BRAM36, {r['dsps']} DSPs")
    report(f"fused-{cfg.name}", rows, notes=notes)


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="bench16")
    p.add_argument("--no-resources", action="store_true", help="skip the yosys estimate of the table")
    args = p.parse_args()
    run(args.preset, not args.no_resources)
