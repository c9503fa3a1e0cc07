"""`sam2fpga sim conv`: one random convolution against golden, on the sim model and on Verilator."""
import pytest

from sw.cli import main


@pytest.mark.parametrize("argv,route", [
    (["--in", "3x19x21", "--out", "10", "--k", "7", "--stride", "4"], "conv"),
    (["--in", "5x9x11", "--out", "5", "--k", "7", "--depthwise", "--relu"], "depthwise"),
    (["--in", "5x9x11", "--out", "5", "--k", "7", "--depthwise", "--stride", "2"], "conv"),
    (["--in", "4x16x16", "--out", "9", "--k", "3", "--stride", "2", "--int32"], "conv"),
    (["--in", "6x5x7", "--out", "3", "--k", "2", "--stride", "2", "--transposed"], "gemm"),
    (["--in", "6x5x7", "--out", "11", "--k", "1"], "gemm"),
    (["--in", "2x9x9", "--out", "3", "--k", "3", "--stride", "3"], "gemm-im2col"),
])
def test_sim_conv_on_sim(argv, route, capsys):
    assert main(["sim", "conv", *argv]) == 0
    out = capsys.readouterr().out
    assert "bit-exact against golden" in out and "MAC utilisation" in out
    assert f"route: {route} (" in out


@pytest.mark.parametrize("argv,match", [
    (["--in", "3x8", "--out", "4", "--k", "3"], "CxHxW"),
    (["--in", "3xaxb", "--out", "4", "--k", "3"], "CxHxW"),
    (["--in", "0x8x8", "--out", "4", "--k", "3"], "positive"),
    (["--in", "3x8x8", "--k", "3"], "required: --out"),
    (["--in", "3x8x8", "--out", "4", "--k", "0"], "positive"),
    (["--in", "3x8x8", "--out", "4", "--k", "3", "--padding", "-1"], "padding"),
    (["--in", "3x8x8", "--out", "4", "--k", "3", "--depthwise"], "must equal"),
    (["--in", "3x8x8", "--out", "4", "--k", "3", "--stride", "2", "--transposed"], "kernel == stride"),
    (["--in", "3x4x4", "--out", "4", "--k", "7", "--padding", "0"], "does not fit"),
    (["--in", "3x8x8", "--out", "4", "--k", "3", "--m", "2"], "unrecognized arguments: --m"),
    (["--in", "3x8x8", "--out", "4", "--k", "3", "--depthwise", "--transposed"], "not allowed"),
])
def test_sim_conv_bad_arguments_are_usage_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sim", "conv", *argv])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_sim_conv_too_big_is_a_clear_error(capsys):
    # 64 MiB of DDR on the sim backend: a 16 x 4100 x 4100 output map does not fit.
    assert main(["sim", "conv", "--in", "1x4100x4100", "--out", "16", "--k", "3"]) == 1
    assert "DDR" in capsys.readouterr().err


@pytest.mark.rtl
def test_sim_conv_rtl_backend(capsys):
    assert main(["sim", "conv", "--in", "3x13x11", "--out", "5", "--k", "7", "--stride", "4",
                 "--backend", "rtl", "--stall", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "backend rtl: bit-exact against golden" in out and "route: conv" in out
