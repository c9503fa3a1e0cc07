"""Helpers of the robustness tests: a folder nobody can write in, a small fast SAM 2."""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def read_only_dir(path: Path):
    """`path` made a folder that refuses new files, for this user too: mode 0555, and for root (whom
    permissions do not stop) the immutable attribute. Undone on exit so pytest can clean up."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    immutable = False
    if _writable(path) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if _writable(path):
        path.chmod(0o755)
        raise RuntimeError(f"cannot make {path} read-only here (root without chattr +i)")
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        os.chmod(path, 0o755)


def small_model(image_size: int = 64, seed: int = 0, name: str = "tiny"):
    """SAM 2.1 `name` on seeded random weights at a reduced input size (64: 4x4 memory features,
    ~0.06 s a tracked frame on one core; every block of the 1024 model runs, only smaller)."""
    from dataclasses import replace
    from types import MappingProxyType

    from golden_model.config import load_config
    from golden_model.model import SAM2Model
    cfg = load_config(name)
    cfg = replace(cfg, options=MappingProxyType({**cfg.options, "image_size": image_size}))
    return SAM2Model(name, seed=seed, config=cfg)
