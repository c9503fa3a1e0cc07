"""The cycle model's chunked pass (sw.backends.cycles.CHUNKS: a chunk of descriptors met again in the same
relative state applied from its first run's record) gives exactly the per-descriptor loop's outcome: cycles,
unit counts, the attention engine's lasting state, and where a list stops (hang, bad opcode)."""
import numpy as np
import pytest

from golden_model import intattn, intvec
from hw import isa
from hw.config import preset
from sw.backends import cycles as CY
from sw.backends.sim_attention import AttentionModel
from sw.compile.attention import compile_attention
from sw.compile.conv import compile_conv2d, compile_depthwise
from sw.compile.linear import compile_linear
from sw.compile.vector import compile_vector
from sw.runtime.layout import RowRuns


def rand8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


def _outcomes(monkeypatch, cfg, raw, runs, chunks: bool):
    """Each run's outcome, timed afresh (nothing remembered), one attention engine for all the runs."""
    monkeypatch.setattr(CY, "CHUNKS", chunks)
    attn = AttentionModel(cfg) if "attention" in cfg.engines else None
    out = []
    for first, count in runs:
        CY.forget_timings()
        o = CY.simulate(cfg, CY.decode_descriptors(raw[first:first + count]), attn)
        out.append((o.state, o.desc_done, o.cycles, o.counts, o.error_bit, o.error_index,
                    attn.normed if attn is not None else None))
    return out


def _same(monkeypatch, cfg, prog, raw=None):
    n = len(prog.descriptors)
    raw = prog.image[:n * isa.DESCRIPTOR_BYTES].reshape(n, -1) if raw is None else raw
    runs = getattr(prog, "runs", None) or [(0, len(raw))]
    ref = _outcomes(monkeypatch, cfg, raw, runs, False)
    assert _outcomes(monkeypatch, cfg, raw, runs, True) == ref
    return ref


def _linear(cfg, rng, M, K, N, **kw):
    return compile_linear(cfg, rand8(rng, (M, K)), rand8(rng, (K, N)), None, 1 << 20, 20, **kw)


# (preset, M, K, N): resident schedules of one and many blocks, a K-split one, short edge tiles, the DMA the bound
LINEARS = [("kv260", 4096, 96, 384), ("kv260", 1000, 1536, 384), ("kv260", 4096, 32, 4), ("bench16", 1500, 64, 700),
           ("sim", 900, 24, 200), ("pynq-z2", 333, 48, 130), ("zcu104", 2000, 96, 96), ("kv260", 16, 96, 384)]


@pytest.mark.parametrize("name,M,K,N", LINEARS)
def test_linear_chunks_equal_the_loop(monkeypatch, name, M, K, N):
    cfg = preset(name)
    _same(monkeypatch, cfg, _linear(cfg, np.random.default_rng(M + K + N), M, K, N))


@pytest.mark.parametrize("name,heads,nq,nk,dim", [("kv260", 2, 1024, 1024, 64), ("kv260", 3, 200, 700, 32),
                                                  ("bench16", 2, 300, 300, 64), ("kv260", 1, 40, 70, 64)])
def test_attention_chunks_equal_the_loop(monkeypatch, name, heads, nq, nk, dim):
    """Several runs on one engine: its normaliser state carries over, and must come out alike."""
    cfg = preset(name)
    rng = np.random.default_rng(nq + nk)
    prog = compile_attention(cfg, rand8(rng, (heads, nq, dim)), rand8(rng, (heads, nk, dim)),
                             rand8(rng, (heads, nk, dim)), intattn.AttentionQuant(3000, 14, 1 << 28, 30))
    _same(monkeypatch, cfg, prog)


def test_vector_conv_depthwise_chunks_equal_the_loop(monkeypatch):
    cfg = preset("kv260")
    rng = np.random.default_rng(7)
    x = rand8(rng, (64 * 33, 96))
    progs = [compile_vector(cfg, "add", x, intvec.AddParams(3000, 5000, 12), b=x[::-1].copy(),
                            runs={"out": RowRuns.windows(64, 33, 8)}),
             compile_vector(cfg, "add", x, intvec.AddParams(3000, 5000, 12), b=x[::-1].copy()),
             compile_depthwise(cfg, rand8(rng, (40, 16, 16)), rand8(rng, (40, 1, 7, 7)), None, 1 << 20, 20, padding=3),
             compile_conv2d(cfg, rand8(rng, (3, 64, 64)), rand8(rng, (48, 3, 4, 4)), None, 1 << 20, 20, stride=4)]
    for prog in progs:
        _same(monkeypatch, cfg, prog)


def test_chunks_stop_where_the_loop_does(monkeypatch):
    """A list that hangs (a wait on a LOAD not in it) or meets a bad opcode stops at the same descriptor."""
    cfg = preset("kv260")
    prog = _linear(cfg, np.random.default_rng(1), 2000, 96, 256)
    n = len(prog.descriptors)
    raw = prog.image[:n * isa.DESCRIPTOR_BYTES].reshape(n, -1)
    first_load = int(np.flatnonzero(raw[:, 0] == isa.OPCODES["LOAD"])[0])
    hang = np.delete(raw, first_load, axis=0)
    bad = raw.copy()
    bad[n // 2, 0] = 0xEE
    assert _same(monkeypatch, cfg, prog, hang)[0][0] == "hang"
    assert _same(monkeypatch, cfg, prog, bad)[0][:2] == ("error", n // 2)


def test_chunks_are_replayed(monkeypatch):
    """The speed-up is real: most of a regular linear's and a many-group attention's descriptors are applied
    from a chunk's record, not stepped one by one."""
    cfg = preset("kv260")
    rng = np.random.default_rng(2)
    stepped = []
    steps = CY._steps

    def counting(cfg, f, cols, st, lo, hi, attn, execute):
        stepped.append(hi - lo)
        return steps(cfg, f, cols, st, lo, hi, attn, execute)

    monkeypatch.setattr(CY, "_steps", counting)
    progs = [_linear(cfg, rng, 16384, 96, 384),
             compile_attention(cfg, *(rand8(rng, (2, 2048, 64)) for _ in range(3)),
                               intattn.AttentionQuant(3000, 14, 1 << 28, 30))]
    for prog in progs:
        stepped.clear()
        n = len(prog.descriptors)
        _outcomes(monkeypatch, cfg, prog.image[:n * isa.DESCRIPTOR_BYTES].reshape(n, -1), [(0, n)], True)
        assert sum(stepped) < n / 5, (sum(stepped), n)
