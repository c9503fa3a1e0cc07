"""Every file the project writes goes through here: all or nothing, never half-written.

    with atomic_file(path) as f:        # a temporary file beside `path`
        f.write(...)                    # on success: flushed, fsynced, renamed over `path`
    write_text(path, text); write_bytes(path, data); save_npy(path, array); save_png(path, image)

The temporary file lives in the destination's folder (a rename is atomic only within one
file system) and is removed if the body raises, including KeyboardInterrupt: an existing
`path` keeps its old contents until the new ones are complete on disk. After a Ctrl-C (`interrupted`, which
sw.cli sets) nothing is committed, even where a library swallowed the KeyboardInterrupt.

`check_output_file` / `check_output_dir` test a destination before any compute starts
(missing or read-only folder, a directory where a file should go), so a long run cannot
fail at its very end for a reason known at its start.

Standard library only and nothing from the project, so every layer (golden_model, hw, sw) may use it.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path


#: A Ctrl-C reached the command sw.cli.main runs (set by its SIGINT handler, cleared when the command starts and
#: ends). No file is committed after it: a KeyboardInterrupt a library's bare `except:` swallowed leaves the old ones.
interrupted = False


def _new_file_mode() -> int:
    """What open() would give a new file: 0o666 minus the umask (mkstemp makes 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """A file object to write `path`'s new contents to; they replace `path` only when the block ends
    without an exception. `mode`: "wb" or "w" (text, UTF-8)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if interrupted:
            raise KeyboardInterrupt
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def save_npy(path, array) -> Path:
    """numpy.save, atomically (the name is kept as given: no .npy appended)."""
    import numpy as np
    with atomic_file(path) as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)


def save_png(path, image) -> Path:
    """A PIL image or a uint8 array (H, W[, 3 or 4]) as PNG, atomically."""
    from PIL import Image
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()              # encode first: an encoder error leaves no temporary file behind
    image.save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------- checks before computing

class OutputPathError(OSError):
    """A destination that cannot be written; the message names it and why."""


def _probe_folder(folder: Path, what: str) -> None:
    """The folder exists, is a folder and accepts a new file (read-only mounts and permissions
    alike: a real file is created and removed, as os.access cannot see either for root)."""
    if not folder.exists():
        raise OutputPathError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputPathError(f"{what}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".sam2fpga-probe-"):
            pass
    except OSError as e:
        raise OutputPathError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def check_output_file(path, what: str = "output", *, create_parent: bool = True) -> Path:
    """Refuse, before any compute, a file destination that cannot be written: a directory in its
    place, or a folder (or, with create_parent, the nearest existing ancestor) that does not take
    new files. With create_parent the missing folders are created (as the write would need)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what}: {path} is a directory, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        if not create_parent:
            raise OutputPathError(f"{what}: folder {parent} does not exist (create it first)")
        _create_folder(parent, what)
    _probe_folder(parent, what)
    return path


def check_output_dir(path, what: str = "output folder") -> Path:
    """An output folder: created if missing (parents too), refused if it is a file or takes no new files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what}: {path} exists and is not a folder")
    if not path.exists():
        _create_folder(path, what)
    _probe_folder(path, what)
    return path


def _create_folder(folder: Path, what: str) -> None:
    """mkdir -p, after checking the nearest existing ancestor takes new entries (a clear message)."""
    _probe_folder(_existing_ancestor(folder), what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"{what}: cannot create folder {folder} ({e.strerror or e})") from None
