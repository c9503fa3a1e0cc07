import os


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
