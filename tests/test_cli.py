"""The command line: help lists subcommands, bad input is a usage error (exit 2)."""
import subprocess
import sys

import pytest

from sw.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("argv", [["no-such-command"], [], ["demo", "--no-such-flag"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "sw.cli", "toolchain"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "VERILATOR_ROOT" in out.stdout


def test_missing_cxx_compiler_is_a_clear_error(monkeypatch, capsys):
    import shutil
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "C++ compiler" in err and "g++" in err


@pytest.mark.rtl
def test_demo_runs(capsys, tmp_path):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "demo: OK" in out and "bit-exact" in out
    assert "logits bit-exact against the host int8 reference" in out          # SAM 2 on the overlay
    assert (tmp_path / "segment_chelsea_overlay.png").stat().st_size > 0


def test_demo_photo_step_without_scikit_image_names_what_to_install(monkeypatch):
    import argparse
    import sys

    from sw.commands import demo
    from sw.errors import CommandError
    monkeypatch.setitem(sys.modules, "skimage", None)      # `from skimage import data` raises ImportError
    with pytest.raises(CommandError, match="scikit-image"):
        demo._segment_photo(argparse.Namespace())
