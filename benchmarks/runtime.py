"""The runtime: the sim backend's speed and the host <-> DDR bytes of a chain, one table.

Speed rows: issue 14's 65,536 x 96 x 288 linear on the kv260 preset, loaded once into a session
(sw.runtime.session) and run in the sim backend's fast and checked modes and as NumPy int32 matmul
(fast: its runs after the first, whose timing the model remembers, and a first run apart);
the cycle model alone (`cycles_only`: timing without data); then a sequence of loaded programs (the
linear layers of SAM 2 tiny's first two Hiera stages at 1024 x 1024) against NumPy int32 matmuls of
the same shapes. Times are the best of several tries, programs compiled and loaded beforehand
(compiling is reported apart). `run_s` is a loaded program's run (its STARTs, the model's work);
`driver_run_s` is `Driver.run` (inputs written, runs, output read back; the program stays loaded).

Byte rows: the chain linear -> attention -> linear -> conv -> depthwise (sw.runtime.chain) on the sim,
pynq (simulated device) and rtl backends: what one session writes once (weights, descriptors,
zeroed activation buffers) and what each run moves (the chain's input and output).
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import best, report

REPEATS = 3
FAST_REPEATS = 7          # the fast mode's runs are short: more tries at a quiet moment of a shared machine
HEADLINE = (65536, 96, 288)
# SAM 2.1 tiny (Hiera, 1024 x 1024): stage 1 (256 x 256 tokens, dim 96) and stage 2 (128 x 128, dim 192):
# qkv, attention projection, MLP in and out per block.
SEQUENCE = [(65536, 96, 288), (65536, 96, 96), (65536, 96, 384), (65536, 384, 96),
            (16384, 192, 576), (16384, 192, 192), (16384, 192, 768), (16384, 768, 192)]
CHAIN_PRESET = "bench16"


def layer(rng, m, k, n):
    return (rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (k, n), dtype=np.int8),
            rng.integers(-2 ** 16, 2 ** 16, n), rng.integers(1 << 20, 1 << 22, n), rng.integers(20, 30, n))


def numpy_matmul(a, b):
    return a.astype(np.int32) @ b.astype(np.int32)


def speed_rows() -> list[dict]:
    from hw import isa
    from hw.config import preset
    from sw.backends.cycles import cycles_only, forget_timings
    from sw.runtime.driver import Driver

    cfg = preset("kv260")
    rng = np.random.default_rng(14)
    rows = []
    m, k, n = HEADLINE
    macs, case = m * k * n, f"linear {m}x{k}x{n}"
    a, b, bias, mult, shift = layer(rng, m, k, n)
    drivers = {mode: Driver(cfg, "sim", ddr_bytes=1 << 28, timeout_s=600, sim_mode=mode) for mode in ("fast", "checked")}
    t0 = time.perf_counter()
    prog = drivers["fast"].compile(a, b, bias, mult, shift, relu=True)
    compile_s = time.perf_counter() - t0
    t_np = best(lambda: numpy_matmul(a, b), REPEATS)
    out, cycles = {}, {}
    for mode, drv in drivers.items():
        repeats = 1 if mode == "checked" else FAST_REPEATS
        loaded = drv.session.load(prog, "headline")
        loaded.write_inputs()
        t_run = best(loaded.run, repeats)
        t_drv = best(lambda: drv.run(prog), repeats)
        out[mode], cycles[mode] = prog.output(drv.run(prog)), drv.last_run.cycles
        rows.append({"case": case, "mode": mode, "descriptors": len(prog.descriptors), "run_s": t_run,
                     "GMAC_per_s": macs / t_run / 1e9, "driver_run_s": t_drv, "vs_numpy_int32": t_run / t_np,
                     "cycles": cycles[mode]})
        if mode == "fast":                   # a program's first run: the cycle model's pass not yet remembered
            t_first = best(lambda: (forget_timings(), loaded.run()), REPEATS)
            rows.append({"case": case, "mode": "fast, first run", "descriptors": len(prog.descriptors),
                         "run_s": t_first, "GMAC_per_s": macs / t_first / 1e9, "vs_numpy_int32": t_first / t_np})
        loaded.free()
    assert np.array_equal(out["fast"], out["checked"]) and cycles["fast"] == cycles["checked"]
    fast_runs = drivers["fast"].device.model.fast_runs
    assert fast_runs > 0 and drivers["checked"].device.model.fast_runs == 0
    t_cyc = best(lambda: (forget_timings(), cycles_only(cfg, prog.image[:len(prog.descriptors) * isa.DESCRIPTOR_BYTES],
                                                         prog.runs)), FAST_REPEATS)
    rows.append({"case": case, "mode": "cycles_only", "descriptors": len(prog.descriptors), "run_s": t_cyc,
                 "cycles": cycles["fast"]})
    rows.append({"case": case, "mode": "numpy int32 matmul", "run_s": t_np, "GMAC_per_s": macs / t_np / 1e9,
                 "vs_numpy_int32": 1.0})
    rows.append({"case": case, "mode": "compile (once)", "descriptors": len(prog.descriptors), "run_s": compile_s})
    for drv in drivers.values():
        drv.close()

    # A sequence of loaded programs, each run on fresh operands: inputs written, runs, output read back.
    layers = [layer(rng, *shape) for shape in SEQUENCE]
    drv = Driver(cfg, "sim", ddr_bytes=1 << 28, timeout_s=600)
    progs = [drv.compile(*lay, relu=True) for lay in layers]
    loaded = [drv.session.load(p, f"seq{i}") for i, p in enumerate(progs)]

    def sequence():
        for p in loaded:
            p.write_inputs()
            p.run()
            p.read("out")

    seq_macs = sum(m * k * n for m, k, n in SEQUENCE)
    t_seq = best(sequence, REPEATS)
    t_seq_np = best(lambda: [numpy_matmul(lay[0], lay[1]) for lay in layers], REPEATS)
    drv.close()
    case = f"sequence of {len(SEQUENCE)} linears"
    rows.append({"case": case, "mode": "fast", "descriptors": sum(len(p.descriptors) for p in progs), "run_s": t_seq,
                 "GMAC_per_s": seq_macs / t_seq / 1e9, "vs_numpy_int32": t_seq / t_seq_np})
    rows.append({"case": case, "mode": "numpy int32 matmul", "run_s": t_seq_np, "GMAC_per_s": seq_macs / t_seq_np / 1e9,
                 "vs_numpy_int32": 1.0})
    return rows


def chain_rows() -> list[dict]:
    from hw.config import preset
    from sw.runtime.backend import open_backend
    from sw.runtime.chain import Chain, ChainSpec, ChainWeights
    from sw.runtime.session import Session

    cfg, spec = preset(CHAIN_PRESET), ChainSpec()
    weights = ChainWeights.random(spec)
    x = np.random.default_rng(1).integers(-128, 128, (spec.channels_in, spec.height, spec.width)).astype(np.int8)
    rows = []
    for backend in ("sim", "pynq", "rtl"):
        t0 = time.monotonic()
        session = Session(open_backend(backend, cfg))
        try:
            chain = Chain(session, weights)
            started = time.monotonic() - t0
            runs = []
            for _ in range(2):                       # the second run: nothing but input and output cross
                t1 = time.monotonic()
                y = chain.run(x)
                runs.append((chain.last_traffic, time.monotonic() - t1))
        finally:
            session.close()
        (first, _), (second, wall) = runs
        rows.append({"case": "chain", "mode": backend, "cycles": sum(r.cycles for r in chain.last_runs),
                     "setup_to_ddr": chain.setup_traffic.to_ddr,
                     **{f"setup_{k.replace(' ', '_')}": v for k, v in chain.setup_bytes.items()},
                     "run_to_ddr": second.to_ddr, "run_from_ddr": second.from_ddr,
                     "runs_equal": first == second, "input_bytes": x.nbytes, "output_bytes": y.nbytes,
                     "bit_exact": bool(np.array_equal(y, chain.golden(x))), "open_s": started, "run_wall_s": wall})
    return rows


def run() -> None:
    import os

    from sw.runtime.chain import ChainSpec
    load = os.getloadavg()
    rows = speed_rows() + chain_rows()
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    report("runtime", rows, notes=(
        f"Load average (1, 5, 15 min; the higher of before and after) {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs. "
        f"Speed rows: kv260 preset; best of {FAST_REPEATS} (fast mode, timing only), {REPEATS} (NumPy, the "
        "sequence, a fast first run), 1 (checked); fast and checked modes gave the same bytes and cycles. The fast "
        "mode remembers a descriptor list's timing by its bytes, so a program's later runs skip the cycle model's "
        "pass ('fast, first run': with it). vs_numpy_int32: time / "
        "NumPy int32 matmul of the same shapes in this run (lower is faster). "
        f"Chain rows: {ChainSpec()} on {CHAIN_PRESET}: 6 programs bound to arena buffers. setup_* bytes are written "
        "once per session; run_* bytes cross per run: the input and output planar maps (run_to_ddr / run_from_ddr, "
        "with their zero margins; input_bytes / output_bytes without). open_s includes the Verilator build on rtl."))


if __name__ == "__main__":
    run()
