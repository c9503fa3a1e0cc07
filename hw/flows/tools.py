"""Where the open FPGA tools (YoWASP wheels from PyPI) are.

pip puts their launchers in the virtualenv's scripts folder, which is on PATH
only when the venv is activated; `make test` runs `.venv/bin/python` without
activating it, so look next to the running interpreter too.
"""
from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path


class ToolMissing(RuntimeError):
    """An open FPGA tool is not installed; the message says how to get it."""


def find_tool(name: str) -> str:
    """Absolute path of the launcher `name`, on PATH or in this interpreter's scripts folder."""
    if found := shutil.which(name):
        return found
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        if found := shutil.which(name, path=folder):
            return found
    raise ToolMissing(f"{name} is missing: install the fpga extra (`make install`)")
