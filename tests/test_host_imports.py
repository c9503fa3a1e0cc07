"""Host code (sw/, golden_model/) runs on the board's ARM without Amaranth: importing it must not
import amaranth (the limits it shares with the hardware live in plain modules: hw/isa.py,
hw/config.py, hw/limits.py)."""
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def host_modules() -> list[str]:
    names = []
    for package in ("sw", "golden_model"):
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")]
    return names


def test_host_modules_do_not_import_amaranth():
    modules = host_modules()
    assert "sw.backends.sim_model" in modules and "sw.compile.conv" in modules and "golden_model.intattn" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    bad = sorted(m for m in sys.modules if m == 'amaranth' or m.startswith('amaranth.'))\n"
            "    if bad:\n"
            "        sys.exit(f'importing {name} imported {bad[0]}')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr or res.stdout


def test_the_check_sees_amaranth():
    """The check above can fail: a hardware module does import amaranth."""
    code = "import sys, hw.conv.im2col; sys.exit(0 if 'amaranth' in sys.modules else 1)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
