"""Host speed of the integer online softmax's fast path (golden_model.intattn.attention_state) on the shapes
the sim backend and the host int8 reference run, with 1 and 2 worker threads (SAM2FPGA_THREADS).

`python -m benchmarks intattn_state`. Shapes (q/k/v, key tile 32:
the kv260 preset's array cols): memory attention at 1024 px (1 x 4,096 queries x 8,192 keys and 1 x 1,024 x
28,672, d 256: the real 4,096 x ~28k is ~3.5x the first), Hiera's global block (4 heads x 4,096 x 4,096, d 96),
its windows (1,024 x 64 x 64, d 96) and memory attention at 256 px (1 x 256 x 1,900, d 256). Data: `random`
(uniform int8; the running maximum stops growing after a few tiles) and `trend` (scores rising through
the keys: the maximum grows in most tiles, the worst case of the O rescales). Logits of std ~3 (random).
Best of 3; one thread's and two threads' results checked equal. `busy`: other work's share of the cores
just before (a second thread gains only on a free core).
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import busy_share, report
from benchmarks.threads import timed
from golden_model import intattn

KEY_TILE = 32
SHAPES = (("memory attn 1024 (4096 x 8192)", (1, 4096, 8192, 256)),
          ("memory attn 1024 (1024 x 28672)", (1, 1024, 28672, 256)),
          ("hiera global (4 heads)", (4, 4096, 4096, 96)),
          ("hiera windows", (1024, 64, 64, 96)),
          ("memory attn 256", (1, 256, 1900, 256)))


def inputs(rng, shape, kind: str):
    """q, k, v int8 (batch, L, d) and the quantisation: `random` or `trend` (scores growing with the key)."""
    b, lq, lk, d = shape
    q = rng.integers(-128, 128, (b, lq, d), dtype=np.int8)
    k = rng.integers(-128, 128, (b, lk, d), dtype=np.int8)
    v = rng.integers(-128, 128, (b, lk, d), dtype=np.int8)
    if kind == "trend":           # a quarter of the channels: q positive, k rising from -120 to 120 with the key
        c = d // 4
        q[..., :c] = np.abs(q[..., :c]) // 2 + 60
        ramp = np.linspace(-120, 120, lk)[None, :, None] + rng.normal(0, 6, (b, lk, c))
        k[..., :c] = np.clip(np.rint(ramp), -128, 127).astype(np.int8)
    scale = (3.0 * np.sqrt(d) / np.sqrt(d * (128.0 ** 2 / 3) ** 2)) ** 0.5   # random: logits of std ~3
    return q, k, v, intattn.AttentionQuant.from_scales(scale, scale, 0.05, 0.05, d)


def run(repeats: int = 3) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in SHAPES:
        for kind in ("random", "trend"):
            q, k, v, quant = inputs(rng, shape, kind)
            fn = lambda: intattn.attention_state(q, k, v, quant, KEY_TILE)   # noqa: E731
            busy = busy_share()
            one, w1, _ = timed(fn, 1, repeats)
            two, w2, _ = timed(fn, 2, repeats)
            if not all(np.array_equal(a, b) for a, b in zip(one, two)):
                raise AssertionError(f"{name} {kind}: two threads differ from one")
            rows.append({"shape": name, "data": kind, "busy": round(busy, 2), "1 thread s": round(w1, 3),
                         "2 threads s": round(w2, 3)})
    report("intattn_state", rows, f"key tile {KEY_TILE}; best of {repeats}; 1 and 2 threads bit-identical")


if __name__ == "__main__":
    run()
