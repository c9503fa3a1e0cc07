"""A map inside the zero-padded windows a window partition makes of it (Hiera's later stages, ws not dividing
the map; sw.runtime.layout.RowRuns.windows): the vector engine's row ops read and write a region's rows in
runs, so a map lands in its padded windows and a padded window's map is read where it is, bit-exact with
the golden op and window_partition, the padding rows never written, the host reading none of it. Misuse
is refused."""
from __future__ import annotations

import numpy as np
import pytest

from golden_model import intvec
from golden_model.image_encoder import window_partition
from hw.config import preset
from sw.compile.linear import CompileError
from sw.compile.vector import compile_vector
from sw.runtime.driver import Driver
from sw.runtime.layout import RowRuns, TokenRowLayout

CFG = preset("bench16")
H, W, WS, D = 5, 9, 4, 32          # a 5 x 9 map in 2 x 3 windows of 4 x 4


def _windows(drv, x, fill):
    """A buffer holding the (H, W) map x's rows inside its padded windows, the padding rows `fill`: it, the
    windows' layout and the padding's rows."""
    wins, _ = window_partition(x.reshape(1, H, W, D), WS)
    pad = window_partition(np.ones((1, H, W, 1), np.int8), WS)[0].reshape(-1) == 0     # window_partition pads 0
    rows = wins.reshape(-1, D).copy()
    rows[pad] = fill
    layout = TokenRowLayout(len(rows), D, CFG.cols)
    buf = drv.buffer(layout.size)
    drv.session.backend.write(buf.addr, layout.pack(rows))
    return buf, layout, pad


@pytest.mark.parametrize("mode", ["fast", "checked"])
def test_row_op_reads_and_writes_a_map_inside_its_padded_windows(mode):
    drv = Driver(CFG, "sim", sim_mode=mode)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(-128, 128, (H * W, D), dtype=np.int8) for _ in range(2))
    p = intvec.AddParams(3000, 5000, 12)
    b_buf, _, _ = _windows(drv, b, 0)
    a_buf = drv.buffer(TokenRowLayout(H * W, D, CFG.cols).size)
    drv.session.backend.write(a_buf.addr, TokenRowLayout(H * W, D, CFG.cols).pack(a))
    out, layout, pad = _windows(drv, np.zeros_like(a), 99)      # its padding rows (99) must stay
    runs = RowRuns.windows(H, W, WS)
    assert runs.size == 2 * 3 * WS * WS == layout.tokens
    zeros = np.zeros_like(a)
    prog = compile_vector(CFG, "add", zeros, p, b=zeros, runs={"b": runs, "out": runs}, base_addr=drv.BUFFER_BASE)
    traffic = drv.device.traffic
    before = traffic.snapshot()
    drv.run_bound(prog, {"in": a_buf.name, "b": b_buf.name, "out": out.name})
    assert traffic.since(before).from_ddr == 0
    got = layout.unpack(drv.session.backend.read(out.addr, layout.size))
    want = window_partition(intvec.add(a, b, p).reshape(1, H, W, D), WS)[0].reshape(-1, D)
    np.testing.assert_array_equal(got[~pad], want[~pad])
    assert (got[pad] == 99).all()                      # the padding rows untouched


def test_runs_misuse_is_refused():
    x = np.zeros((H * W, D), np.int8)
    runs = RowRuns.windows(H, W, WS)
    with pytest.raises(CompileError, match="do not cover"):
        compile_vector(CFG, "rescale", x[:-1], intvec.RescaleParams(1, 0), runs={"out": runs})
    with pytest.raises(CompileError, match="b not repeated"):
        compile_vector(CFG, "add", x, intvec.AddParams(1, 1, 0), b=x[0], runs={"out": runs})
    with pytest.raises(CompileError, match="cannot be placed"):
        compile_vector(CFG, "rescale", x, intvec.RescaleParams(1, 0), runs={"params": runs})
    ang = np.zeros((H * W, D // 2))           # a command's rows restart RoPE's table: runs on its period only
    with pytest.raises(CompileError, match="not on its period of 45"):
        compile_vector(CFG, "rope", x, intvec.RopeParams.make(np.cos(ang), np.sin(ang), 0.05, 0.05), runs={"out": runs})
    assert [runs.row(r) for r in (0, WS - 1, WS, W, 4 * W)] == [0, WS - 1, WS * WS, WS, 3 * WS * WS]


def test_window_order_rows_placed_in_the_map_order():
    """RowRuns.unwindows: a map's rows in window order ws (window_partition's, ws tiling it) back in the map's
    order, each window row one run (a row op's output written so: stage 2's last residual add)."""
    h, w, ws = 4, 6, 2
    m = np.arange(h * w * 3, dtype=np.int64).reshape(1, h, w, 3).astype(np.uint8)
    rows = window_partition(m, ws)[0].reshape(-1, 3)
    runs = RowRuns.unwindows(h, w, ws)
    assert len(runs.runs) == h * w // ws and runs.size == h * w
    np.testing.assert_array_equal(runs.spread(rows.reshape(-1), 3).reshape(h, w, 3), m[0])
