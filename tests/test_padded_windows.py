"""A map inside the one zero-padded window of a Hiera later stage (sw.runtime.layout.RowGrid): the vector
engine's row ops read and write a region's rows in runs of W every ws rows, so a map lands in its padded
window, and a padded window's map is read where it is, bit-exact with the golden op, the padding rows
never written, the host reading none of it. Misuse is refused."""
from __future__ import annotations

import numpy as np
import pytest

from golden_model import intvec
from hw.config import preset
from sw.compile.linear import CompileError
from sw.compile.vector import compile_vector
from sw.runtime.driver import Driver
from sw.runtime.layout import RowGrid, TokenRowLayout

CFG = preset("bench16")
H, W, WS, D = 3, 5, 7, 32          # a 3 x 5 map in a 7 x 7 window


def _window(drv, x):
    """A buffer holding x (H W rows) inside a window whose padding rows hold 99."""
    layout = TokenRowLayout(WS * WS, D, CFG.cols)
    rows = np.full((WS, WS, D), 99, np.int8)
    rows[:H, :W] = x.reshape(H, W, D)
    buf = drv.buffer(layout.size)
    drv.session.backend.write(buf.addr, layout.pack(rows.reshape(-1, D)))
    return buf


@pytest.mark.parametrize("mode", ["fast", "checked"])
def test_row_op_reads_and_writes_a_map_inside_its_padded_window(mode):
    drv = Driver(CFG, "sim", sim_mode=mode)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(-128, 128, (H * W, D), dtype=np.int8) for _ in range(2))
    p = intvec.AddParams(3000, 5000, 12)
    b_buf = _window(drv, b)
    a_buf = drv.buffer(TokenRowLayout(H * W, D, CFG.cols).size)
    drv.session.backend.write(a_buf.addr, TokenRowLayout(H * W, D, CFG.cols).pack(a))
    out = _window(drv, np.zeros_like(a))            # its padding rows (99) must stay
    zeros = np.zeros_like(a)
    prog = compile_vector(CFG, "add", zeros, p, b=zeros, grids={"b": (W, WS), "out": (W, WS)},
                          base_addr=drv.BUFFER_BASE)
    traffic = drv.device.traffic
    before = traffic.snapshot()
    drv.run_bound(prog, {"in": a_buf.name, "b": b_buf.name, "out": out.name})
    assert traffic.since(before).from_ddr == 0
    layout = TokenRowLayout(WS * WS, D, CFG.cols)
    got = layout.unpack(drv.session.backend.read(out.addr, layout.size)).reshape(WS, WS, D)
    np.testing.assert_array_equal(got[:H, :W].reshape(-1, D), intvec.add(a, b, p))
    got[:H, :W] = 99
    assert (got == 99).all()                        # the padding rows untouched


def test_grid_misuse_is_refused():
    x = np.zeros((H * W, D), np.int8)
    with pytest.raises(CompileError, match="whole runs"):
        compile_vector(CFG, "layernorm", x, intvec.LayerNormParams.make(np.ones(D), np.zeros(D), 0.1, 0.1, 1e-6),
                       grids={"out": (4, WS)})
    with pytest.raises(CompileError, match="b not repeated"):
        compile_vector(CFG, "add", x, intvec.AddParams(1, 1, 0), b=x[0], grids={"out": (W, WS)})
    with pytest.raises(CompileError, match="cannot be a grid"):
        compile_vector(CFG, "rescale", x, intvec.RescaleParams(1, 0), grids={"params": (W, WS)})
    with pytest.raises(CompileError, match="runs of 8 rows every 7"):
        RowGrid(8, 7)
    assert [RowGrid(W, WS).row(r) for r in (0, W - 1, W, 2 * W)] == [0, W - 1, WS, 2 * WS]
