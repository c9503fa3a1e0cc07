"""GELU and the residual add fused into the GEMM store (engines store_lut, store_add) against a linear and
then the vector engine's pass.

`python -m benchmarks fused [--preset bench16]`. The MLP fc1 layers of SAM 2.1 tiny's Hiera image encoder
at 1024 px (tokens x dim -> 4 dim, one per stage), timed by the sim cycle model (program_cycles: the
cycles the RTL is checked against) with their DDR bytes (sw.compile.graph.descriptor_ddr_bytes):
`fused` = the linear with lut=GELU; `separate` = the plain linear, then a VECTOR LUT pass over its output
(which reads and writes the 4 dim hidden tensor once more). Then the residual adds: each block's fc2
(tokens x 4 dim -> dim) and the global-attention blocks' proj (tokens x dim -> dim) with the add in the
store (residual=, add=) against the plain linear and a VECTOR ADD (which reads the projection's output and
the residual and writes the sum), per block and summed over the image encoder (one frame).
Cycles only: no data is computed.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import report

#: (stage, tokens, dim) of Hiera tiny at 1024 px (patch stride 4, q-pool 2x2 per stage).
FC1 = ((1, 256 * 256, 96), (2, 128 * 128, 192), (3, 64 * 64, 384), (4, 32 * 32, 768))
#: Hiera tiny's blocks per stage and its global-attention blocks (their proj feeds the residual add directly;
#: a windowed block's proj output goes through the window unpartition first, so its add stays a vector pass).
BLOCKS, GLOBAL_BLOCKS = (1, 2, 7, 2), (5, 7, 9)


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


def add_costs(cfg, m: int, k: int, n: int) -> dict:
    """(cycles, DDR bytes) of a linear M x K -> N + residual add, fused and separate (zero data)."""
    from golden_model.intvec import AddParams
    from sw.compile.graph import program_cost
    from sw.compile.linear import compile_linear
    from sw.compile.vector import compile_vector

    a, b, ones, x = np.zeros((m, k), np.int8), np.zeros((k, n), np.int8), np.ones(n, np.int64), np.zeros((m, n), np.int8)
    p = AddParams.make(0.05, 0.08, 0.1)
    fused = program_cost(compile_linear(cfg, a, b, None, ones, ones, residual=x, add=p, max_ddr_bytes=1 << 31))
    plain = program_cost(compile_linear(cfg, a, b, None, ones, ones, max_ddr_bytes=1 << 31))
    vec = program_cost(compile_vector(cfg, "add", x, p, b=x, max_ddr_bytes=1 << 31))
    return {"fused": fused, "linear": plain, "vector_add": vec}


def add_rows(cfg) -> tuple[list[dict], dict]:
    """Per stage, one block's fused adds (fc2, and proj in a global-attention block), and the frame's totals."""
    rows, frame = [], {"fused_cycles": 0, "separate_cycles": 0, "saved_MB": 0.0, "adds": 0}
    first = 0
    for (stage, m, d), blocks in zip(FC1, BLOCKS):
        layers = [("fc2", 4 * d, blocks)]
        globals_here = sum(first <= g < first + blocks for g in GLOBAL_BLOCKS)
        if globals_here:
            layers.append(("proj", d, globals_here))
        first += blocks
        for name, k, count in layers:
            c = add_costs(cfg, m, k, d)
            (fc, fb), (lc, lb), (vc, vb) = c["fused"], c["linear"], c["vector_add"]
            saved = (lb + vb - fb) / 1e6
            rows.append({"stage": stage, "layer": f"{name} {m}x{k}->{d}", "per_frame": count, "fused_cycles": fc,
                         "separate_cycles": lc + vc, "saved_cycles": f"{1 - fc / (lc + vc):.1%}",
                         "fused_MB": round(fb / 1e6, 2), "separate_MB": round((lb + vb) / 1e6, 2),
                         "saved_MB": round(saved, 2)})
            frame["fused_cycles"] += count * fc
            frame["separate_cycles"] += count * (lc + vc)
            frame["saved_MB"] += count * saved
            frame["adds"] += count
    return rows, frame


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


def add_resources(cfg, family: str = "xcup") -> dict:
    """yosys estimate of the residual add alone (StoreAdd, cfg.requant_lanes lanes, and the RES memory of
    acc_depth x C int8 with its write and read ports): most of what store_add adds to the GEMM store (besides
    the residual row's two register stages, C x 16 FFs, the chunk FIFO and the add's parameter memory)."""
    from amaranth import Module
    from amaranth.lib import stream, wiring
    from amaranth.lib.memory import Memory
    from amaranth.lib.wiring import In, Out

    from benchmarks.common import BENCH_DIR
    from hw.flows.estimate import estimate
    from hw.gemm.engine import AddParams, EngineLayouts, StoreAdd, abits
    from hw.verilog import write_verilog

    layouts = EngineLayouts(cfg)
    row = layouts.res_write.members["data"]

    class Add(wiring.Component):
        def __init__(self):
            self.mem = Memory(shape=row, depth=cfg.acc_depth, init=[])
            self.stage = StoreAdd(cfg.requant_lanes)
            super().__init__({"wr": In(stream.Signature(layouts.res_write)), "rd_addr": In(abits(cfg.acc_depth)),
                              "rd": Out(row), "enable": In(1), "params": In(AddParams),
                              "i": In(stream.Signature(self.stage.i.payload.shape())),
                              "o": Out(stream.Signature(self.stage.o.payload.shape()))})

        def elaborate(self, platform):
            m = Module()
            m.submodules.stage, m.submodules.mem = self.stage, self.mem
            wp, rp = self.mem.write_port(), self.mem.read_port()
            m.d.comb += [self.wr.ready.eq(1), wp.addr.eq(self.wr.payload.addr), wp.data.eq(self.wr.payload.data),
                         wp.en.eq(self.wr.valid), rp.addr.eq(self.rd_addr), self.rd.eq(rp.data),
                         self.stage.enable.eq(self.enable), self.stage.params.eq(self.params)]
            wiring.connect(m, wiring.flipped(self.i), self.stage.i)
            wiring.connect(m, self.stage.o, wiring.flipped(self.o))
            return m

    folder = BENCH_DIR / f"store_add_{cfg.name}"
    verilog = write_verilog(Add(), "store_add", folder)
    return estimate(verilog, "store_add", family, folder, abc9=False).as_dict()     # (abc9 asserts on it)


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
    if "store_add" in cfg.engines:
        rows, frame = add_rows(cfg)
        ms = 1e3 / (cfg.clock_mhz * 1e6)
        notes = (f"{cfg.name}: linear + residual add of Hiera tiny's blocks at 1024 px (per stage one block's fc2, "
                 f"and proj in the global-attention blocks), sim cycle model; per frame ({frame['adds']} fused adds): "
                 f"{frame['fused_cycles']:,} cycles fused vs {frame['separate_cycles']:,} separate "
                 f"({frame['fused_cycles'] * ms:.1f} vs {frame['separate_cycles'] * ms:.1f} ms at {cfg.clock_mhz:g} MHz), "
                 f"{frame['saved_MB']:.1f} MB less DDR traffic")
        if resources:
            r = add_resources(cfg)
            notes += (f"; the add ({cfg.requant_lanes} lanes, RES {cfg.acc_depth} x {cfg.cols} int8), yosys synth_xilinx "
                      f"xcup: {r['luts']} LUTs ({r['lutram']} as LUTRAM), {r['ffs']} FFs, {r['bram36']} BRAM36, "
                      f"{r['dsps']} DSPs")
        report(f"fused-add-{cfg.name}", rows, notes=notes)


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="bench16")
    p.add_argument("--no-resources", action="store_true", help="skip the yosys estimate of the table")
    args = p.parse_args()
    run(args.preset, not args.no_resources)
