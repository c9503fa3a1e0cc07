"""Vector engine test cases: a command, its parameter writes, input rows and the golden output rows
(golden_model.intvec), on random and adversarial data. Shared by tests/test_vector_engine.py
(Amaranth simulator) and sim/benches/vector_bench.py (cocotb / Verilator)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden_model import intvec as V
from golden_model.memory_attention import axial_rope
from hw.vector import params as P
from hw.vector.params import VecOp

OPS = ("layernorm", "lut", "add", "rescale", "rope", "maxpool", "upsample")
KINDS = ("random", "constant", "extremes")


@dataclass
class Case:
    name: str
    cmd: dict
    writes: list            # (target, addr, data)
    a: np.ndarray           # int8 (rows, dim): the `i` stream
    b: np.ndarray | None    # int8 (rows, dim): the `b` stream (add), None otherwise
    expected: np.ndarray    # int8 (out rows, dim)

    @property
    def dim(self) -> int:
        return self.a.shape[1]


def _data(rng, shape, kind):
    if kind == "constant":              # LayerNorm: variance 0 in every row
        return np.repeat(rng.integers(-128, 128, (*shape[:-1], 1)), shape[-1], -1).astype(np.int8)
    if kind == "extremes":
        return rng.choice(np.array([-128, 127, -127, 0, -1], np.int8), shape)
    return rng.integers(-128, 128, shape).astype(np.int8)


def make_case(op: str, lanes: int, rows: int, dim: int, seed: int = 0, kind: str = "random") -> Case:
    """`rows` x `dim` input rows (maxpool / upsample: an image of `rows` pixels' worth, see below)."""
    rng = np.random.default_rng(seed)
    name = f"{op}-{kind}-{rows}x{dim}-L{lanes}"
    if op == "layernorm":
        x = _data(rng, (rows, dim), kind)
        gamma, beta = rng.normal(1, 0.5, dim), rng.normal(0, 0.5, dim)
        if kind == "extremes":                       # saturating outputs: tiny out_scale
            p = V.LayerNormParams.make(gamma * 8, beta * 8, 0.05, 0.01, 1e-6)
        else:
            p = V.LayerNormParams.make(gamma, beta, 0.05, 0.03, 1e-5)
        cmd, writes = P.layernorm_command(p, rows)
        return Case(name, cmd, writes, x, None, V.layernorm(x, p))
    if op == "lut":
        x = _data(rng, (rows, dim), kind)
        p = V.LutParams.gelu(0.05, 0.02)
        cmd, writes = P.lut_command(p, dim, rows)
        return Case(name, cmd, writes, x, None, V.lut(x, p))
    if op == "add":
        a = _data(rng, (rows, dim), kind)
        # half the seeds broadcast b (a per-channel vector re-read for every row, as a DMA would)
        b_vec = seed % 2 == 1
        b = _data(rng, (1, dim) if b_vec else (rows, dim), kind)
        scales = (0.05, 0.5) if kind == "extremes" else tuple(rng.uniform(0.01, 0.1, 2))
        p = V.AddParams.make(*scales, 0.04 if kind == "extremes" else rng.uniform(0.02, 0.1))
        cmd, writes = P.add_command(p, dim, rows)
        return Case(name + ("-bcast" if b_vec else ""), cmd, writes, a, np.ascontiguousarray(np.broadcast_to(
            b, (rows, dim))), V.add(a, b[0] if b_vec else b, p))
    if op == "rescale":
        x = _data(rng, (rows, dim), kind)
        p = V.RescaleParams.make(0.05, 0.001 if kind == "extremes" else rng.uniform(0.02, 0.2))
        cmd, writes = P.rescale_command(p, dim, rows)
        return Case(name, cmd, writes, x, None, V.rescale(x, p))
    if op == "rope":
        # axial tables of end_x x end_y tokens, `rows` = frames x tokens (rope_k_repeat);
        # even seeds store the tables axially where the beat layout allows, odd seeds whole
        end_x, end_y = 4, 2
        tokens = end_x * end_y
        rows = max(tokens, rows - rows % tokens)
        cos, sin = axial_rope(dim, end_x, end_y)
        p = V.RopeParams.make(cos, sin, 0.05, 0.002 if kind == "extremes" else 0.04)
        x = _data(rng, (rows, dim), kind)
        axial = seed % 2 == 0 and (dim // 4) % (lanes // 2) == 0
        cmd, writes = P.rope_command(p, rows, lanes, end_x if axial else None)
        return Case(name + ("-axial" if axial else "-full"), cmd, writes, x, None, V.rope(x, p))
    if op == "maxpool":
        # an image of about `rows` pixels, odd sizes (floor), fed as 2x2 windows
        h = max(2, int(np.sqrt(rows)) | 1)
        w = max(2, rows // h)
        img = _data(rng, (h, w, dim), kind)
        a = P.maxpool_rows(img)
        cmd = P.command(VecOp.MAXPOOL, dim, a.shape[0])
        return Case(f"{name}-{h}x{w}", cmd, [], a, None, V.maxpool2x2(img).reshape(-1, dim))
    if op == "upsample":
        img = _data(rng, (1, rows, dim), kind)
        a = img.reshape(-1, dim)
        cmd = P.command(VecOp.UPSAMPLE, dim, rows)
        up = V.upsample_nearest2x(img)                                # (2, 2 rows, dim)
        expected = np.repeat(a, 4, axis=0)                            # each pixel's 2x2 block
        assert np.array_equal(P.upsample_image(expected, 1, rows), up)
        return Case(name, cmd, [], a, None, expected)
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def out_beats(case: Case, lanes: int) -> int:
    return case.expected.shape[0] * P.beats(case.dim, lanes)
