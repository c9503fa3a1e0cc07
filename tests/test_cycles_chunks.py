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


def _same(monkeypatch, cfg, prog, raw=None, runs=None):
    n = len(prog.descriptors)
    raw = prog.image[:n * isa.DESCRIPTOR_BYTES].reshape(n, -1) if raw is None else raw
    runs = runs or getattr(prog, "runs", None) or [(0, len(raw))]
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
    """The program run twice on one engine: its normaliser state carries over (NORM_AGAIN the second time)."""
    cfg = preset(name)
    rng = np.random.default_rng(nq + nk)
    prog = compile_attention(cfg, rand8(rng, (heads, nq, dim)), rand8(rng, (heads, nk, dim)),
                             rand8(rng, (heads, nk, dim)), intattn.AttentionQuant(3000, 14, 1 << 28, 30))
    first, again = _same(monkeypatch, cfg, prog, runs=[(0, len(prog.descriptors))] * 2)
    assert first[-1] is again[-1] is True


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


def _count_stepped(monkeypatch) -> list:
    """The lengths of the descriptor runs the cycle model steps one by one (not applied from a chunk's record)."""
    stepped = []
    steps = CY._steps

    def counting(cfg, f, cols, st, lo, hi, attn, execute):
        stepped.append(hi - lo)
        return steps(cfg, f, cols, st, lo, hi, attn, execute)

    monkeypatch.setattr(CY, "_steps", counting)
    return stepped


def test_chunks_are_replayed(monkeypatch):
    """The speed-up is real: most of a regular linear's and a many-group attention's descriptors are applied
    from a chunk's record, not stepped one by one."""
    cfg = preset("kv260")
    rng = np.random.default_rng(2)
    stepped = _count_stepped(monkeypatch)
    progs = [_linear(cfg, rng, 16384, 96, 384),
             compile_attention(cfg, *(rand8(rng, (2, 2048, 64)) for _ in range(3)),
                               intattn.AttentionQuant(3000, 14, 1 << 28, 30))]
    for prog in progs:
        stepped.clear()
        n = len(prog.descriptors)
        _outcomes(monkeypatch, cfg, prog.image[:n * isa.DESCRIPTOR_BYTES].reshape(n, -1), [(0, n)], True)
        assert sum(stepped) < n / 5, (sum(stepped), n)


def _random_list(rng, cfg, blocks: int) -> np.ndarray:
    """Blocks drawn from a few random templates (LOADs, COMPUTEs, STOREs, STEPs and NORMs, SYNCs, waits a few
    completions back), so a chunk recurs from many different states."""
    kinds = ["LOAD", "COMPUTE", "STORE", "SYNC"] + ["ATTENTION"] * ("attention" in cfg.engines)
    units = ["load", "compute", "store", "attention"]
    templates = []
    for _ in range(4):
        t = []
        for _ in range(rng.integers(3, 12)):
            kind = kinds[rng.integers(len(kinds))]
            d = dict(opcode=isa.OPCODES[kind])
            if kind == "LOAD":
                d.update(target=isa.TARGETS["AB"[rng.integers(2)]], count=int(rng.choice([8, 64, 300])))
            elif kind == "COMPUTE":
                d.update(k_last=int(rng.choice([0, 3, 40])), count=int(rng.integers(1, 4)))
            elif kind == "STORE":
                d.update(count=int(rng.integers(1, 3)), out_int32=int(rng.integers(2)))
            elif kind == "ATTENTION":
                d.update(target=int(rng.integers(2)), k_last=int(rng.integers(2)), count=int(rng.integers(1, 3)))
            back = {u: int(rng.choice([0, 0, 1, 2, 6])) for u in units}
            t.append((kind, d, back))
        templates.append(t)
    unit_of = {"LOAD": "load", "COMPUTE": "compute", "STORE": "store", "ATTENTION": "attention"}
    done = dict.fromkeys(units, 0)
    words = []
    for b in range(blocks):
        for kind, d, back in templates[0 if rng.random() < 0.8 else rng.integers(len(templates))]:
            d = dict(d)
            for u, r in back.items():
                if r and done[u] >= r:
                    d[f"wait_{u}"] = done[u] - r + 1
            words.append(np.frombuffer(isa.pack_descriptor(**d), np.uint8))
            if kind in unit_of:
                done[unit_of[kind]] += 1
    return np.stack(words)


@pytest.mark.parametrize("name", ["kv260", "sim"])
def test_random_lists_chunks_equal_the_loop(monkeypatch, name):
    """Small chunks over lists of recurring random blocks: each part of a chunk's start state must be in its
    key (a chunk recurs from states that differ in one part or another); some chunks are replayed."""
    cfg = preset(name)
    monkeypatch.setattr(CY, "CHUNK_MIN", 8)
    monkeypatch.setattr(CY, "CUT_RADIUS", 6)
    stepped = _count_stepped(monkeypatch)
    rng = np.random.default_rng(11)
    total = 0
    for _ in range(30):
        raw = _random_list(rng, cfg, 120)
        ref = _outcomes(monkeypatch, cfg, raw, [(0, len(raw))], False)
        stepped.clear()
        assert _outcomes(monkeypatch, cfg, raw, [(0, len(raw))], True) == ref
        total += len(raw) - sum(stepped)
    assert total > 0
