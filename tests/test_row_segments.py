"""Inputs held in several DDR ranges (sw.runtime.layout.RowSegments): the vector engine's row ops and
attention's token-row K / V bound to separate buffers (as a memory bank's slots), run, then relinked to
the same buffers in another order (a ring wrapped) and run again: bit-exact with the golden ops in the
sim's fast and checked modes, the host reading none of those buffers, the relink writing descriptors only.
A range an access would straddle is refused."""
from __future__ import annotations

import numpy as np
import pytest

from golden_model import intattn, intvec
from hw.config import preset
from sw.compile.attention import TokenRows
from sw.compile.linear import CompileError
from sw.compile.vector import compile_vector
from sw.runtime.driver import Driver
from sw.runtime.layout import RowSegments, TokenRowLayout

CFG = preset("bench16")
C = CFG.cols
SLOT, PTRS = 2 * C, 5           # rows of a "memory frame" (a multiple of C) and of the pointer tail


def _slots(drv, rows, n: int, d: int):
    """n buffers of `rows` token rows each, filled with random int8: (names, their rows)."""
    rng = np.random.default_rng(n)
    names, data = [], []
    for _ in range(n):
        x = rng.integers(-128, 128, (rows, d), dtype=np.int8)
        buf = drv.buffer(TokenRowLayout(rows, d, C).size)
        drv.session.backend.write(buf.addr, TokenRowLayout(rows, d, C).pack(x))
        names.append(buf.name)
        data.append(x)
    return names, data


def _bind(g: RowSegments, order, names) -> dict:
    return dict(zip(g.regions, (names[i] for i in order)))


@pytest.mark.parametrize("mode", ["fast", "checked"])
def test_segmented_inputs_bound_in_place_and_relinked(mode):
    d = 256
    drv = Driver(CFG, "sim", sim_mode=mode)
    names, data = _slots(drv, SLOT, 4, d)
    tail, tail_data = _slots(drv, PTRS, 1, d)
    names, data = names + tail, data + tail_data            # slots 0..3, then the pointer rows (4)
    rows = (SLOT, SLOT, PTRS)
    p = intvec.AddParams(3000, 5000, 12)
    traffic = drv.device.traffic
    for a_order, b_order in (((0, 1, 4), (2, 3, 4)), ((3, 0, 4), (1, 2, 4))):   # the second: slots wrapped
        ga, gb = RowSegments("in", rows), RowSegments("b", rows)
        zeros = np.zeros((sum(rows), d), np.int8)
        prog = compile_vector(CFG, "add", zeros, p, b=zeros, segments={"in": rows, "b": rows},
                              base_addr=drv.BUFFER_BASE)
        out = drv.buffer(prog.out_layout.size)
        before, written = traffic.snapshot(), drv.program_bytes
        drv.run_bound(prog, {**_bind(ga, a_order, names), **_bind(gb, b_order, names), "out": out.name})
        assert traffic.since(before).from_ddr == 0                    # nothing read back: the slots stay put
        got = prog.out_layout.unpack(drv.session.backend.read(out.addr, prog.out_layout.size))
        want = intvec.add(np.concatenate([data[i] for i in a_order]), np.concatenate([data[i] for i in b_order]), p)
        np.testing.assert_array_equal(got, want)
        if a_order[0] == 3:     # relinked: only the descriptors addressing a moved segment written, not the parameters
            assert 0 < drv.program_bytes - written < prog.regions["descriptors"][1]

    # attention: V over the slots and the pointer rows, Q and K from the host
    rng = np.random.default_rng(1)
    lk = 2 * SLOT + PTRS
    q = rng.integers(-128, 128, (1, C, d), dtype=np.int8)
    k = rng.integers(-128, 128, (1, lk, d), dtype=np.int8)
    quant = intattn.AttentionQuant(20000, 22, 1 << 28, 30)
    for order in ((0, 1, 4), (3, 2, 4)):
        v = np.concatenate([data[i] for i in order])[None]
        g = RowSegments("V", rows)
        tr = TokenRows(1, 1, C, lk, inputs=True, segments=(g,))
        ((_, _, _, prog),) = drv.attention_programs(q, k, np.zeros_like(v), quant, rows=tr)
        assert "V" not in prog.regions and set(g.regions) <= set(prog.regions)
        bind = {"Q": drv.buffer(tr.size(C, d)).name, "K": drv.buffer(tr.size(lk, d)).name, "out": None}
        for r, x, n in (("Q", q, C), ("K", k, lk)):
            drv.session.backend.write(drv.session.arena[bind[r]].addr, TokenRowLayout(n, d, C).pack(x[0]))
        bind["out"] = drv.buffer(tr.size(C, d)).name
        before = traffic.snapshot()
        drv.run_bound(prog, {**bind, **_bind(g, order, names)})
        assert traffic.since(before).from_ddr == 0
        out = TokenRowLayout(C, d, C).unpack(drv.session.backend.read(drv.session.arena[bind["out"]].addr,
                                                                        tr.size(C, d)))
        np.testing.assert_array_equal(out, intattn.attention(q[0], k[0], v[0], quant, key_tile=C))


def test_an_access_straddling_two_segments_is_refused():
    rows = (C + 1, C - 1)           # a key tile of C would cross from the first range into the second
    q, k = np.zeros((1, C, 2 * C), np.int8), np.zeros((1, 2 * C, 2 * C), np.int8)
    tr = TokenRows(1, 1, C, 2 * C, inputs=True, segments=(RowSegments("V", rows),))
    with pytest.raises(CompileError, match="straddle segments"):
        list(Driver(CFG, "sim").attention_programs(q, k, k, intattn.AttentionQuant(1, 1, 1, 1), rows=tr))
    with pytest.raises(CompileError, match="not on its period"):      # a RoPE table's period of 4 rows
        x = np.zeros((8, 16), np.int8)
        compile_vector(CFG, "rope", x, intvec.RopeParams(np.zeros((4, 8), np.int16), np.zeros((4, 8), np.int16),
                                                         1, 0), segments={"in": (3, 5)})
