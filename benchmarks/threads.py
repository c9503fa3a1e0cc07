"""The host kernels' worker threads (golden_model.workers): each kernel on one thread and on two, same
inputs, same run, results checked equal. Wall and CPU time (this process, all threads), best of a few.

`python -m benchmarks threads`. Kernels: the online softmax (intattn.attention_state) of a global
attention (1 x 4,096 x 4,096, d 64, key tile 64) and of 1,024 windows of 64 tokens (d 96), a 65,536 x 96
x 384 linear in the sim backend's fast mode (kv260: its 256-row chunks, GEMM and output stage), and a
65,536 x 96 LayerNorm (intvec.layernorm). `busy` is the share of the machine's cores other work used just
before (a thread gains only on a free core: run it on an idle machine).
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import busy_share, environ, report
from golden_model import intattn, intvec, workers

REPEATS = 5


def timed(fn, threads: int, repeats: int = REPEATS):
    """(result, best wall s, best CPU s) of fn with `threads` worker threads, BLAS on one."""
    with environ(workers.ENV, str(threads)), workers.one_blas_thread():
        result, wall, cpu = fn(), [], []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
    return result, min(wall), min(cpu)


def sim_linear(rng, m, k, n):
    """A run of a compiled m x k x n linear in the sim backend's fast mode: a function returning its DDR."""
    from hw.config import preset
    from sw.backends import fast
    from sw.backends.sim import SimBackend
    from sw.compile.linear import compile_linear
    from sw.runtime.backend import DDR_BASE
    cfg = preset("kv260")
    a, b = rng.integers(-128, 128, (m, k), dtype=np.int8), rng.integers(-128, 128, (k, n), dtype=np.int8)
    prog = compile_linear(cfg, a, b, rng.integers(-2 ** 16, 2 ** 16, n), rng.integers(1 << 20, 1 << 22, n),
                          rng.integers(20, 30, n), base_addr=DDR_BASE)
    be = SimBackend(cfg, ddr_bytes=DDR_BASE + len(prog.image) + 4096)
    be.model.ddr[DDR_BASE:DDR_BASE + len(prog.image)] = prog.image
    job = fast.job(cfg, prog)

    def run():
        job(be.model.ddr)
        return be.model.ddr[DDR_BASE:DDR_BASE + len(prog.image)].copy()
    return run


def run() -> None:
    rng = np.random.default_rng(0)
    quant = intattn.AttentionQuant.from_scales(0.05, 0.05, 0.05, 0.05, 64)
    kernels = []
    for name, shape in (("attention 1 x 4096 x 4096, d 64", (1, 4096, 64)), ("attention 1024 windows of 64, d 96",
                                                                             (1024, 64, 96))):
        q, k, v = (rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(3))
        kernels.append((name, lambda q=q, k=k, v=v: intattn.attention_state(q, k, v, quant, 64)))
    kernels.append(("linear 65536 x 96 x 384 (sim fast mode)", sim_linear(rng, 65536, 96, 384)))
    x = rng.integers(-128, 128, (65536, 96), dtype=np.int8)
    ln = intvec.LayerNormParams.make(rng.normal(1, 0.3, 96), rng.normal(0, 0.2, 96), 0.05, 0.03, 1e-6)
    kernels.append(("layernorm 65536 x 96", lambda: intvec.layernorm(x, ln)))
    rows = []
    for name, fn in kernels:
        busy = busy_share()
        one, w1, c1 = timed(fn, 1)
        two, w2, c2 = timed(fn, 2)
        same = all(np.array_equal(a, b) for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (one, two))))
        if not same:
            raise AssertionError(f"{name}: two threads differ from one")
        rows.append({"kernel": name, "busy": round(busy, 2), "1 thread s": round(w1, 4), "2 threads s": round(w2, 4),
                     "speed-up": round(w1 / w2, 2), "1 thread CPU s": round(c1, 4), "2 threads CPU s": round(c2, 4)})
    report("threads", rows, f"best of {REPEATS}; bit-identical results; busy: other work's share of the cores")
