"""Vector engine: RTL-simulated cycles of each op against the sim cycle model, and the steady state.

`python -m benchmarks vector [--preset sim]`. Each op (sam2fpga sim vector's random data) at D = 256 on
the overlay under Verilator and on the sim model, both checked bit for bit against golden_model.intvec;
`model_err`: the sim cycle model against the RTL; `steady`: the extra elements of a call twice as
long over its extra cycles (same tables), against the engine's bound (L lanes) and the DDR port's
(sw.backends.sim_vector.bounds: a beat per cycle each way; add reads two rows per row).
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import report

D = 256
OPS = ("layernorm", "gelu", "add", "rope", "maxpool", "upsample")


def run(preset_name: str = "sim") -> None:
    from golden_model import intvec
    from hw.config import preset
    from sw.backends.sim_vector import bounds
    from sw.commands.sim import vector_case
    from sw.compile.vector import OPS as VOPS
    from sw.compile.vector import elements
    from sw.runtime.driver import Driver

    cfg = preset(preset_name)
    rtl, sim = Driver(cfg, "rtl", ddr_bytes=1 << 24), Driver(cfg, "sim", ddr_bytes=1 << 24)
    rows = []
    for op in OPS:
        image = op in ("maxpool", "upsample")
        name, _, p, kw, _ = vector_case(op, 64, D, 16, np.random.default_rng(0), cfg.vec_lanes)   # one table for both
        got = {}
        for n in (64, 128):
            rng = np.random.default_rng(n)
            name, x, p2, kw2, want = vector_case(op, n // 8 if image else n, D, 16, rng, cfg.vec_lanes)
            if op == "rope":
                p2, kw2, want = p, kw, intvec.rope(x, p)
            assert np.array_equal(rtl.vector(name, x, p2, **kw2), want), op
            assert np.array_equal(sim.vector(name, x, p2, **kw2), want), op
            got[n] = (rtl.last_run.cycles, sim.last_run.cycles, elements(rtl.last_programs[0]), x.shape)
        (c1, _, e1, _), (c2, s2, e2, shape) = got[64], got[128]
        engine, ddr = bounds(cfg, VOPS[name][0], D)
        rows.append({"op": op, "shape": "x".join(map(str, shape)), "rtl_cycles": c2, "sim_cycles": s2,
                     "model_err": f"{(s2 - c2) / c2:+.1%}", "el_per_cycle": round(e2 / c2, 2),
                     "steady": round((e2 - e1) / (c2 - c1), 2), "engine_bound": engine, "ddr_bound": ddr})
    report(f"vector-{cfg.name}", rows, notes=f"{cfg.name} overlay ({cfg.vec_lanes} lanes, {cfg.beat_bytes}-byte "
           "AXI beat), Verilator without stalls, D = 256")


if __name__ == "__main__":
    import argparse
    a = argparse.ArgumentParser()
    a.add_argument("--preset", default="sim")
    run(a.parse_args().preset)
