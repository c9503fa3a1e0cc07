"""The host kernels' worker threads: the one place that says how many and owns the pool.

The integer kernels (intattn.attention_state, the sim backend's fast GEMMs, LayerNorm rows) work on
independent blocks (query rows, output rows) whose big NumPy operations release the GIL, so blocks run
side by side on threads of one process, each on one BLAS thread. Results do not depend on the count:
each block computes exactly what it computes serially, and every sum is an exact integer sum.

SAM2FPGA_THREADS sets the count (1: everything serial); the default is the cores this process may run on,
up to DEFAULT_CAP. A map runs on the caller and count() - 1 pool threads; the pool is created on first use,
one per process (per count), its threads living as long as the process.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

ENV = "SAM2FPGA_THREADS"
#: Default thread count's upper bound: the blocks are memory-heavy NumPy passes (measured on 2 cores only:
#: 1.5-1.7x on two, docs/overlay.md).
DEFAULT_CAP = 4


def count() -> int:
    """Worker threads to use: SAM2FPGA_THREADS, else min(cores, DEFAULT_CAP). (Read at each call: a test
    or a user may change it between runs.)"""
    value = os.environ.get(ENV, "").strip()
    if not value:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(cores, DEFAULT_CAP))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV}={value!r}: expected a positive whole number of threads")
    return n


_local = threading.local()          # .inside: this thread is running a map's items (nested maps run serially)
_lock = threading.Lock()


@functools.cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="sam2fpga-worker")


if hasattr(os, "register_at_fork"):       # a forked child has none of the pool's threads: it makes its own
    os.register_at_fork(after_in_child=_pool.cache_clear)


def parallel() -> int:
    """Threads a map started here would use: count(), or 1 inside a map's item (no nested hand-offs)."""
    return 1 if getattr(_local, "inside", False) else count()


def map(fn, items) -> list:
    """[fn(item) for item in items] on up to count() threads: the caller and count() - 1 pool threads take
    the next item until none is left (the first exception is raised after the others stop). Serial for one
    thread, one item, or inside an item. The caller works too, so a pool thread that a busy machine does
    not schedule costs at most the item it holds (a pool thread not yet started is cancelled), not its
    share. BLAS is held at one thread while the items run (its own threads on top of ours would only
    wait for cores)."""
    items = list(items)
    n = min(parallel(), len(items))
    if n <= 1:
        return [fn(item) for item in items]
    results: list = [None] * len(items)
    errors: list = []
    order = iter(range(len(items)))
    take = threading.Lock()

    def drain():
        _local.inside = True
        try:
            while not errors:
                with take:
                    i = next(order, None)
                if i is None:
                    return
                try:
                    results[i] = fn(items[i])
                except BaseException as e:       # (stops the others at their next item)
                    errors.append(e)
        finally:
            _local.inside = False
    with _lock:
        pool = _pool(count() - 1)
    with one_blas_thread():
        helpers = [pool.submit(drain) for _ in range(n - 1)]
        drain()
        for future in helpers:
            if not future.cancel():
                future.result()
    if errors:
        raise errors[0]
    return results


def split(n: int, parts: int) -> list[slice]:
    """range(n) in `parts` contiguous slices of sizes differing by at most one (fewer when n < parts)."""
    parts = max(1, min(parts, n))
    bounds = [i * n // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------- BLAS threads

@functools.cache
def _blas_libs() -> tuple:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:              # (a board image without it: BLAS keeps its own threads)
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


@contextlib.contextmanager
def one_blas_thread():
    """NumPy's BLAS on one thread inside (process-wide: the library's own setting, so it holds in the
    pool's threads too). The GEMMs here are exact integer sums (any thread count gives the same bits) in
    chunks small enough to stay in cache, where BLAS's second thread's hand-offs cost more than it adds,
    many times more on a machine whose cores are busy with other work; the cores go to our workers
    instead. (The libraries' own calls: threadpoolctl's limit() costs more than a small run.)"""
    changed = [(lib, n) for lib in _blas_libs() if (n := lib.get_num_threads()) not in (None, 1)]
    try:
        for lib, _ in changed:
            lib.set_num_threads(1)
        yield
    finally:
        for lib, n in changed:
            lib.set_num_threads(n)
