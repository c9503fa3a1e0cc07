"""Host speed of the integer attention (golden_model.intattn): the whole-array `attention` against the
tile-by-tile spec `attention_reference` on SAM 2.1 tiny's attention shapes, same inputs, same run.

`python -m benchmarks intattn`. Shapes: a global block of Hiera stage 3 (4 heads x 4,096 tokens,
d 96) and a windowed block of stage 1 (1,024 windows of 8x8 tokens, one head, d 96); key tile 32
(the kv260 preset's array cols). Best of 3 each; outputs checked equal.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import best, report
from golden_model import intattn as A

#: (name, q/k/v shape) of tiny's encoder attentions
SHAPES = (("global block (stage 3)", (1, 4, 4096, 96)), ("windowed block (stage 1)", (1024, 1, 64, 96)))
KEY_TILE = 32
QUANT = A.AttentionQuant(38411, 20, 1476726845, 46)


def run() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in SHAPES:
        q, k, v = (rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(3))
        if not np.array_equal(A.attention(q, k, v, QUANT, KEY_TILE), A.attention_reference(q, k, v, QUANT, KEY_TILE)):
            raise AssertionError(f"{name}: the fast path differs from the spec")
        fast = best(lambda: A.attention(q, k, v, QUANT, KEY_TILE))
        spec = best(lambda: A.attention_reference(q, k, v, QUANT, KEY_TILE))
        rows.append(dict(shape=name, qkv="x".join(map(str, shape)), attention_s=round(fast, 3),
                         reference_s=round(spec, 3), speedup=round(spec / fast, 2)))
    report("intattn", rows, f"key tile {KEY_TILE}; best of 3; outputs equal bit for bit")


if __name__ == "__main__":
    run()
