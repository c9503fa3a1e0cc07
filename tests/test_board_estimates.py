"""The yosys estimates of whole overlays (minutes each): a module of their own, so `make test`'s workers (whole
modules each, costliest first) run them beside the ECP5 place-and-route of tests/test_board_flows.py."""
import pytest

from hw.boards import BOARDS
from hw.config import preset
from hw.overlay import Overlay
from hw.verilog import write_verilog
from sw.commands.build import TOP


@pytest.mark.slow(seconds=160)
def test_yosys_estimate_of_small_overlay(tmp_path):
    from hw.flows.estimate import estimate, fits
    # Without the vector engine (its own estimates: docs/vector.md): yosys takes about two minutes more with it.
    cfg = preset("sim").replace(engines=("gemm", "attention", "conv", "depthwise"))
    # abc9=False: the classic LUT mapper (152 s here against 218 s with abc9); the DSP count and the fit it checks hold
    res = estimate(write_verilog(Overlay(cfg), TOP, tmp_path / "verilog"), TOP, "xc7", tmp_path, abc9=False)
    assert res.dsps >= cfg.rows * cfg.cols // 2       # the MACs map to DSPs
    # All four engines: the depthwise lanes' 2 x 49 multipliers take it past PYNQ-Z2's 220 DSPs (265 used).
    assert fits(res, BOARDS["kv260"]) == []


@pytest.mark.slow(seconds=80)
def test_yosys_ecp5_estimate_of_the_full_preset_fits(tmp_path):
    """The ulx3s geometry with every array engine synthesises for the 85F and fits it (multipliers
    included); it does not route there (bitstreams/README.md), hence the two presets."""
    from hw.flows.ecp5 import estimate_ecp5
    from hw.flows.estimate import fits
    res = estimate_ecp5(Overlay(preset("ulx3s").replace(engines=("gemm", "attention", "conv"))), tmp_path)
    assert fits(res, BOARDS["ulx3s-85f"]) == []
    assert res.dsps <= 0.8 * BOARDS["ulx3s-85f"].dsps       # room for the placer
