import os

import pytest


def _threads_per_worker() -> int | None:
    """BLAS / OpenMP threads, and the kernels' worker threads (golden_model.workers, SAM2FPGA_THREADS), for
    one pytest-xdist worker: the cores shared out (`make test`: 2 workers on 2 cores, one each; tests of
    the threads set their own count). Left alone outside xdist. With their defaults (a thread per core in
    OpenBLAS and in torch) two workers ran four threads on two cores, idle pool threads waiting busy: one thread costs
    test_video's official run 29 % less CPU, test_full_size_tiny_accuracy 14 % (OpenBLAS's system time
    68 s against 116). Results do not change: integer paths are exact, float ones within their tolerances."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None
    return max(1, (os.cpu_count() or 1) // int(workers))


if (_THREADS := _threads_per_worker()) is not None:
    # Before numpy or torch load (each reads these once); an explicit setting of the user's wins.
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "SAM2FPGA_THREADS"):
        os.environ.setdefault(_var, str(_THREADS))


# The CLI's program store (sw/runtime/program_store.py) off: no test writes into the user's cache directory
# (tests/test_program_store.py gives its own a temporary one).
os.environ["SAM2FPGA_PROGRAM_STORE"] = "off"


def pytest_addoption(parser):
    parser.addoption("--waves", action="store_true",
                     help="dump waveforms from RTL benches into build/sim/ (same as SAM2FPGA_WAVES=1)")


def pytest_configure(config):
    if config.getoption("--waves"):
        os.environ["SAM2FPGA_WAVES"] = "1"


#: A test's rough cost, for ordering only: `@pytest.mark.slow(seconds=N)` when the test says (the longest
#: do), else by its markers: slow tests take 30-300 s, rtl ones build or reuse a Verilator model
#: (10-80 s), oracle ones run the official torch model (seconds), the rest well under a second.
def _rough_seconds(item) -> float:
    slow = item.get_closest_marker("slow")
    if slow is not None:
        return slow.kwargs.get("seconds", 60)
    return 30 if item.get_closest_marker("rtl") else 3 if item.get_closest_marker("oracle") else 1


def pytest_collection_modifyitems(session, config, items):
    """Costliest modules first, each module's slow tests first. `make test` hands whole modules to the
    workers as they free up (`--dist loadfile`, in this order), so the longest work starts first and
    both workers finish on short modules; a module's fixtures are set up once. (The default `--dist
    load` gave the first worker the first eighth of the items, every slow module, in one batch: it ran
    ~8 minutes after the other had finished.)"""
    modules: dict = {}
    for item in items:
        modules.setdefault(item.module.__name__ if item.module else "", []).append(item)
    ordered = sorted(modules.values(), key=lambda group: -sum(map(_rough_seconds, group)))
    items[:] = [i for group in ordered for i in sorted(group, key=lambda i: -_rough_seconds(i))]


# ---------------------------------------------------------------- a scaled-down int8 SAM 2, shared
#: The scaled-down tiny SAM 2 of the overlay tests (test_graph_exec, test_segment_overlay): 128 px input,
#: seeded random weights, calibrated on one random image with one click.
SCALED_SIZE = 128
SCALED_CLICK = (60.0, 70.0)


@pytest.fixture(scope="session")
def scaled():
    """(float graph, calibration statistics, the uint8 image)."""
    import numpy as np

    from golden_model.quant.builder import build_graph, random_model
    from golden_model.quant.quantize import calibrate
    graph = build_graph(random_model("tiny", SCALED_SIZE, seed=0))
    image = np.random.default_rng(0).integers(0, 256, (SCALED_SIZE, SCALED_SIZE, 3), dtype=np.uint8)
    return graph, calibrate(graph, [image], prompts_per_image=1), image


def scaled_quantised(scaled, cfg):
    """The scaled model quantised for preset `cfg` (its attention key tile)."""
    from golden_model.quant.quantize import quantize
    graph, stats, _ = scaled
    return quantize(graph, stats, key_tile=cfg.cols, preset=cfg.name)


# ---------------------------------------------------------------- one larger overlay build, shared
def mid_overlay():
    """An 8 x 16 overlay, 64-bit AXI, with the engines the chain runs (the vector engine and the store
    LUT have their own rtl benches): the smallest array the chain runs on (an A entry of 8 rows is a
    whole beat). One Verilator build for test_runtime's chain and test_overlay's larger-array layer
    (sim/runner.py shares builds of the same Verilog)."""
    from hw.config import preset
    return preset("sim").replace(name="mid8x16", rows=8, cols=16, engines=("gemm", "attention", "conv", "depthwise",
                                                                                  "load_t"))


@pytest.fixture(params=["numba", "numpy"])
def jit_mode(request, monkeypatch):
    """The integer kernels' element-wise passes compiled (golden_model.jit: Numba, a dependency, so it must be
    there) or in NumPy (SAM2FPGA_JIT=0, as where Numba is missing): tests taking it run on both."""
    from golden_model import jit
    monkeypatch.setenv(jit.ENV, "1" if request.param == "numba" else "0")
    assert jit.available() == (request.param == "numba"), "numba is in pyproject's dependencies"
    return request.param
