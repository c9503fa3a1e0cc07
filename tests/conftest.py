import os


def pytest_addoption(parser):
    parser.addoption("--waves", action="store_true",
                     help="dump waveforms from RTL benches into build/sim/ (same as SAM2FPGA_WAVES=1)")


def pytest_configure(config):
    if config.getoption("--waves"):
        os.environ["SAM2FPGA_WAVES"] = "1"
