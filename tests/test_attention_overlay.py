"""Attention on the overlay: compiler + driver on sim / rtl / pynq, rtl == sim == golden bit for bit."""
import math

import numpy as np
import pytest

from golden_model import intattn as A
from hw import isa
from hw.config import preset
from sw.runtime.checks import DescriptorError, check_descriptors
from sw.compile.attention import compile_attention
from sw.compile.linear import CompileError
from sw.runtime.driver import Driver

SIM = preset("sim")


def case(rng, heads, lq, lk, d, kind="random", logit_std=3.0):
    """int8 q, k, v (H, L, d), the quantisation parameters, and a name."""
    q = rng.integers(-128, 128, (heads, lq, d)).astype(np.int8)
    k = rng.integers(-128, 128, (heads, lk, d)).astype(np.int8)
    v = rng.integers(-128, 128, (heads, lk, d)).astype(np.int8)
    s = math.sqrt(logit_std) / 73.9
    if kind == "equal":                    # every score equal: the mean of v
        q[:] = 0
    elif kind == "dominant":               # one score far above the rest
        q[:] = 127
        k = rng.integers(-10, 10, (heads, lk, d)).astype(np.int8)
        k[:, lk // 2] = 127
        s = 0.05
    elif kind == "extremes":               # int8 extremes everywhere, saturated log2 scores
        q[:] = -128
        k[:] = np.where(np.arange(lk)[None, :, None] % 2, 127, -128)
        v[:] = np.where(np.arange(lk)[None, :, None] % 3, 127, -128)
        s = 1.0
    quant = A.AttentionQuant.from_scales(s, s, 0.02, 0.02 * 0.5, d)
    return q, k, v, quant


def golden(q, k, v, quant, cfg, out_int32=False):
    return np.stack([A.attention(q[h], k[h], v[h], quant, cfg.cols, out_int32=out_int32) for h in range(len(q))])


CASES = [  # heads, lq, lk, d, kind, out_int32
    (1, 5, 13, 12, "random", False), (2, 4, 8, 8, "random", True), (1, 9, 33, 16, "equal", False),
    (1, 4, 40, 24, "dominant", True), (1, 3, 17, 8, "extremes", False), (3, 6, 21, 20, "random", False),
]


@pytest.mark.parametrize("heads,lq,lk,d,kind,out_int32", CASES)
def test_on_sim_matches_golden(heads, lq, lk, d, kind, out_int32):
    rng = np.random.default_rng(lq * 100 + lk)
    q, k, v, quant = case(rng, heads, lq, lk, d, kind)
    got = Driver(SIM, "sim").attention(q, k, v, quant, out_int32=out_int32)
    assert np.array_equal(got, golden(q, k, v, quant, SIM, out_int32))


def test_on_sim_long_keys_and_big_head_dim():
    """Long sequences and d = 256 on the 16 x 16 preset (sim backend only: the RTL would be slow)."""
    cfg = preset("bench16")
    rng = np.random.default_rng(3)
    q, k, v, quant = case(rng, 1, 20, 1500, 256)
    drv = Driver(cfg, "sim")
    got = drv.attention(q[0], k[0], v[0], quant)
    assert np.array_equal(got, A.attention(q[0], k[0], v[0], quant, cfg.cols))
    # Head dims that need several NORM groups (more chunks than accumulator regions).
    small = cfg.replace(acc_depth=64)
    q, k, v, quant = case(rng, 2, 17, 40, 250)
    got = Driver(small, "sim").attention(q, k, v, quant, out_int32=True)
    assert np.array_equal(got, golden(q, k, v, quant, small, True))


@pytest.mark.rtl
def test_rtl_equals_sim_equals_golden_with_axi_stalls():
    """One Verilator run for several programs, 30 % random backpressure on every AXI channel;
    then two programs without stalls: the sim model's cycles within 5 % of the RTL's."""
    from sw.backends.rtl import run_images
    rng = np.random.default_rng(11)
    drv = Driver(SIM, "sim")
    progs, wants, sims = [], [], []
    for heads, lq, lk, d, kind, out_int32 in CASES[:5]:
        q, k, v, quant = case(rng, heads, lq, lk, d, kind)
        prog = compile_attention(SIM, q, k, v, quant, out_int32=out_int32, base_addr=drv.BUFFER_BASE)
        progs.append(prog)
        wants.append(golden(q, k, v, quant, SIM, out_int32))
        sims.append((prog.output(drv.run(prog)), drv.last_run.cycles))
    jobs = [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors), timeout=500_000) for p in progs]
    stalled = run_images(SIM, jobs, stall=0.3, seed=5, name="test-attention-stall")
    for prog, want, (sim_out, _), res in zip(progs, wants, sims, stalled):
        assert res["error"] == 0 and not res["timed_out"], res
        assert np.array_equal(prog.output(res["image"]), want), (prog.heads, prog.lq, prog.lk, prog.d)
        assert np.array_equal(sim_out, want)
    # Cycle model: no stalls, bigger shapes.
    timed = []
    for heads, lq, lk, d in ((1, 8, 64, 64), (2, 4, 24, 32)):
        q, k, v, quant = case(rng, heads, lq, lk, d)
        prog = compile_attention(SIM, q, k, v, quant, base_addr=drv.BUFFER_BASE)
        assert np.array_equal(prog.output(drv.run(prog)), want := golden(q, k, v, quant, SIM))
        timed.append((prog, want, drv.last_run.cycles))
    results = run_images(SIM, [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors),
                                     timeout=500_000) for p, _, _ in timed])
    for (prog, want, sim_cycles), res in zip(timed, results):
        assert res["error"] == 0 and np.array_equal(prog.output(res["image"]), want)
        assert abs(sim_cycles / res["cycles"] - 1) < 0.05, (sim_cycles, res["cycles"])


def test_pynq_backend_matches_golden():
    pytest.importorskip("pynq")
    rng = np.random.default_rng(8)
    q, k, v, quant = case(rng, 2, 7, 19, 16)
    drv_p, drv_s = Driver(SIM, "pynq"), Driver(SIM, "sim")
    got = drv_p.attention(q, k, v, quant)
    assert np.array_equal(got, golden(q, k, v, quant, SIM))
    assert np.array_equal(drv_s.attention(q, k, v, quant), got)
    assert drv_p.last_run.cycles == drv_s.last_run.cycles


def test_compiler_refuses_what_does_not_fit():
    rng = np.random.default_rng(0)
    q, k, v, quant = case(rng, 1, 4, 8, 8)
    with pytest.raises(CompileError, match="no attention engine"):
        compile_attention(preset("ulx3s-gemm"), q, k, v, quant)
    with pytest.raises(CompileError, match="int8"):
        compile_attention(SIM, q.astype(np.int16), k, v, quant)
    with pytest.raises(CompileError, match="do not match"):
        compile_attention(SIM, q, k[:, :, :4], v, quant)
    with pytest.raises(CompileError, match="head dim"):
        big = np.zeros((1, 2, 264), np.int8)
        compile_attention(SIM, big, big, big, quant)
    with pytest.raises(CompileError, match="regions"):
        compile_attention(SIM.replace(acc_depth=8), q, k, v, quant)


@pytest.mark.parametrize("field,value,match", [
    ("count", 9, "keys in a tile"), ("k_last", 40, "head dim"), ("stride", 0, "score shift"),
    ("target", 3, "attention mode"), ("b_base", 510, "V scratchpad"),
])
def test_host_refuses_bad_attention_descriptors(field, value, match):
    rng = np.random.default_rng(0)
    prog = compile_attention(SIM, *case(rng, 1, 4, 8, 8), base_addr=0x100000)
    descs = [dict(d) for d in prog.descriptors]
    i = next(i for i, d in enumerate(descs) if d["opcode"] == isa.OPCODES["ATTENTION"])
    descs[i][field] = value
    with pytest.raises(DescriptorError, match=match):
        check_descriptors(SIM, descs, prog.buffer_table())
    # The V target needs the attention engine.
    no_attn = SIM.replace(engines=("gemm",))
    with pytest.raises(DescriptorError, match="target"):
        check_descriptors(no_attn, [dict(opcode=1, target=3, count=1, sp_addr=0, dram_addr=0x100000)],
                          prog.buffer_table())


def test_driver_splits_calls_too_big_for_one_program(monkeypatch):
    """Wait counts are 16-bit: big calls run as several programs over heads and query rows."""
    import sw.compile.attention as ca
    bench = preset("bench16")
    n = ca.max_query_tiles(bench, 8192)
    assert n == 124                     # 31 groups of 4 slots; 124 x 512 COMPUTEs, 124 x 514 STEP/NORMs
    assert max(ca.program_counts(bench, n, 8192, 256).values()) < 1 << 16
    assert max(ca.program_counts(bench, n + 4, 8192, 256).values()) >= 1 << 16
    rng = np.random.default_rng(4)
    q, k, v, quant = case(rng, 2, 11, 21, 16)
    # program_counts is what the compiler emits (one head: 3 query tiles, 2 slots -> 2 groups)
    prog = compile_attention(SIM, q[:1], k[:1], v[:1], quant)
    names = {v_: k_ for k_, v_ in isa.OPCODES.items()}
    emitted = {u: sum(names[d["opcode"]] == u for d in prog.descriptors) for u in ("LOAD", "COMPUTE", "ATTENTION", "STORE")}
    assert emitted == ca.program_counts(SIM, 3, 21, 16) and prog.slots == 2
    kv260 = preset("kv260")        # Q from token tiles on 16 x 32: one LOAD per query tile and channel
    q2, k2, v2, _ = case(rng, 1, 70, 40, 32)
    prog = compile_attention(kv260, q2, k2, v2, quant, token_tiles=True)
    emitted = {u: sum(names[d["opcode"]] == u for d in prog.descriptors) for u in ("LOAD", "COMPUTE", "ATTENTION", "STORE")}
    assert emitted == ca.program_counts(kv260, 5, 40, 32, token_tiles=True)
    assert emitted["LOAD"] == ca.program_counts(kv260, 5, 40, 32)["LOAD"] + 5 * 32 - 1      # one group of 6 slots
    with pytest.raises(CompileError, match="whole 8-byte AXI beats"):
        compile_attention(SIM, q2, k2, v2, quant, token_tiles=True)
    whole = Driver(SIM, "sim")
    want = whole.attention(q, k, v, quant)
    assert len(whole.last_programs) == 1
    monkeypatch.setattr(ca, "max_query_tiles", lambda cfg, lk, d=None, **kw: 2)   # 8 query rows per program
    drv = Driver(SIM, "sim")
    got = drv.attention(q, k, v, quant)
    assert np.array_equal(got, want) and np.array_equal(got, golden(q, k, v, quant, SIM))
    assert len(drv.last_programs) == 4                               # 2 heads x (rows 0..7, 8..10)
    assert drv.last_run.macs == whole.last_run.macs
    assert drv.last_run.cycles > whole.last_run.cycles          # four start-ups and drains
    assert sum(p.kv_min_bytes for p in drv.last_programs) == whole.last_programs[0].kv_min_bytes
    got2 = drv.attention(q[1], k[1], v[1], quant)                   # 2-D in, 2-D out
    assert np.array_equal(got2, want[1])
