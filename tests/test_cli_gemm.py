"""`sam2fpga generate` and `sam2fpga sim gemm`."""
import json

import pytest

from hw.overlay import VERILOG_NAME
from sw.cli import main


def test_generate_writes_verilog_and_summary(tmp_path, capsys):
    assert main(["generate", "--preset", "sim", "-o", str(tmp_path)]) == 0
    v = (tmp_path / f"{VERILOG_NAME}.v").read_text()
    assert f"module {VERILOG_NAME}(" in v and "m_axi__awaddr" in v and "s_axil__araddr" in v
    summary = json.loads((tmp_path / "overlay.json").read_text())
    assert summary["config"]["rows"] == 4 and summary["registers"]["CONTROL"] == "0x0"


def test_sim_gemm_on_sim(capsys):
    assert main(["sim", "gemm", "--m", "19", "--k", "33", "--n", "21", "--relu"]) == 0
    out = capsys.readouterr().out
    assert "bit-exact against golden" in out and "MAC utilisation" in out and "cycles/s" in out


def test_sim_gemm_fused_table(capsys):
    assert main(["sim", "gemm", "--m", "9", "--k", "20", "--n", "11", "--lut", "gelu"]) == 0
    assert "+ gelu (fused in the store)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["sim", "gemm", "--m", "0", "--k", "1", "--n", "1"],
                                  ["sim", "gemm", "--m", "1", "--k", "1", "--n", "1", "--lut", "gelu", "--preset",
                                   "kv260"],
                                  ["sim", "gemm", "--m", "1", "--k", "1", "--n", "1", "--lut", "gelu", "--int32"],
                                  ["sim", "gemm", "--m", "1", "--k", "1"],
                                  ["sim", "gemm", "--m", "1", "--k", "1", "--n", "1", "--preset", "nope"],
                                  ["generate", "--preset", "kv260"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_layer_that_does_not_fit_is_a_clear_error(capsys):
    assert main(["sim", "gemm", "--m", "1", "--k", "200000", "--n", "8"]) == 1
    assert "exceeds" in capsys.readouterr().err


@pytest.mark.rtl
def test_sim_gemm_rtl_backend(capsys):
    assert main(["sim", "gemm", "--m", "9", "--k", "20", "--n", "9", "--backend", "rtl", "--stall", "0.2"]) == 0
    assert "backend rtl: bit-exact against golden" in capsys.readouterr().out
