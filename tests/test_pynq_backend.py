"""The pynq backend through the real pynq 4.0 library on a simulated Device (registers + DDR = sim model)."""
import numpy as np
import pytest

from golden_model.intops import gemm
from hw import isa
from hw.config import preset
from sw.runtime.driver import AcceleratorError, Driver

pynq = pytest.importorskip("pynq")
SIM = preset("sim")


def layer(rng, m, k, n):
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a[0] = -128
    b[:, 0] = 127
    return a, b, rng.integers(-5000, 5000, n), rng.integers(1 << 29, 1 << 31, n), rng.integers(36, 42, n)


def test_pynq_equals_sim_equals_golden():
    drv_p, drv_s = Driver(SIM, "pynq"), Driver(SIM, "sim")
    rng = np.random.default_rng(5)
    for m, k, n, relu, out_int32 in [(9, 30, 17, True, False), (4, 100, 8, False, True), (21, 7, 33, False, False)]:
        a, b, bias, mult, shift = layer(rng, m, k, n)
        want = gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        got_p = drv_p.linear(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        got_s = drv_s.linear(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        assert np.array_equal(got_p, want) and np.array_equal(got_s, want)
        assert drv_p.last_run.cycles == drv_s.last_run.cycles
    # The real library is in the path: Overlay bound our IP driver by VLNV, MMIO and PynqBuffer are pynq's.
    runner = drv_p.device
    assert isinstance(runner.overlay, pynq.Overlay) and isinstance(runner.ip, pynq.DefaultIP)
    assert isinstance(runner.ip.mmio, pynq.MMIO)
    assert runner.ip.mmio.read(isa.REG["CONFIG"]) & 0xFFFF == SIM.rows | SIM.cols << 8
    buf = pynq.allocate(shape=(64,), dtype=np.uint8)
    assert isinstance(buf, pynq.buffer.PynqBuffer) and buf.device_address % 4096 == 0


def test_pynq_vector_engine_equals_sim_and_golden():
    """The vector engine's programs through the real pynq library (every op kind the engine has)."""
    from tests.test_vector_sim import cases
    drv_p, drv_s = Driver(SIM, "pynq"), Driver(SIM, "sim")
    for op, x, p, kw, want in cases(7, 22, "random", np.random.default_rng(9)):
        got_p, got_s = drv_p.vector(op, x, p, **kw), drv_s.vector(op, x, p, **kw)
        assert np.array_equal(got_p, want) and np.array_equal(got_s, want), op
        assert drv_p.last_run.cycles == drv_s.last_run.cycles and drv_p.last_run.engine == "vector"


def test_pynq_arena_too_big_for_the_contiguous_memory_says_so():
    """A session's arena larger than pynq can allocate (a board's CMA; here the simulated device's DDR): the
    sizes and where that memory comes from, as ArenaFull (the CLI's "does not fit the arena" error)."""
    from sw.backends.pynq_backend import SIM_DDR_BYTES
    from sw.runtime.arena import ArenaFull
    with pytest.raises(ArenaFull, match=f"{2 * SIM_DDR_BYTES:,} contiguous bytes.*CMA"):
        Driver(SIM, "pynq", ddr_bytes=2 * SIM_DDR_BYTES).linear(*layer(np.random.default_rng(2), 4, 8, 8))


def test_pynq_hang_times_out_resets_and_raises(monkeypatch):
    drv = Driver(SIM, "pynq", timeout_s=0.2)
    a, b, bias, mult, shift = layer(np.random.default_rng(1), 4, 8, 8)
    drv.linear(a, b, bias, mult, shift)                      # brings the device up
    model = drv.device.device.model

    def dead_bitstream():                                    # accepts START, never finishes
        model.regs["STATUS"] = isa.STATUS_BUSY
        model.regs["DESC_DONE"] = 2
    monkeypatch.setattr(model, "_run", dead_bitstream)
    with pytest.raises(AcceleratorError, match=r"hung.*0.2 s.*DESC_DONE=2.*reset"):
        drv.linear(a, b, bias, mult, shift)
    assert drv.device.ip.mmio.read(isa.REG["STATUS"]) == 0    # the soft reset cleared BUSY
