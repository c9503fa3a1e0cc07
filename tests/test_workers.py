"""golden_model.workers (the kernels' worker threads) and the kernels that share their blocks out: with two
threads every result is bit for bit the serial one (the suite runs with one thread, tests/conftest.py)."""
import threading

import numpy as np
import pytest

from golden_model import intattn, intvec, workers
from golden_model.intops import gemm
from hw.config import preset
from sw.backends import fast
from sw.backends.sim import SimBackend
from sw.compile.linear import compile_linear
from sw.runtime.backend import DDR_BASE


@pytest.fixture
def threads(monkeypatch):
    """Set the worker count for the test: threads(n)."""
    def set_count(n):
        monkeypatch.setenv(workers.ENV, str(n))
    return set_count


def test_count_from_the_environment(threads, monkeypatch):
    threads(3)
    assert workers.count() == 3
    monkeypatch.delenv(workers.ENV)
    assert 1 <= workers.count() <= workers.DEFAULT_CAP
    for bad in ("0", "-2", "two", "1.5"):
        threads(bad)
        with pytest.raises(ValueError, match=workers.ENV):
            workers.count()


def test_map_keeps_order_runs_on_the_pool_and_raises(threads):
    threads(2)
    seen = set()
    barrier = threading.Barrier(2, timeout=10)      # both items at once: only two threads get past it

    def item(i):
        if i < 2:
            barrier.wait()
        seen.add(threading.current_thread().name)
        return i * i
    assert workers.map(item, range(7)) == [i * i for i in range(7)]
    others = seen - {threading.current_thread().name}          # the caller and a pool thread
    assert len(seen) == 2 and len(others) == 1 and others.pop().startswith("sam2fpga-worker")

    def fails(i):
        if i == 3:
            raise KeyError("item 3")
        return i
    for n in range(1, 6):                                     # on a pool thread or the caller
        with pytest.raises(KeyError, match="item 3"):
            workers.map(fails, range(n + 3))
    assert workers.map(lambda i: -i, range(3)) == [0, -1, -2]  # (the pool still works)


def test_map_is_serial_for_one_thread_one_item_and_inside_a_worker(threads):
    main = threading.current_thread().name
    threads(1)
    assert {workers.map(lambda _: threading.current_thread().name, range(4))[i] for i in range(4)} == {main}
    threads(2)
    assert workers.map(lambda _: threading.current_thread().name, [0]) == [main]
    # a map inside an item runs on that item's thread (no hand-off to a busy pool)
    barrier = threading.Barrier(2, timeout=10)

    def outer(_):
        barrier.wait()                                             # (the two items on two threads)
        return threading.current_thread().name, set(workers.map(lambda _: threading.current_thread().name,
                                                                range(3)))
    inner = workers.map(outer, range(2))
    assert all(names == {name} for name, names in inner) and len({name for name, _ in inner}) == 2


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_pool(threads):
    import os
    threads(2)
    workers.map(abs, range(4))                                 # the parent's pool made
    pid = os.fork()
    if pid == 0:                                               # the child: two threads again, not the parent's dead ones
        names = set()
        barrier = threading.Barrier(2, timeout=10)

        def item(_):
            barrier.wait()
            names.add(threading.current_thread().name)
        try:
            workers.map(item, range(2))
            os._exit(0 if len(names) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_blas_on_one_thread_while_the_workers_run(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(2)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        if not before or max(before) < 2:
            pytest.skip("BLAS cannot run two threads here")
        inside = workers.map(lambda _: [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                                        if lib["user_api"] == "blas"], range(2))
        assert inside == [[1] * len(before)] * 2
        assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"] == before


@pytest.mark.parametrize("shape", [(1, 4096, 4096), (2, 4096, 4096), (1, 1024, 9216), (64, 64, 64), (1, 301, 4096),
                                   (5, 999, 1024), (3, 5, 64), (1, 1, 100000), (7, 33, 2048)])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("chunk", [None, 2048])
def test_state_blocks_cover_every_row_once(threads, shape, n, chunk):
    threads(n)
    batch, lq, keys = shape
    blocks = intattn.state_blocks(batch, lq, keys, chunk)
    at_once = keys if chunk is None else min(keys, chunk)        # (keys a block takes at a time)
    seen = np.zeros((batch, lq), np.int64)
    for b, r in blocks:
        seen[b, r] += 1
        size = len(range(batch)[b]) * len(range(lq)[r]) * at_once
        assert size <= max(intattn.FAST_BLOCK, at_once)          # (one row of more keys is one block)
        if chunk and batch == 1 and r.start == 0:   # rows: about as many as fit a chunk (not 2^20 / keys)
            assert len(range(lq)[r]) >= min(lq, intattn.FAST_BLOCK // at_once) // (2 * n)
    assert (seen == 1).all()
    if n > 1 and batch * lq * keys >= intattn.PARALLEL_MIN and batch * lq >= n:
        assert len(blocks) >= n
        if len({b.start for b, _ in blocks}) == 1:                 # rows split: as many for every thread
            assert len(blocks) % n == 0 or len(blocks) == lq


def _late_max(rng, b, lq, lk, d):
    """q, k, v int8 whose scores grow along the keys for half the rows: running maxima grow in late tiles."""
    q = rng.integers(-128, 128, (b, lq, d), dtype=np.int8)
    k = rng.integers(-20, 21, (b, lk, d), dtype=np.int8)
    ramp = np.linspace(0, 1, lk)[:, None] ** 3
    k = np.clip(k + np.sign(q[:, :1]) * (100 * ramp), -128, 127).astype(np.int8)   # aligned with row 0's q
    q[:, 1::2] = np.abs(q[:, :1]) * np.sign(q[:, :1])                              # odd rows: like row 0
    v = rng.integers(-128, 128, (b, lk, d), dtype=np.int8)
    return q, k, v


@pytest.mark.parametrize("b,lq,lk,d,tile", [
    (1, 601, 530, 24, 16),        # one attention, rows split in two, odd sizes, a short last tile (> SUPER_TILE tiles)
    (5, 211, 251, 8, 64),         # several attentions a block, few tiles
    (2, 1200, 900, 16, 32),       # several row blocks an attention (FAST_BLOCK)
])
def test_attention_state_two_threads_equal_one(threads, b, lq, lk, d, tile):
    rng = np.random.default_rng(lq + lk)
    q, k, v = _late_max(rng, b, lq, lk, d)
    quant = intattn.AttentionQuant.from_scales(0.05, 0.05, 0.05, 0.05, d)
    threads(2)
    assert len(intattn.state_blocks(b, lq, -(-lk // tile) * tile)) >= 2
    two = intattn.attention_state(q, k, v, quant, tile)
    threads(1)
    one = intattn.attention_state(q, k, v, quant, tile)
    for x, y in zip(one, two):
        assert np.array_equal(x, y)
    late = (q.astype(np.int64) @ np.swapaxes(k, -1, -2).astype(np.int64)).argmax(-1)[:, 1::2]
    assert (late >= lk // 2).mean() > 0.9                      # (the odd rows' maxima come in the second half)
    if b * lq * lk <= 1 << 20:                                              # and the spec, where it is quick
        for x, y in zip(intattn.attention_state_reference(q, k, v, quant, tile), two):
            assert np.array_equal(x, y)


@pytest.mark.parametrize("m,k,n,a_rows,with_add", [
    (1037, 300, 230, False, True),    # 5 chunks, odd rows, the fused residual add
    (1300, 256, 208, True, False),    # token-row input
])
def test_fast_linear_two_threads_equal_one(threads, m, k, n, a_rows, with_add):
    cfg = preset("bench16")                                   # (the store's add, transposing loads)
    assert m * k * n >= fast.PARALLEL_MIN_MACS and m > fast.ROWS_PER_CHUNK
    rng = np.random.default_rng(m)
    a, b = (rng.integers(-128, 128, s, dtype=np.int8) for s in ((m, k), (k, n)))
    bias, mult, shift = rng.integers(-2 ** 16, 2 ** 16, n), rng.integers(1 << 20, 1 << 31, n), rng.integers(20, 40, n)
    extra = {}
    if with_add:
        extra = dict(residual=rng.integers(-128, 128, (m, n), dtype=np.int8), add=intvec.AddParams.make(0.1, 0.07, 0.12))
    prog = compile_linear(cfg, a, b, bias, mult, shift, a_rows=a_rows, base_addr=DDR_BASE, **extra)
    outs = []
    for count in (1, 2):
        threads(count)
        be = SimBackend(cfg, ddr_bytes=DDR_BASE + len(prog.image) + 4096)
        be.model.ddr[DDR_BASE:DDR_BASE + len(prog.image)] = prog.image
        be.expect(DDR_BASE, len(prog.descriptors), fast.job(cfg, prog))
        be.run(DDR_BASE, len(prog.descriptors))
        assert be.model.fast_runs == 1
        outs.append(be.model.ddr.copy())
    assert np.array_equal(outs[0], outs[1])
    want = intvec.linear_add(a, b, bias, mult, shift, extra["residual"], extra["add"]) if with_add else \
        gemm(a, b, bias, mult, shift)
    assert np.array_equal(prog.output(outs[1][DDR_BASE:DDR_BASE + len(prog.image)]), want)


@pytest.mark.parametrize("shape", [(4100, 257), (3, 700, 520), (2, 200, 80, 37)])
def test_layernorm_two_threads_equal_one(threads, shape):
    rng = np.random.default_rng(len(shape))
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    x[..., :3, :] = 5                                          # constant rows (var = 0) among the others
    d = shape[-1]
    ln = intvec.LayerNormParams.make(rng.normal(1, 0.3, d), rng.normal(0, 0.2, d), 0.05, 0.03, 1e-6)
    assert x.size >= intvec.PARALLEL_MIN
    threads(2)
    two = intvec.layernorm(x, ln)
    threads(1)
    one = intvec.layernorm(x, ln)
    assert two.shape == x.shape and np.array_equal(one, two)
