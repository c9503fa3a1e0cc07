"""Where the LUTs, FFs and DSPs go: each engine synthesised on its own with yosys synth_xilinx
(and the GEMM array, the P V array, the store's requantisers), for one configuration.

    python -m hw.flows.breakdown --preset bench16 [--set dsp_packing=False] [--family xcup]
    python -m hw.flows.breakdown --preset zcu104 --only attention --hierarchy    # and per submodule

Each engine flat on its own (or, with --hierarchy, its modules kept apart as `sam2fpga build` keeps
them: the same counts as that engine's part of the build's estimate, and a row per submodule), its ports the design's I/O (nothing is optimised away), for sizes and
settings no preset has; `sam2fpga build` splits a whole overlay's (hierarchical) estimate by engine
(hw.flows.estimate.estimate_by_engine), which with YoWASP's yosys ran out of its 4 GiB. Prints a table
and writes `<out>/breakdown.json`.
"""
from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

from hw.flows.estimate import cell_resources, count_cells, run_yosys


def components(cfg) -> dict:
    """{name: (make the component, what it is)} for the engines of `cfg`."""
    from hw.gemm.array import SystolicArray
    from hw.gemm.engine import GemmEngine
    from hw.requant import Requantizer
    parts = {
        "gemm_array": (lambda: SystolicArray(cfg.rows, cfg.cols, packed=cfg.dsp_packing),
                       f"systolic array {cfg.rows} x {cfg.cols}{' (packed)' if cfg.dsp_packing else ''}"),
        "requantiser": (Requantizer, "one requantiser lane (the store has cfg.requant_lanes)"),
        "gemm_engine": (lambda: GemmEngine(cfg), "GEMM engine: array, scratchpads, store with its requantisers"),
        "gemm_store": (lambda: _StoreAlone(cfg), "GEMM store unit with its requantisers (and the memories it reads)"),
    }
    if "load_t" in cfg.engines:
        from hw.gemm.transpose_load import TransposeLoader
        parts["load_t"] = (lambda: TransposeLoader(cfg, max(cfg.rows, cfg.cols)), "the transposing LOAD unit")
    if "attention" in cfg.engines:
        from hw.attention.engine import AttentionEngine
        from hw.attention.pv_array import PVArray
        from hw.gemm.engine import abits
        parts["attention"] = (lambda: AttentionEngine(cfg), "attention engine: softmax, P V array, normaliser, O memories")
        parts["pv_array"] = (lambda: PVArray(cfg.rows, cfg.cols, abits(cfg.attn_max_dim), cfg.pv_preadd,
                                             cfg.attn_pv_lut_rows),
                             f"attention's P V array {cfg.rows} x {cfg.cols}"
                             + (f", {cfg.attn_pv_lut_rows} rows in LUTs" if cfg.attn_pv_lut_rows else ""))
        from hw.attention.normalise import Normaliser
        from hw.attention.softmax import OnlineSoftmax
        parts["softmax"] = (lambda: OnlineSoftmax(cfg.cols), f"attention's online softmax, {cfg.cols} lanes")
        parts["normaliser"] = (lambda: Normaliser(cfg.cols, cfg.norm_lanes),
                               f"attention's normaliser, {cfg.norm_lanes} of {cfg.cols} lanes")
    if "conv" in cfg.engines:
        from hw.conv.im2col import Im2colLoader
        parts["conv"] = (lambda: Im2colLoader(cfg), "convolution: the im2col loader (the MACs are the GEMM array's)")
    if "depthwise" in cfg.engines:
        from hw.conv.depthwise import DepthwiseUnit
        parts["depthwise"] = (lambda: DepthwiseUnit(cfg), f"depthwise engine, {cfg.dw_lanes} lanes")
    if "vector" in cfg.engines:
        from hw.vector.unit import VectorUnit
        parts["vector"] = (lambda: VectorUnit(cfg), f"vector engine and its DMA, {cfg.vec_lanes} lanes")
    return parts


def _StoreAlone(cfg):
    """The GEMM engine's store unit with the memories it reads (their write ports its inputs), as in GemmEngine."""
    from amaranth import Module, unsigned
    from amaranth.lib import data, stream, wiring
    from amaranth.lib.memory import Memory
    from amaranth.lib.wiring import In, Out
    from hw.gemm.array import ACC, INT8
    from hw.gemm.engine import AddParams, ChannelParams, EngineLayouts, GemmStore

    class StoreAlone(wiring.Component):
        def __init__(self):
            self.layouts = L = EngineLayouts(cfg)
            ports = {"acc_wr": In(stream.Signature(L.acc_write)), "p_wr": In(stream.Signature(L.p_write)),
                     "cmd": In(stream.Signature(L.store)), "out": Out(stream.Signature(L.out)), "busy": Out(1)}
            if "store_lut" in cfg.engines:
                ports["lut_wr"] = In(stream.Signature(L.lut_write))
            if "store_add" in cfg.engines:
                ports["res_wr"] = In(stream.Signature(L.res_write))
            super().__init__(ports)

        def elaborate(self, platform):
            m = Module()
            m.submodules.acc_mem = acc = Memory(shape=data.ArrayLayout(ACC, cfg.cols), depth=cfg.acc_depth, init=[])
            m.submodules.p_mem = pm = Memory(shape=data.ArrayLayout(ChannelParams, cfg.cols), depth=cfg.param_depth,
                                             init=[])
            writes = [(self.acc_wr, acc), (self.p_wr, pm)]
            res = add = None
            if "store_add" in cfg.engines:
                m.submodules.res_mem = res = Memory(shape=data.ArrayLayout(INT8, cfg.cols), depth=cfg.acc_depth, init=[])
                m.submodules.add_mem = add = Memory(shape=AddParams, depth=cfg.param_depth, init=[])
                writes.append((self.res_wr, res))
                wp = add.write_port()
                m.d.comb += [wp.addr.eq(self.p_wr.payload.addr), wp.data.eq(self.p_wr.payload.add), wp.en.eq(self.p_wr.valid)]
            luts = []
            if "store_lut" in cfg.engines:
                for i in range(cfg.requant_lanes):
                    m.submodules[f"lut_mem{i}"] = mem = Memory(shape=unsigned(cfg.axi_data_bits),
                                                               depth=self.layouts.lut_depth, init=[])
                    writes.append((self.lut_wr, mem))
                    luts.append(mem)
            for port, mem in writes:
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(port.payload.addr), wp.data.eq(port.payload.data), wp.en.eq(port.valid),
                             port.ready.eq(1)]
            m.submodules.store_unit = su = GemmStore(cfg, acc, pm, luts, res, add)
            wiring.connect(m, wiring.flipped(self.cmd), su.cmd)
            wiring.connect(m, su.out, wiring.flipped(self.out))
            m.d.comb += self.busy.eq(su.busy)
            return m

    return StoreAlone()


def main(argv=None) -> int:
    from hw.config import preset
    from hw.verilog import write_verilog
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench16")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field (Python literal), e.g. dsp_packing=False")
    ap.add_argument("--family", default="xcup", choices=("xc7", "xcup"))
    ap.add_argument("--only", nargs="*", help="these components only")
    ap.add_argument("--hierarchy", action="store_true",
                    help="keep each component's modules apart (as `sam2fpga build`) and print each one's counts")
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args(argv)
    changes = {k: ast.literal_eval(v) for k, _, v in (item.partition("=") for item in args.set)}
    cfg = preset(args.preset).replace(**changes)
    out = args.out or Path("build/breakdown") / f"{cfg.name}-{args.family}"
    results = {}
    print(f"{cfg.name} {changes or ''}: {cfg.rows} x {cfg.cols}, engines {', '.join(cfg.engines)}; "
          f"yosys synth_xilinx -family {args.family} per component", flush=True)
    print(f"{'component':<14} {'LUT':>7} {'FF':>7} {'DSP':>5} {'BRAM36':>7} {'URAM':>5} {'LUTRAM':>7} {'s':>5}  what", flush=True)
    for name, (make, what) in components(cfg).items():
        if args.only and name not in args.only:
            continue
        t0 = time.monotonic()
        verilog = write_verilog(make(), name, out / name)
        stat = run_yosys(verilog, name, args.family, out / name / "yosys", abc9=False, flatten=not args.hierarchy)
        r = count_cells(stat, name)
        results[name] = r.as_dict() | {"what": what, "yosys_s": round(time.monotonic() - t0)}
        print(f"{name:<14} {r.luts:>7} {r.ffs:>7} {r.dsps:>5} {r.bram36:>7g} {r.uram:>5} {r.lutram:>7} "
              f"{time.monotonic() - t0:>5.0f}  {what}", flush=True)
        if args.hierarchy:
            modules = {mod.lstrip("\\"): cell_resources(cells["num_cells_by_type"])
                       for mod, cells in stat["modules"].items()}
            results[name]["modules"] = {mod: m.as_dict() for mod, m in modules.items()}
            for mod, m in modules.items():
                print(f"  {mod:<12} {m.luts:>7} {m.ffs:>7} {m.dsps:>5} {m.bram36:>7g} {m.uram:>5} {m.lutram:>7}  "
                      "(its own cells)", flush=True)
    (out / "breakdown.json").write_text(json.dumps({"config": cfg.summary(), "family": args.family,
                                                    "components": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
