"""Calibration and evaluation photos: scikit-image's bundled photos (offline), or the user's files.

The two default sets are disjoint, so accuracy is never measured on calibration images.
Grey photos are replicated to RGB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "camera", "moon")
EVAL_PHOTOS = ("chelsea", "stereo_motorcycle", "immunohistochemistry", "retina", "coins", "hubble_deep_field")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class CalibrationError(ValueError):
    pass


def _rgb(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:
        x = np.stack([x] * 3, axis=-1)
    return np.ascontiguousarray(x[..., :3]).astype(np.uint8)


def skimage_photos(names=CALIB_PHOTOS) -> dict[str, np.ndarray]:
    """{name: uint8 RGB} of scikit-image's bundled photos (no network)."""
    try:
        from skimage import data
    except ImportError as e:
        raise CalibrationError("the default photos need scikit-image (pip install scikit-image, or the "
                               "project's [test] extra); or pass your own images") from e
    out = {}
    for name in names:
        x = getattr(data, name)()
        out[name] = _rgb(x[0] if isinstance(x, tuple) else x)   # stereo pairs: the left view
    return out


def load_images(paths) -> dict[str, np.ndarray]:
    """{path: uint8 RGB} of image files and of the image files directly inside directories."""
    from PIL import Image, UnidentifiedImageError
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CalibrationError(f"calibration directory {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise CalibrationError(f"calibration path not found: {p}")
    if not files:
        raise CalibrationError("no calibration images given")
    out = {}
    for f in files:
        try:
            with Image.open(f) as im:
                out[str(f)] = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise CalibrationError(f"cannot read calibration image {f}: {e}") from e
    return out
