"""Checks of the CLI's inputs that several commands share: images, prompts in pixels, seeds, an
output that would overwrite an input. Each raises UsageError (exit 2: the arguments make no sense)
or CommandError (exit 1: a file is bad) with one line naming what is wrong; all of them run before
a model is built, so a bad input never costs minutes of compute first.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sw.errors import CommandError, UsageError


def seed(text: str) -> int:
    """argparse type of a random seed: an integer >= 0 (NumPy's generators take no negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed must be >= 0, got {value}")
    return value


def open_image(path: Path, what: str = "image"):
    """The PIL image at `path`, header read and its size checked against Pillow's pixel limit (the
    decompression-bomb guard), not yet decoded. The caller closes it."""
    from PIL import Image, UnidentifiedImageError
    if not path.is_file():
        raise CommandError(f"{what} not found: {path}")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None      # read the header unchecked: the refusal below names the size
    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise CommandError(f"cannot read {what} {path}: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    w, h = img.size
    if limit and w * h > limit:
        img.close()
        raise CommandError(f"{what} {path} is {w}x{h} = {w * h:,} pixels, over Pillow's limit of {limit:,} "
                           "(its guard against decompression bombs): downscale it first; SAM 2 resizes every "
                           "input to its far smaller model size anyway")
    return img


def read_rgb(path: Path, what: str = "image"):
    """The image at `path` fully decoded as uint8 RGB (H, W, 3); 16-bit greyscale scaled to 8 bits."""
    from golden_model.transforms import rgb8
    img = open_image(path, what)
    try:
        with img:
            img.load()
            return rgb8(img)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise CommandError(f"cannot read {what} {path}: {e}") from e


def check_inside(points, box, width: int, height: int, what: str = "image") -> None:
    """Clicks (x, y, label) and a box (x0, y0, x1, y1), in pixels, must lie on the image."""
    for x, y, _ in points:
        if not (0 <= x < width and 0 <= y < height):
            raise UsageError(f"point {x:g},{y:g} lies outside the {width}x{height} {what}")
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise UsageError(f"box {x0:g},{y0:g},{x1:g},{y1:g} does not lie on the {width}x{height} {what} "
                             f"(0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height})")


def check_not_input(output: Path | None, inputs, what: str) -> None:
    """Refuse an output that is one of the inputs (it would be overwritten)."""
    if output is None:
        return
    out = Path(output).resolve()
    for path in inputs:
        if path is not None and Path(path).resolve() == out:
            raise UsageError(f"{what} {output} is the input {path}: it would be overwritten; choose another name")
