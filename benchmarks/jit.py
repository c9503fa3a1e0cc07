"""The integer kernels' compiled element-wise passes (golden_model.jit, Numba) against their NumPy path: each
kernel both ways on the same inputs in the same run (SAM2FPGA_JIT=1 / 0), results checked equal, one worker
thread and one BLAS thread, best of a few (wall and CPU time).

`python -m benchmarks jit`. Kernels: the attention engine's online softmax (intattn.attention_state, key tile
32) of a 1024 px memory attention's slice (1,024 queries x 28,672 keys, d 256: steps 2-4 compiled), Hiera's
global block (4 heads x 4,096 x 4,096, d 96) and windows (1,024 x 64 x 64, d 96); a 65,536 x 96 x 384
linear in the sim backend's fast mode (GEMM and the compiled requantiser); a 65,536 x 96 LayerNorm and
residual add (intvec). `busy`: the share of the machine's cores other work used just before.
"""
from __future__ import annotations


import numpy as np

from benchmarks.common import busy_share, environ, report
from benchmarks.threads import sim_linear, timed
from golden_model import intattn, intvec, jit

REPEATS = 3


def _both(fn):
    """(numpy (result, wall, CPU), compiled (result, wall, CPU)) of fn on one worker thread."""
    out = []
    for flag in ("0", "1"):
        with environ(jit.ENV, flag):
            out.append(timed(fn, 1, REPEATS))
    return out


def _equal(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_equal(x, y) for x, y in zip(a, b))
    return a.dtype == b.dtype and np.array_equal(a, b)


def run() -> None:
    if not jit.available():
        raise SystemExit("benchmarks jit: Numba is not installed (or SAM2FPGA_JIT=0): nothing to compare")
    rng = np.random.default_rng(0)
    i8 = lambda *shape: rng.integers(-128, 128, shape, dtype=np.int8)      # noqa: E731
    kernels = []
    for name, (b, lq, lk, d) in (("memory attention 1024 px: 1,024 x 28,672 keys, d 256", (1, 1024, 28672, 256)),
                                 ("Hiera global: 4 heads x 4,096 x 4,096, d 96", (4, 4096, 4096, 96)),
                                 ("Hiera windows: 1,024 x 64 x 64, d 96", (1024, 64, 64, 96))):
        q, k, v = i8(b, lq, d), i8(b, lk, d), i8(b, lk, d)
        quant = intattn.AttentionQuant.from_scales(0.04, 0.04, 0.05, 0.05, d)
        kernels.append((name, lambda q=q, k=k, v=v, quant=quant: intattn.attention_state(q, k, v, quant, 32)))
    kernels.append(("linear 65,536 x 96 x 384 (sim fast mode)", sim_linear(rng, 65536, 96, 384)))
    x, y = i8(65536, 96), i8(65536, 96)
    ln = intvec.LayerNormParams.make(rng.normal(1, 0.5, 96), rng.normal(0, 1, 96), 0.05, 0.03, 1e-6)
    add = intvec.AddParams.make(0.05, 0.07, 0.06)
    kernels.append(("LayerNorm 65,536 x 96", lambda: intvec.layernorm(x, ln)))
    kernels.append(("residual add 65,536 x 96", lambda: intvec.add(x, y, add)))
    rows = []
    for name, fn in kernels:
        busy = busy_share()
        (r0, w0, c0), (r1, w1, c1) = _both(fn)
        rows.append({"kernel": name, "busy": round(busy, 2), "NumPy s": w0, "compiled s": w1,
                     "NumPy / compiled": w0 / w1, "NumPy CPU s": c0, "compiled CPU s": c1, "equal": _equal(r0, r1)})
        assert rows[-1]["equal"], name
    report("jit", rows, notes=f"each kernel with SAM2FPGA_JIT=0 (NumPy) and 1 (Numba), 1 worker thread, 1 BLAS "
                              f"thread, best of {REPEATS}; results equal bit for bit")
