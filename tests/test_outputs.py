"""sw/outputs.py: a file is replaced whole or not at all; destinations are checked before compute."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from sw import outputs
from tests.robust_helpers import read_only_dir


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    outputs.write_text(path, "old")
    outputs.write_text(path, "new contents")
    assert path.read_text() == "new contents"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "logits.npy"
    np.save(path, np.arange(10))
    with pytest.raises(type(error)):
        with outputs.atomic_file(path) as f:
            f.write(b"\x93NUMPY half a header")    # half written ...
            raise error                          # ... then the disk fills up / Ctrl-C
    assert np.array_equal(np.load(path), np.arange(10))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("save,value,load", [
    (outputs.save_npy, np.ones((4, 5), np.float32), np.load),
    (outputs.save_png, np.full((6, 7, 3), 200, np.uint8), lambda p: np.asarray(Image.open(p))),
    (outputs.write_text, "x" * 1000, lambda p: p.read_text()),
])
def test_every_writer_is_atomic_when_the_final_sync_fails(tmp_path, monkeypatch, save, value, load):
    """The failure comes after all bytes went to the temporary file (fsync: the disk is full)."""
    path = tmp_path / "out"
    save(path, value)
    before = load(path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    with pytest.raises(OSError):
        save(path, value[:1] if not isinstance(value, str) else "y")
    monkeypatch.undo()
    after = load(path)
    assert (after == before).all() if isinstance(before, np.ndarray) else after == before
    assert leftovers(tmp_path) == []


def test_safetensors_writer_is_atomic(tmp_path, monkeypatch):
    from golden_model.checkpoint import load_safetensors, save_safetensors
    path = tmp_path / "w.safetensors"
    save_safetensors(path, {"w": np.ones(3, np.float32)})
    monkeypatch.setattr(outputs.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_safetensors(path, {"w": np.zeros(1000, np.float32)})
    monkeypatch.undo()
    assert np.array_equal(load_safetensors(path)["w"], np.ones(3, np.float32))


def test_file_modes_follow_the_umask_or_the_replaced_file(tmp_path):
    new = outputs.write_text(tmp_path / "new.txt", "a")
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask
    old = tmp_path / "old.txt"
    old.write_text("a")
    old.chmod(0o640)
    outputs.write_text(old, "b")
    assert old.stat().st_mode & 0o777 == 0o640


def test_checks_before_compute(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(outputs.OutputPathError, match="is a directory"):
        outputs.check_output_file(tmp_path / "dir.png")
    with pytest.raises(outputs.OutputPathError, match="does not exist"):
        outputs.check_output_file(tmp_path / "missing" / "x.safetensors", create_parent=False)
    made = outputs.check_output_file(tmp_path / "new" / "deeper" / "x.png")
    assert made.parent.is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(outputs.OutputPathError, match="not a folder"):
        outputs.check_output_dir(tmp_path / "file")
    with read_only_dir(tmp_path / "ro") as ro:
        with pytest.raises(outputs.OutputPathError, match="cannot write in"):
            outputs.check_output_file(ro / "x.png")
        with pytest.raises(outputs.OutputPathError, match="cannot write in"):
            outputs.check_output_file(ro / "sub" / "x.png")
        with pytest.raises(outputs.OutputPathError, match="cannot write in"):
            outputs.check_output_dir(ro / "frames")
        with pytest.raises(OSError):
            outputs.write_text(ro / "x.txt", "a")
