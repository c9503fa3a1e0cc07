"""The runtime spine: host <-> DDR bytes of the chain linear -> attention -> linear -> conv -> depthwise
(sw.runtime.chain) on the sim, pynq (simulated device) and rtl backends: what one session writes once
(weights, descriptors, zeroed activation buffers) and what each run moves (the chain's input and output)."""
import time

import numpy as np

from benchmarks.common import report

PRESET = "bench16"


def run() -> None:
    from hw.config import preset
    from sw.runtime.backend import open_backend
    from sw.runtime.chain import Chain, ChainSpec, ChainWeights
    from sw.runtime.session import Session

    cfg, spec = preset(PRESET), ChainSpec()
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
        rows.append({"backend": backend, "setup_to_ddr": chain.setup_traffic.to_ddr,
                     **{f"setup_{k.replace(' ', '_')}": v for k, v in chain.setup_bytes.items()},
                     "run_to_ddr": second.to_ddr, "run_from_ddr": second.from_ddr,
                     "runs_equal": first == second, "input_bytes": x.nbytes, "output_bytes": y.nbytes,
                     "cycles": sum(r.cycles for r in chain.last_runs), "bit_exact": bool(np.array_equal(y, chain.golden(x))),
                     "open_s": started, "run_wall_s": wall})
    report("runtime", rows, notes=(
        f"Chain {spec} on {PRESET}: 6 programs bound to arena buffers. setup_* bytes are written once per "
        "session; run_* bytes cross per run: the input and output planar maps (run_to_ddr / run_from_ddr, with "
        "their zero margins; input_bytes / output_bytes without). open_s includes the Verilator build on rtl."))
