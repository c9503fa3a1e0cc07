"""The free-tool flows on a small core: Verilator lint, yosys estimates, ECP5 place-and-route."""
import pytest

from hw.boards import BOARDS, board
from hw.flows.ecp5 import build_ecp5, pll_parameters
from hw.flows.estimate import Resources, estimate, fits
from hw.flows.lint import LintError, lint
from hw.requant import Requantizer
from hw.verilog import write_verilog
from sim.runner import BUILD


@pytest.fixture(scope="module")
def requant_verilog():
    return write_verilog(Requantizer(), "requant", BUILD / "verilog" / "flows-requant")


def test_lint_passes_with_reasoned_waivers_only(requant_verilog):
    lint(requant_verilog, "requant")


def test_lint_reports_real_problems(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input clk, output reg [3:0] q);\n"
                   "  always @(posedge clk) q <= undeclared_signal;\nendmodule\n")
    with pytest.raises(LintError, match="undeclared_signal"):
        lint(bad, "bad")


def test_yosys_ecp5_estimate(requant_verilog, tmp_path):
    res = estimate(requant_verilog, "requant", "ecp5", tmp_path)
    # 32x31 multiplier as four 16x16 partial products: one MULT18X18D each.
    assert res.dsps == 4
    assert 100 < res.luts < 5000 and res.ffs > 100
    assert fits(res, board("ulx3s-85f")) == []


def test_fits_names_what_overflows():
    over = fits(Resources(luts=10, dsps=500), board("pynq-z2"))
    assert over == ["DSP: 500 used > 220 on xc7z020clg400-1"]


def test_unknown_board_is_a_clear_error():
    with pytest.raises(ValueError, match="known boards: kv260"):
        board("zedboard")


@pytest.mark.parametrize("f_out", [50, 100, 125, 150])
def test_pll_parameters_hit_target(f_out):
    p = pll_parameters(25.0, f_out)
    assert abs(p["actual_mhz"] - f_out) < 0.5
    assert 400 <= p["actual_mhz"] * p["CLKOP_DIV"] <= 800


@pytest.mark.slow
def test_yosys_xilinx_estimate(requant_verilog, tmp_path):
    res = estimate(requant_verilog, "requant", "xcup", tmp_path)
    assert res.dsps >= 1 and res.luts > 50
    assert fits(res, BOARDS["kv260"]) == []


def test_yosys_xilinx_estimate_with_classic_abc(requant_verilog, tmp_path):
    """The abc (not abc9) LUT mapping the attention benchmark uses gives the same kind of netlist."""
    res = estimate(requant_verilog, "requant", "xcup", tmp_path, abc9=False)
    assert res.dsps >= 1 and res.luts > 50 and res.ffs > 50


@pytest.mark.slow
def test_ecp5_place_and_route_meets_100mhz(tmp_path):
    report = build_ecp5(Requantizer(), "requant", tmp_path, target_mhz=100)
    assert report.bitstream.stat().st_size > 100_000
    assert report.utilisation["MULT18X18D"][0] == 4
    assert report.critical_path.startswith("Critical path report")
    assert report.meets_timing, f"Fmax {report.fmax_mhz} MHz < 100 MHz:\n{report.critical_path}"
