"""Overlay + compiler + driver: rtl == sim == golden bit for bit; bad input; hung accelerator."""
import numpy as np
import pytest

from golden_model.intops import gemm
from golden_model.intvec import AddParams, LutParams, linear_add, linear_lut
from hw import isa
from hw.config import preset
from sw.backends.faults import Fault
from sw.runtime.checks import DescriptorError, check_descriptors
from sw.compile.linear import CompileError, compile_linear
from sw.runtime.driver import AcceleratorError, Driver
from tests.conftest import mid_overlay

SIM = preset("sim")


def layer(rng, m, k, n, extremes=False):
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    if extremes:
        a[0] = -128
        b[:, 0] = -128
        b[:, -1] = 127
    bias = rng.integers(-2**20, 2**20, n)
    bias[0] = -2**31
    mult = rng.integers(1 << 29, 1 << 31, n)
    shift = rng.integers(34, 44, n)
    return a, b, bias, mult, shift


CASES = [  # m, k, n, relu, out_int32
    (1, 1, 8, False, False), (5, 9, 11, True, False), (4, 8, 8, False, True), (9, 70, 20, True, True),
    (13, 33, 17, False, False),
]


@pytest.mark.parametrize("m,k,n,relu,out_int32", CASES)
def test_on_sim_matches_golden(m, k, n, relu, out_int32):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b, bias, mult, shift = layer(rng, m, k, n, extremes=True)
    got = Driver(SIM, "sim").linear(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
    assert np.array_equal(got, gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32))


def test_on_sim_k_split_and_small_scratchpads():
    """K larger than half a scratchpad: accumulated chunks; acc scratchpad of just two tiles."""
    cfg = SIM.replace(a_depth=64, b_depth=64, acc_depth=8, param_depth=2)
    rng = np.random.default_rng(3)
    a, b, bias, mult, shift = layer(rng, 9, 100, 19, extremes=True)
    drv = Driver(cfg, "sim")
    assert np.array_equal(drv.linear(a, b, bias, mult, shift), gemm(a, b, bias, mult, shift))
    assert np.array_equal(drv.linear(a, b, bias, out_int32=True), gemm(a, b, bias, out_int32=True))


def test_on_sim_k_split_in_blocks_of_tiles():
    """K larger than half a scratchpad over blocks of several M- and N-tiles (k_split_blocking), exact in
    both sim modes; on kv260 a Hiera fc2 (K = 1,536 > 1,024) keeps the array busy."""
    from sw.backends.cycles import program_cycles
    from sw.compile.linear import k_split_blocking
    cfg = SIM.replace(a_depth=256, b_depth=256, acc_depth=64, param_depth=8)
    mb, nb, _ = k_split_blocking(cfg, 10, 5, 320)
    assert mb * nb > 1
    rng = np.random.default_rng(5)
    a, b, bias, mult, shift = layer(rng, 37, 320, 40, extremes=True)
    want = gemm(a, b, bias, mult, shift, relu=True)
    for mode in ("checked", "fast"):
        assert np.array_equal(Driver(cfg, "sim", sim_mode=mode).linear(a, b, bias, mult, shift, relu=True), want)
    kv = preset("kv260")
    prog = Driver(kv, "sim").compile(np.zeros((1024, 1536), np.int8), np.zeros((1536, 384), np.int8), out_int32=True)
    assert prog.macs / program_cycles(prog) / (kv.rows * kv.cols) > 0.8


@pytest.mark.rtl
def test_rtl_equals_sim_equals_golden_with_axi_backpressure():
    """One Verilator run for several layers, random stalls on every AXI channel."""
    from sw.backends.rtl import run_images
    rng = np.random.default_rng(7)
    cases = CASES + [(4, 2100, 8, True, False),          # K split into accumulated chunks
                     (37, 2100, 19, True, False)]        # ... over blocks of several M- and N-tiles
    # Fused store tables (store_lut): an arbitrary table (every entry matters), with and without ReLU.
    cases += [(5, 9, 11, False, False, "lut"), (13, 33, 17, True, False, "lut")]
    # Fused residual adds (store_add): int8 extremes of the residual, N not a multiple of C, M of R, K split,
    # with the table before the add; adds of extreme multipliers (the sum saturates both ways).
    cases += [(13, 33, 17, False, False, "add"), (5, 9, 11, True, False, "lut", "add"),
              (6, 2100, 9, False, False, "add")]
    # A read as token rows by transposing LOADs (load_t): a tail M-tile, K off the beat, K in chunks.
    cases += [(37, 45, 29, True, False, "a_rows"), (9, 2100, 9, False, True, "a_rows")]
    drv = Driver(SIM, "sim")
    progs, wants, sims = [], [], []
    for m, k, n, relu, out_int32, *fused in cases:
        a, b, bias, mult, shift = layer(rng, m, k, n, extremes=True)
        table = LutParams(rng.integers(-128, 128, 256).astype(np.int8)) if "lut" in fused else None
        x = rng.choice(np.array([-128, 127, -1, 0, 1], np.int8), (m, n)) if "add" in fused else None
        p = (AddParams(65535, 65535, 8) if m % 2 else AddParams.make(0.03, 0.05, 0.04)) if "add" in fused else None
        prog = drv.compile(a, b, bias, mult, shift, relu=relu, out_int32=out_int32, lut=table, residual=x, add=p,
                           a_rows="a_rows" in fused)
        progs.append(prog)
        want = gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        if x is not None:
            want = linear_add(a, b, bias, mult, shift, x, p, relu=relu, table=table)
        elif table is not None:
            want = linear_lut(a, b, bias, mult, shift, table, relu=relu)
        wants.append(want)
        sims.append((prog.output(drv.run(prog)), drv.last_run.cycles))
    # B through a transposing LOAD: a tail of 3 token rows, 21 entries (2 beats and 5 bytes of each row).
    from tests.test_load_transpose import b_transposed_job, job_result
    b_job, b_want = b_transposed_job(SIM, rng, 3, 21, base=0x10000)
    *results, b_res = run_images(SIM, [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors),
                                            timeout=2_000_000) for p in progs] + [b_job], stall=0.3, seed=11)
    assert b_res["error"] == 0 and np.array_equal(job_result(SIM, b_job, b_res["image"]), b_want)
    for prog, want, (sim_out, _), res in zip(progs, wants, sims, results):
        assert res["error"] == 0 and not res["timed_out"], res
        rtl_out = prog.output(res["image"])
        assert np.array_equal(rtl_out, want), (prog.m, prog.k, prog.n)
        assert np.array_equal(sim_out, rtl_out)


@pytest.mark.rtl
def test_rtl_errors_hang_reset_and_cycle_model():
    from sw.backends.rtl import run_images
    rng = np.random.default_rng(1)
    a, b, bias, mult, shift = layer(rng, 4, 8, 8)
    prog = compile_linear(SIM, a, b, bias, mult, shift, base_addr=0x10000)
    bad = prog.image.copy()
    bad[0] = 0x77                                            # descriptor 0: unknown opcode
    hang = prog.image.copy()
    hang[32 * 3:32 * 4] = np.frombuffer(isa.pack_descriptor(opcode=isa.OPCODES["SYNC"], wait_load=99), np.uint8)
    # Addresses outside the DDR model: the AXI slave answers SLVERR on the read / write.
    read_err, write_err = prog.image.copy(), prog.image.copy()
    store = next(i for i, d in enumerate(prog.descriptors) if d["opcode"] == isa.OPCODES["STORE"])
    for img, i in ((read_err, 0), (write_err, store)):
        img[32 * i:32 * (i + 1)] = np.frombuffer(isa.pack_descriptor(**(prog.descriptors[i] | {"dram_addr": 1 << 30})),
                                                 np.uint8)
    jobs = [dict(base=0x10000, image=img, desc_count=len(prog.descriptors), timeout=t)
            for img, t in ((bad, 20_000), (hang, 5_000), (read_err, 20_000), (write_err, 20_000))]
    # Error responses injected by the AXI RAM (sim/benches/axi_faults.py) on a good program, each
    # followed by a soft reset; the sim model given the same fault reports the same ERROR.
    faults = [Fault("read_decerr", beat=5), Fault("write_slverr", beat=1), Fault("fetch_error", beat=3)]
    jobs += [dict(base=0x10000, image=prog.image, desc_count=len(prog.descriptors), timeout=20_000, fault=f)
             for f in faults]
    jobs.append(dict(base=0x10000, image=prog.image, desc_count=len(prog.descriptors), timeout=200_000))
    # More layers without stalls (fused GELU, add, A through transposing LOADs: load_t): the sim model's
    # cycles must be within 5% of the RTL's.
    drv = Driver(SIM, "sim")
    timed = []
    for m, k, n, fused, added, a_rows in ((9, 70, 20, LutParams.gelu(0.05, 0.02), None, False),
                                          (16, 256, 32, None, None, False),
                                          (16, 96, 24, None, AddParams.make(0.05, 0.02, 0.06), False),
                                          (37, 45, 29, None, None, True)):
        res = rng.integers(-128, 128, (m, n)).astype(np.int8) if added else None
        p = drv.compile(*layer(rng, m, k, n), lut=fused, residual=res, add=added, a_rows=a_rows)
        drv.run(p)
        timed.append(drv.last_run.cycles)
        jobs.append(dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors), timeout=500_000))
    r_bad, r_hang, r_read, r_write, *rest = run_images(SIM, jobs)
    r_faults, r_ok, r_timed = rest[:3], rest[3], rest[4:]
    for fault, r in zip(faults, r_faults):
        assert r["error"] == sim_model_error(prog, fault) and r["status_after_reset"] == 0, (fault, r)
    assert r_read["error"] & isa.ERROR_FLAGS == isa.ERROR_AXI_READ and r_read["error_desc"] == 1
    assert r_write["error"] & isa.ERROR_FLAGS == isa.ERROR_AXI_WRITE and r_write["status"] & isa.STATUS_ERROR
    assert r_read["status_after_reset"] == 0 and r_write["status_after_reset"] == 0
    for sim_cycles, r in zip(timed, r_timed):
        assert r["error"] == 0 and abs(sim_cycles / r["cycles"] - 1) < 0.05, (sim_cycles, r["cycles"])
    assert r_bad["error"] == isa.ERROR_BAD_OPCODE and r_bad["error_desc"] == 0
    assert r_hang["timed_out"] and r_hang["error"] == 0 and r_hang["desc_done"] == 3
    assert r_hang["status_after_reset"] == 0                 # reset: not busy, no error
    assert np.array_equal(prog.output(r_ok["image"]), gemm(a, b, bias, mult, shift))   # still works after reset


def sim_model_error(prog, fault) -> int:
    """ERROR after the sim model runs `prog` (at its base address) with `fault` injected."""
    from sw.backends.sim_model import SimOverlay
    model = SimOverlay(SIM, 1 << 20)
    model.ddr[prog.base_addr:prog.base_addr + prog.image.size] = prog.image
    model.inject(fault)
    for reg, value in (("DESC_ADDR", prog.base_addr), ("DESC_COUNT", len(prog.descriptors)),
                       ("CONTROL", isa.CONTROL_START)):
        model.write_reg(isa.REG[reg], value)
    return model.read_reg(isa.REG["ERROR"])


def test_sim_model_injected_faults_set_error_and_response():
    """The sim model's ERROR for the faults the rtl test injects (same code both sides)."""
    rng = np.random.default_rng(1)
    prog = compile_linear(SIM, *layer(rng, 4, 8, 8), base_addr=0x10000)
    resp = isa.ERROR_RESP_SHIFT
    assert sim_model_error(prog, Fault("read_decerr", beat=5)) == isa.ERROR_AXI_READ | 3 << resp
    assert sim_model_error(prog, Fault("write_slverr", beat=1)) == isa.ERROR_AXI_WRITE | 2 << resp
    assert sim_model_error(prog, Fault("fetch_error", beat=3)) == isa.ERROR_DESC_FETCH | 2 << resp


def test_driver_times_out_on_hung_sim_and_resets():
    rng = np.random.default_rng(2)
    a, b, bias, mult, shift = layer(rng, 4, 8, 8)
    drv = Driver(SIM, "sim", timeout_s=0.2)
    prog = drv.compile(a, b, bias, mult, shift)
    descs = [dict(d) for d in prog.descriptors]
    # A wait that only a later descriptor could satisfy is refused by the host check ...
    descs[0]["wait_compute"] = 1
    with pytest.raises(DescriptorError, match="would hang"):
        drv.run(prog, descs)
    # ... so corrupt the program in DDR after the check, as a faulty memory or bitstream would.
    loaded = drv.session.load(prog, "corrupt")
    loaded.write_inputs()
    sync = np.frombuffer(isa.pack_descriptor(opcode=isa.OPCODES["SYNC"], wait_store=5), np.uint8)
    drv.device.write(loaded.addresses["descriptors"] + 32 * 3, sync)
    with pytest.raises(AcceleratorError, match=r"hung.*0.2 s.*DESC_DONE=3.*reset"):
        loaded.run()
    loaded.free()
    assert drv.device.read_reg(isa.REG["STATUS"]) == 0        # reset
    good = drv.compile(a, b, bias, mult, shift)
    assert np.array_equal(good.output(drv.run(good)), gemm(a, b, bias, mult, shift))


def test_driver_reports_bad_opcode_error():
    rng = np.random.default_rng(4)
    a, b, bias, mult, shift = layer(rng, 4, 8, 8)
    drv = Driver(SIM, "sim")
    prog = drv.compile(a, b, bias, mult, shift)
    loaded = drv.session.load(prog, "bad")
    drv.device.write(loaded.addresses["descriptors"], np.array([0x77], np.uint8))   # past the host check
    with pytest.raises(AcceleratorError, match="bad opcode"):
        loaded.run()


@pytest.mark.parametrize("field,value,match", [
    ("dram_addr", 0x100, "outside the buffer"), ("dram_addr", 0x100004, "aligned"),
    ("count", 5000, "scratchpad"), ("opcode", 0x77, "opcode"), ("wait_store", 3, "would hang"),
])
def test_host_refuses_bad_descriptors(field, value, match):
    prog = compile_linear(SIM, *layer(np.random.default_rng(0), 4, 8, 8), base_addr=0x100000)
    descs = [dict(d) for d in prog.descriptors]
    descs[0][field] = value
    with pytest.raises(DescriptorError, match=match):
        check_descriptors(SIM, descs, prog.buffer_table())


def test_compiler_refuses_what_does_not_fit():
    rng = np.random.default_rng(0)
    a, b, *_ = layer(rng, 4, 8, 8)
    with pytest.raises(CompileError, match="int8"):
        compile_linear(SIM, a.astype(np.int16), b, None, out_int32=True)
    with pytest.raises(CompileError, match="not M x K"):
        compile_linear(SIM, a, b.T[:3], None, out_int32=True)
    with pytest.raises(CompileError, match="multiplier"):
        compile_linear(SIM, a, b, None)
    with pytest.raises(CompileError, match="bytes of DDR"):
        compile_linear(SIM, *layer(rng, 300, 64, 300)[:2], None, out_int32=True, max_ddr_bytes=1 << 16)
    with pytest.raises(CompileError, match="accumulator"):
        compile_linear(SIM.replace(acc_depth=4), a, b, None, out_int32=True)
    with pytest.raises(CompileError, match="aligned"):
        compile_linear(SIM, a, b, None, out_int32=True, base_addr=100)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_128bit_axi_bit_exact_and_cycles():
    """UltraScale+ width: 128-bit beats, four A entries per beat, int32 rows of four beats."""
    from sw.backends.rtl import run_images
    # GEMM only: the attention and conv engines have their own benches, and leaving
    # them out keeps this wider overlay's Verilator build short.
    cfg = SIM.replace(name="sim128", cols=16, axi_data_bits=128, acc_depth=32, engines=("gemm",))
    drv = Driver(cfg, "sim")
    rng = np.random.default_rng(9)
    progs, wants, cycles = [], [], []
    for m, k, n, relu, out_int32 in [(7, 45, 37, True, False), (5, 130, 16, False, True), (12, 64, 48, False, False),
                                     (20, 2200, 40, False, False)]:      # K split, blocks of M- and N-tiles
        a, b, bias, mult, shift = layer(rng, m, k, n, extremes=True)
        p = drv.compile(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        assert np.array_equal(p.output(drv.run(p)), want := gemm(a, b, bias, mult, shift, relu=relu,
                                                                    out_int32=out_int32))
        progs.append(p), wants.append(want), cycles.append(drv.last_run.cycles)
    results = run_images(cfg, [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors),
                                    timeout=500_000) for p in progs], name="test-overlay-128")
    for p, want, sim_cycles, r in zip(progs, wants, cycles, results):
        assert r["error"] == 0 and not r["timed_out"]
        assert np.array_equal(p.output(r["image"]), want)
        assert abs(sim_cycles / r["cycles"] - 1) < 0.05, (sim_cycles, r["cycles"])


def test_sim_model_reports_axi_errors_outside_ddr():
    """Addresses outside DDR answer with an AXI error response: ERROR bit, ERROR_DESC, irq."""
    from sw.backends.sim_model import SimOverlay
    model = SimOverlay(SIM, 1 << 16)
    descs = [isa.pack_descriptor(opcode=isa.OPCODES["LOAD"], target=0, count=4, dram_addr=1 << 20),
             isa.pack_descriptor(opcode=isa.OPCODES["SYNC"])]
    model.ddr[0x1000:0x1000 + 64] = np.frombuffer(b"".join(descs), np.uint8)
    for name, value in (("DESC_ADDR", 0x1000), ("DESC_COUNT", 2), ("IRQ_ENABLE", 1), ("CONTROL", isa.CONTROL_START)):
        model.write_reg(isa.REG[name], value)
    assert model.read_reg(isa.REG["ERROR"]) == isa.ERROR_AXI_READ | isa.AXI_RESP["DECERR"] << isa.ERROR_RESP_SHIFT
    assert model.irq
    assert model.read_reg(isa.REG["STATUS"]) & isa.STATUS_ERROR and model.read_reg(isa.REG["ERROR_DESC"]) == 1
    model.write_reg(isa.REG["CONTROL"], isa.CONTROL_RESET)
    assert model.read_reg(isa.REG["ERROR"]) == 0 and not model.irq


@pytest.mark.rtl
@pytest.mark.slow(seconds=190)
def test_rtl_8x16_overlay_bit_exact():
    """A larger array (8 x 16) on a layer with ragged edges; benchmarks/gemm.py does 16 x 16, 128-bit beats
    are test_rtl_128bit_axi_bit_exact_and_cycles. The build is test_runtime's chain's (conftest)."""
    from sw.backends.rtl import run_images
    cfg = mid_overlay()
    rng = np.random.default_rng(16)
    a, b, bias, mult, shift = layer(rng, 37, 300, 45, extremes=True)
    drv = Driver(cfg, "sim")
    want = gemm(a, b, bias, mult, shift, relu=True)
    progs = [drv.compile(a, b, bias, mult, shift, relu=True, a_rows=a_rows) for a_rows in (False, True)]
    for prog in progs:
        assert np.array_equal(prog.output(drv.run(prog)), want)
    # B transposed with more rows (C = 16) than a 64-bit beat has bytes, a tail of 11 rows
    from tests.test_load_transpose import b_transposed_job, job_result
    jobs = [b_transposed_job(cfg, rng, rows, count) for rows, count in ((16, 19), (11, 8))]
    res = run_images(cfg, [dict(base=prog.base_addr, image=prog.image, desc_count=len(prog.descriptors),
                                timeout=1_000_000) for prog in progs] + [j for j, _ in jobs], stall=0.2)
    for prog, r in zip(progs, res):
        assert r["error"] == 0 and not r["timed_out"]
        assert np.array_equal(prog.output(r["image"]), want)
    for (job, b_want), r in zip(jobs, res[2:]):
        assert r["error"] == 0 and np.array_equal(job_result(cfg, job, r["image"]), b_want)


@pytest.mark.parametrize("name", ["kv260", "zcu104"])
def test_gemm_starts_after_its_first_tile_pair_and_keeps_90_percent(name):
    """The first COMPUTE waits only for its own A and B pieces (a K-chunk of a tile each with the resident ramp,
    sw.compile.linear._resident_order; the rest stream behind it: LoadWindows), and 256^3 keeps the array
    >= 90 % busy on the board presets (issue 15: zcu104's is 32 x 32), bit for bit the golden result."""
    from sw.backends.cycles import program_cycles
    cfg = preset(name)
    a, b, bias, mult, shift = layer(np.random.default_rng(3), 256, 256, 256)
    prog = compile_linear(cfg, a, b, bias, mult, shift)
    first = next(d for d in prog.descriptors if d["opcode"] == isa.OPCODES["COMPUTE"])
    loads = [d for d in prog.descriptors[:prog.descriptors.index(first)] if d["opcode"] == isa.OPCODES["LOAD"]]
    assert first["wait_load"] <= len(loads) and sum(d["count"] for d in loads[:first["wait_load"]]) <= 2 * 256
    assert prog.macs / (program_cycles(prog) * cfg.macs) >= 0.90
    drv = Driver(cfg, "sim")
    assert np.array_equal(prog.output(drv.run(prog)), gemm(a, b, bias, mult, shift))
