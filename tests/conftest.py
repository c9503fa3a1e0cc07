import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--waves", action="store_true",
                     help="dump waveforms from RTL benches into build/sim/ (same as SAM2FPGA_WAVES=1)")


def pytest_configure(config):
    if config.getoption("--waves"):
        os.environ["SAM2FPGA_WAVES"] = "1"


def pytest_collection_modifyitems(session, config, items):
    """Slow tests first (pytest-xdist hands items out in order): two workers then start on the longest
    cases and finish on short ones, instead of one worker starting a five-minute case at the end.
    Modules stay contiguous (their module-scoped fixtures are set up once)."""
    def slow(item):
        return item.get_closest_marker("slow") is not None

    modules: dict = {}
    for item in items:
        modules.setdefault(item.module.__name__ if item.module else "", []).append(item)
    ordered = sorted(modules.values(), key=lambda group: not any(slow(i) for i in group))
    items[:] = [i for group in ordered for i in sorted(group, key=lambda i: not slow(i))]


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
