"""Video prompts for `sam2fpga track`: read a prompts file, check every entry against the video before
anything is computed, and replay the prompts as the official predictor's interactive flow would.

The file (JSON; coordinates in frame pixels, labels 1 = object, 0 = background):

    {"objects": {"1": [{"frame": 0, "points": [[x, y], ...], "labels": [1, ...]},
                       {"frame": 8, "points": [[x, y]], "labels": [0]}],
                 "2": [{"frame": 5, "box": [x0, y0, x1, y1]}],
                 "3": [{"frame": 0, "mask": "mask.png"}]}}

Object ids are non-negative integers. An entry has a frame and one of: points with labels, a box
(optionally with points and labels), a mask (an image file of the frames' size, relative to the
prompts file; non-zero pixels are the object). At most one entry per object and frame.

How entries are used (the official SAM2VideoPredictor's rules): an object's entry on its first frame
in tracking order (forward: its earliest frame; --reverse: its latest) is added before tracking and
makes that a conditioning frame. Its entries on later frames are corrections: tracking runs up to
that frame, the prompt is added to the tracked frame (the previous mask goes in with the clicks;
the frame stays a non-conditioning frame), and tracking resumes from the next frame.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENTRY_KEYS = ("frame", "points", "labels", "box", "mask")


class PromptError(ValueError):
    """A prompt that cannot be used; the message names the entry."""


@dataclass(frozen=True)
class Prompt:
    """One object's prompt on one frame, checked against the video."""
    obj_id: int
    frame: int
    where: str                           # "object 1, entry 0" for messages
    points: np.ndarray | None = None     # (N, 2) float32, frame pixels
    labels: np.ndarray | None = None     # (N,) int32, 1 / 0
    box: tuple | None = None             # (x0, y0, x1, y1) frame pixels
    mask: np.ndarray | None = None       # (H, W) bool

    def add_to(self, predictor, state):
        """The official call for this prompt: (frame_idx, obj_ids, video-resolution logits)."""
        if self.mask is not None:
            return predictor.add_new_mask(state, self.frame, self.obj_id, self.mask)
        return predictor.add_new_points_or_box(state, self.frame, self.obj_id, points=self.points,
                                               labels=self.labels, box=self.box)


# ---------------------------------------------------------------------------------------- reading
def load_prompts(path: Path, frame_size: tuple[int, int], num_frames: int) -> list[Prompt]:
    """Every prompt of a prompts file, checked against the frames ((width, height), count)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PromptError(f"cannot read prompts file {path}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    return parse_prompts(data, frame_size, num_frames, base_dir=path.parent, source=str(path))


def parse_prompts(data, frame_size, num_frames, base_dir=Path("."), source="prompts") -> list[Prompt]:
    if not isinstance(data, dict) or set(data) != {"objects"}:
        raise PromptError(f'{source}: expected {{"objects": {{"<id>": [entries]}}}} at the top level')
    objects = data["objects"]
    if not isinstance(objects, dict) or not objects:
        raise PromptError(f'{source}: "objects" must map object ids to lists of entries, and name at least one')
    prompts, ids = [], {}
    for key, entries in objects.items():
        if not (key.isascii() and key.isdigit()):
            raise PromptError(f"{source}: object id {key!r} is not a non-negative integer")
        obj_id = int(key)
        if obj_id in ids:
            raise PromptError(f"{source}: object ids {ids[obj_id]!r} and {key!r} are the same object")
        ids[obj_id] = key
        if not isinstance(entries, list) or not entries:
            raise PromptError(f"{source}: object {key}: expected a non-empty list of entries")
        frames = {}
        for i, entry in enumerate(entries):
            where = f"{source}: object {key}, entry {i}"
            p = _entry(entry, obj_id, where, frame_size, num_frames, base_dir)
            if p.frame in frames:
                raise PromptError(f"{p.where}: object {key} already has entry {frames[p.frame]} on frame {p.frame} "
                                  "(put all of a frame's points in one entry)")
            frames[p.frame] = i
            prompts.append(p)
    return prompts


def short_form_prompts(frame: int, clicks) -> list[Prompt]:
    """`--frame N --point X,Y[,L] ...`: object 1, clicks on frame N (already checked by the command)."""
    points = np.array([[x, y] for x, y, _ in clicks], np.float32)
    labels = np.array([label for _, _, label in clicks], np.int32)
    return [Prompt(1, frame, "--point", points=points, labels=labels)]


def _entry(entry, obj_id, where, frame_size, num_frames, base_dir) -> Prompt:
    w, h = frame_size
    if not isinstance(entry, dict):
        raise PromptError(f"{where}: expected an object like {{\"frame\": 0, \"points\": [[x, y]], \"labels\": [1]}}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise PromptError(f"{where}: unknown keys {unknown} (known: {', '.join(ENTRY_KEYS)})")
    frame = entry.get("frame")
    if not _is_int(frame):
        raise PromptError(f"{where}: \"frame\" must be an integer frame index, got {frame!r}")
    if not 0 <= frame < num_frames:
        raise PromptError(f"{where}: frame {frame} does not exist (the video has {num_frames} frames, "
                          f"0..{num_frames - 1})")
    where = f"{where} (frame {frame})"
    has = {k for k in ("points", "labels", "box", "mask") if k in entry}
    if "mask" in has and has != {"mask"}:
        raise PromptError(f"{where}: a mask entry takes no points, labels or box")
    if ("points" in has) != ("labels" in has):
        raise PromptError(f"{where}: points and labels go together (one label per point: 1 object, 0 background)")
    if not has:
        raise PromptError(f"{where}: give points with labels, a box, or a mask")
    if "mask" in has:
        return Prompt(obj_id, frame, where, mask=_mask(entry["mask"], where, frame_size, base_dir))
    points = labels = box = None
    if "points" in has:
        points = _points(entry["points"], where, w, h)
        labels = _labels(entry["labels"], len(points), where)
    if "box" in has:
        box = _box(entry["box"], where, w, h)
    return Prompt(obj_id, frame, where, points=points, labels=labels, box=box)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _points(value, where, w, h) -> np.ndarray:
    if not (isinstance(value, list) and value
            and all(isinstance(p, list) and len(p) == 2 and all(map(_is_number, p)) for p in value)):
        raise PromptError(f"{where}: \"points\" must be a non-empty list of [x, y] number pairs, got {value!r}")
    for x, y in value:
        if not (0 <= x < w and 0 <= y < h):
            raise PromptError(f"{where}: point [{x:g}, {y:g}] lies outside the {w}x{h} frames")
    return np.array(value, np.float32)


def _labels(value, n, where) -> np.ndarray:
    if not (isinstance(value, list) and all(_is_int(v) and v in (0, 1) for v in value)):
        raise PromptError(f"{where}: \"labels\" must be a list of 1 (object) / 0 (background), got {value!r}")
    if len(value) != n:
        raise PromptError(f"{where}: {n} points but {len(value)} labels (one label per point)")
    return np.array(value, np.int32)


def _box(value, where, w, h) -> tuple:
    if not (isinstance(value, list) and len(value) == 4 and all(map(_is_number, value))):
        raise PromptError(f"{where}: \"box\" must be [x0, y0, x1, y1] (numbers), got {value!r}")
    x0, y0, x1, y1 = value
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise PromptError(f"{where}: box {value} must have 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
    return float(x0), float(y0), float(x1), float(y1)


def _mask(value, where, frame_size, base_dir) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    if not isinstance(value, str) or not value:
        raise PromptError(f"{where}: \"mask\" must be an image file name, got {value!r}")
    path = Path(base_dir) / value
    try:
        with Image.open(path) as img:
            img.load()
            if "A" in img.getbands():           # transparency is not part of the mask
                img = img.convert("RGB")
            arr = np.asarray(img)
    except (OSError, UnidentifiedImageError) as e:
        raise PromptError(f"{where}: cannot read mask {path}: {e}") from e
    if (arr.shape[1], arr.shape[0]) != tuple(frame_size):
        raise PromptError(f"{where}: mask {path.name} is {arr.shape[1]}x{arr.shape[0]}, "
                          f"the frames are {frame_size[0]}x{frame_size[1]}")
    return arr.any(axis=2) if arr.ndim == 3 else arr != 0


# ---------------------------------------------------------------------------------------- tracking
@dataclass(frozen=True)
class TrackPlan:
    """The prompts in the order the official interactive flow adds them."""
    initial: tuple            # added before tracking (conditioning frames), in object-id order
    corrections: tuple        # added when tracking reaches their frame, in tracking order
    start: int                # propagate_in_video's start_frame_idx
    reverse: bool

    def frames_out(self, num_frames: int) -> int:
        """How many frames tracking yields."""
        return self.start + 1 if self.reverse else num_frames - self.start


def plan_tracking(prompts: list[Prompt], num_frames: int, reverse: bool = False,
                  start: int | None = None) -> TrackPlan:
    """Split prompts into initial ones and corrections; check tracking reaches every correction.
    start=None is the official default: the earliest conditioning frame (in either direction)."""
    by_obj = defaultdict(list)
    for p in prompts:
        by_obj[p.obj_id].append(p)
    initial, corrections = [], []
    for obj_id in sorted(by_obj):
        ordered = sorted(by_obj[obj_id], key=lambda p: -p.frame if reverse else p.frame)
        initial.append(ordered[0])
        corrections += ordered[1:]
    default = min(p.frame for p in initial)
    if start is None:
        start = default
    elif not 0 <= start < num_frames:
        raise PromptError(f"start frame {start} does not exist (the video has {num_frames} frames, "
                          f"0..{num_frames - 1})")
    direction = "backward" if reverse else "forward"
    if reverse and start == 0:
        raise PromptError("reverse tracking from frame 0 tracks no frame (the official propagate_in_video "
                          "skips it); give a later start frame")
    for p in corrections:
        if (p.frame > start) if reverse else (p.frame < start):
            raise PromptError(f"{p.where}: a correction on a frame tracking never reaches (it runs {direction} "
                              f"from frame {start}); make it the object's first prompt or change the start frame")
        if reverse and p.frame == 1:
            raise PromptError(f"{p.where}: a reverse correction on frame 1 would leave frame 0 untracked "
                              "(the official reverse propagation cannot resume at frame 0)")
    corrections.sort(key=lambda p: (-p.frame if reverse else p.frame, p.obj_id))
    return TrackPlan(tuple(initial), tuple(corrections), start, reverse)


def run_plan(predictor, state, plan: TrackPlan):
    """Add the initial prompts, track, apply each correction when its frame is reached, resume from
    the next frame. Yields (frame_idx, obj_ids, logits (objects, 1, H, W)) once per frame, final."""
    for p in plan.initial:
        p.add_to(predictor, state)
    by_frame: dict[int, list[Prompt]] = defaultdict(list)
    for p in plan.corrections:
        by_frame[p.frame].append(p)
    step = -1 if plan.reverse else 1
    start = plan.start
    for stop in [*by_frame, None]:
        count = None if stop is None else abs(stop - start)
        for frame_idx, obj_ids, masks in predictor.propagate_in_video(state, start, count, plan.reverse):
            if frame_idx != stop:        # the correction frame is yielded once corrected
                yield frame_idx, obj_ids, masks
        if stop is None:
            return
        for p in by_frame[stop]:
            frame_idx, obj_ids, masks = p.add_to(predictor, state)
        yield frame_idx, obj_ids, masks
        start = stop + step
        if not 0 <= start < state.num_frames:
            return
