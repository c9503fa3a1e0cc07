"""`sam2fpga sim attention`: one attention on random int8 data, checked against golden."""
import re

import numpy as np
import pytest

from golden_model import intattn
from hw.config import preset
from sw.cli import main
from sw.commands.sim import attention_error, random_attention
from sw.compile.attention import compile_attention


def figures(out):
    return {"cycles": int(re.search(r"cycles (\d+)", out).group(1)),
            "util": float(re.search(r"MAC utilisation ([\d.]+)%", out).group(1)),
            "ddr": int(re.search(r"DDR bytes moved ([\d,]+)", out).group(1).replace(",", "")),
            "err": float(re.search(r"float attention on the same int8 inputs: ([\d.]+)%", out).group(1))}


def test_sim_attention_on_sim(capsys):
    assert main(["sim", "attention", "--q", "9", "--kv", "37", "--d", "24", "--heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "bit-exact against golden" in out
    f = figures(out)
    # The printed figures are the program's and the run's, not constants.
    rng = np.random.default_rng(0)
    q, k, v, quant, scales = random_attention(rng, 2, 9, 37, 24)
    prog = compile_attention(preset("sim"), q, k, v, quant)
    assert f["ddr"] == prog.ddr_bytes and f["cycles"] > 0 and 0 < f["util"] <= 100
    want = np.stack([intattn.attention(q[h], k[h], v[h], quant, 8) for h in range(2)])
    assert f["err"] == pytest.approx(100 * attention_error(want, q, k, v, scales)[0], abs=6e-4)
    assert f["err"] < 1.5


def test_error_figure_is_against_float_attention():
    """attention_error measures against float attention: a wrong output gives a large error."""
    rng = np.random.default_rng(1)
    q, k, v, quant, scales = random_attention(rng, 1, 8, 50, 16)
    good = intattn.attention(q[0], k[0], v[0], quant, 8)[None]
    err, floor = attention_error(good, q, k, v, scales)
    assert floor <= err < 0.015
    assert attention_error(-good, q, k, v, scales)[0] > 1.5


@pytest.mark.parametrize("argv", [
    ["sim", "attention", "--q", "0", "--kv", "8", "--d", "8"],
    ["sim", "attention", "--q", "4", "--kv", "8", "--d", "257"],
    ["sim", "attention", "--q", "4", "--kv", "0", "--d", "8"],
    ["sim", "attention", "--q", "4", "--kv", str(intattn.MAX_KEYS + 1), "--d", "8"],
    ["sim", "attention", "--q", "4", "--kv", "8", "--d", "8", "--heads", "0"],
    ["sim", "attention", "--q", "4", "--kv", "8", "--d", "8", "--preset", "ulx3s-gemm"],   # no attention engine
    ["sim", "attention", "--q", "4", "--kv", "8"],
    ["sim", "attention", "--q", "x", "--kv", "8", "--d", "8"],
    ["sim", "attention", "--q", "4", "--kv", "8", "--d", "8", "--stall", "1.5"],
    ["sim", "attention", "--q", "4", "--kv", "8", "--d", "8", "--backend", "fpga"],
    ["sim", "softmax"],
])
def test_bad_attention_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.rtl
def test_sim_attention_rtl_backend(capsys):
    """One Verilator run (AXI stalls are covered by tests/test_attention_overlay.py): bit-exact,
    and the same figures as the sim backend but for the cycles (within 5 %)."""
    argv = ["sim", "attention", "--q", "6", "--kv", "19", "--d", "16", "--heads", "2"]
    assert main(argv + ["--backend", "rtl"]) == 0
    out = capsys.readouterr().out
    assert "backend rtl: bit-exact against golden" in out
    rtl = figures(out)
    assert main(argv) == 0
    sim = figures(capsys.readouterr().out)
    assert abs(sim["cycles"] / rtl["cycles"] - 1) < 0.05 and sim["ddr"] == rtl["ddr"] and sim["err"] == rtl["err"]
