"""The free-tool flows on a small core: Verilator lint, yosys estimates, ECP5 place-and-route."""
import os
import time
import sys

import pytest

from hw.boards import BOARDS, board
from hw.flows.ecp5 import Ecp5FlowError, RoutingFailed, build_ecp5, pll_parameters, run_flow_script
from hw.flows.estimate import Resources, estimate, fits
from hw.flows.lint import LintError, lint
from hw.flows.nextpnr_progress import RouterProgress
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


@pytest.mark.slow(seconds=6)
def test_xcup_estimate_puts_the_pv_arrays_partial_sum_adders_in_the_dsps(tmp_path):
    """Vivado maps each P V PE's `P = C + A*B` (and its P register, the PCIN cascade) to one DSP48E2;
    yosys's xcup packing does not, so the estimate maps such multiply-adds as for xc7 (DSP48E1,
    hw.flows.estimate.xcup_map_dsp): no adder of the array is left in the fabric (no CARRY8), only the
    p bank multiplexer's LUTs."""
    from hw.attention.pv_array import PVArray
    from hw.flows.estimate import run_yosys
    rows, cols = 2, 4
    stat = run_yosys(write_verilog(PVArray(rows, cols, 6), "pv", tmp_path), "pv", "xcup", tmp_path, abc9=False)
    cells = stat["design"]["num_cells_by_type"]
    assert cells.get("DSP48E1") == rows * cols and "DSP48E2" not in cells
    assert not any(c.startswith("CARRY") for c in cells), cells


@pytest.mark.slow(seconds=4)
def test_xcup_estimate_keeps_multipliers_a_dsp48e1_does_not_hold_on_dsp48e2s(tmp_path):
    """The DSP48E1 mapping is for multipliers one DSP48E1 holds whole (25 x 18 signed, 24 x 17 unsigned);
    one bit wider, they keep the xcup mapping (one DSP48E2 each, not split over two DSP48E1s)."""
    from hw.flows.estimate import count_cells, run_yosys
    v = tmp_path / "muls.v"
    v.write_text("""module muls(input clk, input signed [47:0] c, input signed [17:0] b, input [16:0] ub,
  input signed [24:0] a25, input signed [25:0] a26, input [23:0] u24, input [24:0] u25,
  output reg signed [47:0] p25, output reg signed [47:0] p26, output reg [47:0] q24, output reg [47:0] q25);
  always @(posedge clk) begin
    p25 <= c + a25 * b; p26 <= c + a26 * b; q24 <= c + u24 * ub; q25 <= c + u25 * ub;
  end
endmodule
""")
    stat = run_yosys(v, "muls", "xcup", tmp_path, abc9=False)
    cells = stat["design"]["num_cells_by_type"]
    assert (cells.get("DSP48E1"), cells.get("DSP48E2")) == (2, 2), cells
    assert count_cells(stat, "muls").dsps == 4


@pytest.mark.slow
def test_estimates_run_the_native_yosys_and_say_its_errors(tmp_path):
    """pyosys (the fpga extra) is preferred to YoWASP (whose 4 GiB the board presets exceed); a yosys
    error is an EstimateError with yosys's message, and the log is where -l says."""
    import hw.flows.estimate as est
    assert est.yosys_command() == [sys.executable, str(est.PYOSYS_YOSYS)]
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output b);\n  assign b = a +;\nendmodule\n")
    with pytest.raises(est.EstimateError, match="(?s)yosys failed.*syntax error"):
        estimate(bad, "bad", "xcup", tmp_path)
    assert "read_verilog bad.v" in (tmp_path / "bad.xcup.yosys.log").read_text()


def test_hierarchical_estimate_is_split_by_engine():
    """Each module's own cells go to the engine whose Core submodule it is under (instances of submodules
    are not counted twice); the command processor, DMA and glue are "control"."""
    from hw.flows.estimate import resources_by_engine
    stat = {"modules": {
        "\\top": {"num_cells_by_type": {"LUT6": 1, "FDRE": 2, "\\top.core": 1}},
        "\\top.core": {"num_cells_by_type": {"LUT3": 10, "\\top.core.engine": 1, "\\top.core.im2col": 1}},
        "\\top.core.descs": {"num_cells_by_type": {"RAMB18E2": 1}},
        "\\top.core.engine": {"num_cells_by_type": {"LUT6": 100, "\\top.core.engine.array": 1}},
        "\\top.core.engine.array": {"num_cells_by_type": {"DSP48E2": 8, "FDRE": 50, "CARRY8": 4}},
        "\\top.core.im2col": {"num_cells_by_type": {"LUT2": 7, "RAM64M": 2}},
    }}
    parts = resources_by_engine(stat, "top")
    assert parts == {"control": Resources(luts=11, ffs=2, bram36=0.5), "gemm": Resources(luts=100, ffs=50, dsps=8),
                     "conv": Resources(luts=7, lutram=8)}


def test_lut_memories_and_carries_are_counted_in_lut_positions():
    """A RAM32M16 is one SLICEM's 8 LUTs and an SRL one LUT (Xilinx); ECP5's CCU2C carry is two LUT4s and a
    DPR16X4 six (four RAM, two write-port): the fit check sees what the part's LUTs must hold. A memory
    primitive of unknown size is an error, not a guess."""
    from hw.flows.estimate import EstimateError, cell_resources
    r = cell_resources({"LUT6": 10, "RAM32M16": 3, "RAM64M": 2, "RAM64X1D": 1, "SRLC32E": 5, "CARRY8": 4})
    assert (r.luts, r.lutram) == (10, 3 * 8 + 2 * 4 + 2 + 5)
    ecp5 = cell_resources({"LUT4": 10, "CCU2C": 3, "TRELLIS_DPR16X4": 2, "TRELLIS_FF": 7})
    assert (ecp5.luts, ecp5.lutram, ecp5.ffs) == (16, 12, 7)
    with pytest.raises(EstimateError, match="RAM1024X1Q"):
        cell_resources({"RAM1024X1Q": 1})


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


def _router_log(overused):
    return "".join(f"Info:     iter={i} wires=5000 overused={n} overuse={n} archfail=NA\n"
                   for i, n in enumerate(overused, 1))


def test_router_progress_tells_a_converging_router_from_a_stalled_one():
    head = "Info: Packing IOs..\nInfo: Running Static placer...\nInfo: Running router2...\n"
    converging = RouterProgress(stall_iterations=5)
    # Slow stretches (no new minimum for 4 iterations) but always a new one within 5: not stalled.
    text = head + _router_log([900, 500, 510, 505, 502, 501, 300, 320, 310, 1, 1, 1, 1, 0])
    for i in range(0, len(text), 7):          # the log arrives in pieces, lines cut anywhere
        converging.feed(text[i:i + 7])
        assert not converging.stalled
    converging.feed("Info: Program finished normally.\n")
    assert converging.phase == "done" and converging.best == 0
    stalled = RouterProgress(stall_iterations=5)
    phases = stalled.feed(head + _router_log([900, 400, 200, 250, 300, 260, 240, 210]))
    assert phases == ["packing", "placing (static)", "routing (router2)"]
    assert stalled.stalled and stalled.best == 200 and stalled.best_iteration == 3
    assert "iteration 8, 210 overused wires (fewest 200 at iteration 3)" in stalled.status()


def _flow_script(tmp_path, body):
    (tmp_path / "build_x.sh").write_text("echo $$ > pid\n" + body)
    return tmp_path


def test_flow_script_with_a_stalled_router_is_stopped(tmp_path):
    lines = _router_log([50, 20] + [30] * 10).replace("\n", "\\n")
    _flow_script(tmp_path, f"printf 'Info: Running router2...\\n{lines}' > x.tim\nsleep 60\n")
    said, t0 = [], time.monotonic()
    with pytest.raises(RoutingFailed, match="fewest 20 at iteration 2.*another seed"):
        run_flow_script(tmp_path, "x", "test", said.append, stall_iterations=5)
    assert time.monotonic() - t0 < 30
    assert said == ["routing (router2)"]
    with pytest.raises(ProcessLookupError):       # nextpnr (here: the script) was stopped
        os.kill(int((tmp_path / "pid").read_text()), 0)


def test_flow_script_failure_gives_the_tools_output(tmp_path):
    _flow_script(tmp_path, "echo 'ERROR: Unable to place cell' ; exit 3\n")
    with pytest.raises(Ecp5FlowError, match="(?s)exit 3.*Unable to place cell") as e:
        run_flow_script(tmp_path, "x", "test")
    assert not isinstance(e.value, RoutingFailed)


def test_an_arc_router2_cannot_route_is_a_routing_failure(tmp_path):
    """router2 giving up on one arc (seen: the core reset's net to its DCCA, `ulx3s-gemm` at seed 2) is a
    placement that does not route, as a stalled router is: `sam2fpga build` goes on to the next seed."""
    _flow_script(tmp_path, "echo \"ERROR: Failed to route arc 0.0 of net 'core.core_reset'\" ; exit 1\n")
    with pytest.raises(RoutingFailed, match="does not route.*arc 0.0 of net 'core.core_reset'.*another seed") as e:
        run_flow_script(tmp_path, "x", "test")
    assert e.value.status == "Failed to route arc 0.0 of net 'core.core_reset'"


def test_estimate_reports_progress_while_yosys_runs(tmp_path, monkeypatch, requant_verilog):
    import hw.flows.estimate as est
    stat = '{"design": {"num_cells_by_type": {"LUT6": 5, "DSP48E2": 1}}}'
    # A stand-in yosys: slow, then the stat file the real one writes.
    monkeypatch.setattr(est, "yosys_command",
                        lambda: ["sh", "-c", f"sleep 1.5; echo '{stat}' > requant.xcup.stat.json", "yosys"])
    said = []
    res = est.estimate(requant_verilog, "requant", "xcup", tmp_path, progress=said.append, every_s=0.4)
    assert res.luts == 5 and res.dsps == 1
    assert len(said) >= 2 and all(line.startswith("yosys still synthesising (") for line in said)


def test_estimate_says_when_yosys_runs_out_of_webassembly_memory(requant_verilog, tmp_path, monkeypatch):
    """YoWASP's yosys stops with a WebAssembly trap past 4 GiB (the 16 x 32 presets with every engine):
    the error says so, without yosys's Python trace."""
    import hw.flows.estimate as est
    monkeypatch.setattr(est, "yosys_command", lambda: [sys.executable, "-c",
                                                       "import sys; sys.stderr.write('Caused by:\\n    thrown Wasm exception\\n'); sys.exit(1)"])
    with pytest.raises(est.EstimateError, match="4 GiB of memory at most"):
        est.estimate(requant_verilog, "requant", "xcup", tmp_path)


def test_estimate_says_when_yosys_is_killed(requant_verilog, tmp_path, monkeypatch):
    """The kernel's OOM killer ends yosys with SIGKILL and no message (a 33-read-port ROM took the kv260
    estimate past 14 GB): the error names the signal and the log."""
    import hw.flows.estimate as est
    monkeypatch.setattr(est, "yosys_command", lambda: [sys.executable, "-c",
                                                       "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    with pytest.raises(est.EstimateError, match=r"killed \(signal 9: out of memory\?\).*requant.xcup.yosys.log"):
        est.estimate(requant_verilog, "requant", "xcup", tmp_path)
