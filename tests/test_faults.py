"""Injected AXI faults (sw/backends/faults.py): every fault kind x every engine's program on the sim backend.

A transient fault is detected (ERROR or the time-out), the overlay reset, the program retried once and
its output equal to the fault-free run's, bit for bit; a persistent one gives one AcceleratorError naming
the program and the frame, with the ERROR bit and AXI response of the fault. docs/robustness.md has the table.
"""
import numpy as np
import pytest

from hw import isa
from hw.config import preset
from sw.backends.faults import CHANNEL_ERROR, KINDS, Fault, parse
from sw.commands.sim import random_attention, random_conv, random_layer
from sw.runtime.driver import AcceleratorError, Driver

SIM = preset("sim")


def _gemm(drv, rng):
    return drv.linear(*random_layer(rng, 20, 40, 24), relu=True)


def _attention(drv, rng):
    q, k, v, quant, _ = random_attention(rng, 1, 8, 24, 16)
    return drv.attention(q, k, v, quant)


def _conv(drv, rng):
    x, w, bias, mult, shift = random_conv(rng, 4, 8, 16, 8, 3)
    return drv.conv2d(x, w, bias, mult, shift, padding=1)


def _depthwise(drv, rng):
    x, w, bias, mult, shift = random_conv(rng, 8, 8, 16, 8, 3, depthwise=True)
    return drv.depthwise_conv2d(x, w, bias, mult, shift, padding=1)


def _vector(drv, rng):
    from golden_model import intvec
    x, b = (rng.integers(-128, 128, (9, 21), dtype=np.int8) for _ in range(2))
    return drv.vector("add", x, intvec.AddParams.make(0.08, 0.05, 0.03), b=b)


def _store_lut(drv, rng):
    from golden_model import intvec
    return drv.linear(*random_layer(rng, 20, 40, 24), lut=intvec.LutParams.gelu(0.05, 0.02))


def _store_add(drv, rng):
    from golden_model import intvec
    residual = rng.integers(-128, 128, (20, 24), dtype=np.int8)
    return drv.linear(*random_layer(rng, 20, 40, 24), residual=residual, add=intvec.AddParams.make(0.05, 0.08, 0.1))


def _load_t(drv, rng):
    prog = drv.compile(*random_layer(rng, 20, 40, 24), a_rows=True)     # A as token rows, loaded transposed
    return prog.output(drv.run(prog))


#: engine (hw.isa.ENGINES) -> a call that runs a program on it. A new engine needs a row here.
CALLS = {"gemm": _gemm, "attention": _attention, "conv": _conv, "depthwise": _depthwise, "vector": _vector,
         "store_lut": _store_lut, "store_add": _store_add, "load_t": _load_t}


def test_every_engine_has_a_fault_case():
    assert set(CALLS) == {e.name for e in isa.ENGINES}


def run(engine, fault=None, backend="sim"):
    """(output, driver) of the engine's call with `fault` injected before it (frame 3)."""
    drv = Driver(SIM, backend, timeout_s=0.02, ddr_bytes=1 << 22)
    drv.frame = 3
    if fault is not None:
        drv.device.inject_fault(fault)
    out = CALLS[engine](drv, np.random.default_rng(7))
    return out, drv


@pytest.fixture(scope="module")
def clean():
    """The fault-free outputs (and the route each call took: its engine)."""
    outs = {}
    for engine in CALLS:
        out, drv = run(engine)
        outs[engine] = out
        assert drv.last_run.engine in (engine, "gemm") and not drv.session.recoveries
    return outs


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("engine", CALLS)
def test_transient_fault_recovers_bit_exact(engine, kind, clean):
    seed = sorted(CALLS).index(engine) * 10 + list(KINDS).index(kind)     # a different random beat per case
    out, drv = run(engine, Fault(kind, seed=seed))
    assert np.array_equal(out, clean[engine])
    (note,) = drv.session.recoveries                  # it struck once and one retry recovered
    assert "recovered" in note and ("hung" in note if kind == "hang" else "accelerator error" in note)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("engine", CALLS)
def test_persistent_fault_one_clear_error(engine, kind):
    with pytest.raises(AcceleratorError) as err:
        run(engine, Fault(kind, seed=1, runs=None))
    e = err.value
    message = str(e)
    assert message.startswith("program 'call0' (") and ", frame 3: " in message
    assert message.endswith("(failed again after a soft reset and one retry)") and "\n" not in message
    assert e.program == "call0" and e.frame == 3
    if kind == "hang":
        assert e.timed_out and "not done after 0.02 s" in message
    else:
        channel, resp = KINDS[kind]
        assert e.regs["ERROR"] & isa.ERROR_FLAGS == CHANNEL_ERROR[channel]
        assert isa.error_resp(e.regs["ERROR"]) == resp and resp in message


def test_fault_at_a_given_beat_and_disarm():
    """An explicit beat strikes exactly that descriptor's access; a disarmed fault does nothing."""
    _, drv = run("gemm")
    model = drv.device.model
    model.inject(Fault("read_slverr", beat=0))
    rng = np.random.default_rng(7)
    prog = drv.compile(*random_layer(rng, 20, 40, 24))
    with pytest.raises(AcceleratorError):
        drv.session.load(prog, "once")._run_once()
    assert drv.device.last_regs["ERROR_DESC"] == 1          # the first LOAD's first beat
    model.inject(Fault("write_slverr", runs=None))
    model.inject(None)
    drv.linear(*random_layer(rng, 20, 40, 24))
    assert not drv.session.recoveries


def test_pynq_backend_recovers_and_reports_the_same_way(clean):
    pytest.importorskip("pynq")
    out, drv = run("gemm", Fault("write_decerr", seed=2), backend="pynq")
    assert np.array_equal(out, clean["gemm"]) and len(drv.session.recoveries) == 1
    with pytest.raises(AcceleratorError, match=r"program 'call\d+' \(linear\), frame 3: .*descriptor fetch error response, SLVERR.*one retry"):
        run("gemm", Fault("fetch_error", runs=None), backend="pynq")


def test_parse_cli_form():
    assert parse("hang") == Fault("hang") and parse("read_decerr:persistent") == Fault("read_decerr", runs=None)
    for bad in ("nonsense", "hang:sometimes"):
        with pytest.raises(ValueError):
            parse(bad)


def test_chain_persistent_fault_mid_video_leaves_the_session_usable():
    """Frames before the fault keep their outputs; the error names the step and the frame; with the fault
    gone the same session (weights, buffers, programs in DDR) runs the frame bit-exact."""
    from sw.runtime.backend import open_backend
    from sw.runtime.chain import Chain, ChainSpec, ChainWeights
    from sw.runtime.session import Session
    session = Session(open_backend("sim", preset("bench16"), timeout_s=0.02))
    chain = Chain(session, ChainWeights.random(ChainSpec(height=8)))
    rng = np.random.default_rng(3)
    frames = [rng.integers(-128, 128, (16, 8, 16)).astype(np.int8) for _ in range(2)]
    y0 = chain.run(frames[0], frame=0)
    session.backend.inject_fault(Fault("write_decerr", runs=None))
    with pytest.raises(AcceleratorError, match=r"^program 'chain\.\w+' \(\w+\), frame 1: .*DECERR"):
        chain.run(frames[1], frame=1)
    session.backend.inject_fault(None)
    assert np.array_equal(y0, chain.golden(frames[0]))
    assert np.array_equal(chain.run(frames[1], frame=1), chain.golden(frames[1]))


@pytest.mark.parametrize("fault,code", [("read_decerr", 0), ("hang:persistent", 1)])
def test_cli_recovers_or_fails_in_one_line(fault, code, capsys):
    from sw.cli import main
    assert main(["sim", "chain", "--size", "8x16", "--runs", "1", "--fault", fault, "--timeout", "0.02"]) == code
    out, err = capsys.readouterr()
    if code == 0:
        assert "run 0: bit-exact against golden" in out and "recovered: program 'chain." in out and not err
    else:
        (line,) = err.splitlines()
        assert line.startswith("sam2fpga sim: error: program 'chain.") and "frame 0: accelerator hung" in line


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_driver_recovers_from_an_injected_fault_per_engine(clean):
    """The whole path on the RTL (Verilator, the bench's AXI RAM answering the fault): ERROR read,
    BUSY waited for, soft reset, retry, and the output bit-exact. One fault kind per engine."""
    drv = Driver(SIM, "rtl", ddr_bytes=1 << 22)
    drv.frame = 3
    try:
        for (engine, call), kind in zip(CALLS.items(), ("read_decerr", "write_slverr", "fetch_error", "read_slverr")):
            drv.device.inject_fault(Fault(kind, beat=2))
            before = len(drv.session.recoveries)
            assert np.array_equal(call(drv, np.random.default_rng(7)), clean[engine]), engine
            assert len(drv.session.recoveries) == before + 1, (engine, kind)
            assert KINDS[kind][1] in drv.session.recoveries[-1]
    finally:
        drv.close()
