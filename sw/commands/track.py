"""`sam2fpga track`: follow one object through a folder of frames with the golden SAM 2.

    sam2fpga track FRAMES_DIR --frame 0 --point 120,80 --point 40,30,0 -o out/ [--logits-out logits/]

Frames are the .jpg/.jpeg/.png files of FRAMES_DIR sorted by name. Clicks (x, y in
frame pixels, label 1 = object, 0 = background) go on frame N; the object is then
tracked forward to the last frame. Each tracked frame gets an overlay
OUT_DIR/<frame-stem>.png and, with --logits-out, its full-resolution mask logits
as <frame-stem>.npy (float32, H x W). Without --checkpoint the model has seeded
random weights: the pipeline runs, the masks mean nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

MODELS = ("tiny", "small", "base_plus", "large")


def add_arguments(parser):
    parser.add_argument("frames", type=Path, metavar="FRAMES_DIR", help="folder of frames (.jpg/.png), sorted by name")
    parser.add_argument("--frame", type=int, default=0, metavar="N", help="frame index the clicks are on (default 0)")
    parser.add_argument("--point", action="append", required=True, metavar="X,Y[,LABEL]",
                        help="a click in frame pixels; LABEL 1 = object (default), 0 = background; repeatable")
    parser.add_argument("--model", choices=MODELS, default="tiny", help="model size (default tiny)")
    parser.add_argument("--checkpoint", type=Path, help="official SAM 2.1 checkpoint (.pt) matching --model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights when there is no checkpoint")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT_DIR", help="where overlays go")
    parser.add_argument("--logits-out", type=Path, metavar="DIR", help="also write <frame-stem>.npy mask logits here")


def parse_point(text: str) -> tuple[float, float, int]:
    """'X,Y' or 'X,Y,LABEL' -> (x, y, label)."""
    from sw.cli import UsageError
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise UsageError(f"--point {text!r}: expected X,Y or X,Y,LABEL (numbers)") from None
    if label not in (0, 1):
        raise UsageError(f"--point {text!r}: LABEL must be 1 (object) or 0 (background)")
    return x, y, label


def overlay(frame_path: Path, logits, colour=(255, 64, 32), alpha: float = 0.5):
    """The frame with the mask (logits > 0) tinted and its outline drawn."""
    import numpy as np
    from PIL import Image
    img = np.asarray(Image.open(frame_path).convert("RGB"), np.float32)
    mask = logits > 0
    tint = np.asarray(colour, np.float32)
    img[mask] = (1 - alpha) * img[mask] + alpha * tint
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    img[edge] = tint
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def frame_sizes(frames) -> tuple[int, int]:
    """(width, height) shared by all frames, read from the file headers; a clear error otherwise."""
    from PIL import Image, UnidentifiedImageError
    from sw.cli import CommandError
    size = None
    for path in frames:
        try:
            with Image.open(path) as img:
                this = img.size
        except (OSError, UnidentifiedImageError) as e:
            raise CommandError(f"cannot read frame {path}: {e}") from e
        if size is None:
            size = this
        elif this != size:
            raise CommandError(f"frame {path.name} is {this[0]}x{this[1]}, earlier frames are {size[0]}x{size[1]}")
    return size


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from golden_model.video import VideoPredictor, list_frames
    from sw.cli import CommandError, UsageError

    clicks = [parse_point(p) for p in args.point]
    try:
        frames = list_frames(args.frames)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from e
    if not 0 <= args.frame < len(frames):
        raise UsageError(f"--frame {args.frame}: the video has {len(frames)} frames (0..{len(frames) - 1})")
    w, h = frame_sizes(frames)
    for x, y, _ in clicks:
        if not (0 <= x < w and 0 <= y < h):
            raise UsageError(f"--point {x:g},{y:g} lies outside the {w}x{h} frames")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise CommandError(f"checkpoint {args.checkpoint} does not exist")

    model = _build_model(args)
    predictor = VideoPredictor(model.tracker)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.logits_out:
        args.logits_out.mkdir(parents=True, exist_ok=True)
    points = [[x, y] for x, y, _ in clicks]
    labels = [label for _, _, label in clicks]
    try:
        state = predictor.init_state(frames)
        predictor.add_new_points(state, args.frame, 1, points, labels)
        scores = {}
        todo = len(frames) - args.frame
        for idx, _, logits in tqdm(predictor.propagate_in_video(state), total=todo, desc="track", unit="frame"):
            logits = logits[0, 0]
            stem = frames[idx].stem
            overlay(frames[idx], logits).save(args.out / f"{stem}.png")
            if args.logits_out:
                np.save(args.logits_out / f"{stem}.npy", logits.astype(np.float32))
            scores[stem] = predictor.object_score_logits(state, idx)
    except ValueError as e:  # a frame that went bad while tracking
        raise CommandError(str(e)) from e
    (args.out / "object_scores.json").write_text(json.dumps(
        {"object_score_logits": scores, "present": {k: v > 0 for k, v in scores.items()}}, indent=1))
    present = sum(v > 0 for v in scores.values())
    print(f"tracked {len(scores)} frames ({frames[args.frame].name} .. {frames[-1].name}); "
          f"object present on {present}; overlays in {args.out}"
          + (f", logits in {args.logits_out}" if args.logits_out else ""))
    if args.frame > 0:
        print(f"note: frames before {frames[args.frame].name} are not tracked (forward propagation only)")
    return 0


def _build_model(args):
    from golden_model.model import SAM2Model
    from sw.cli import CommandError
    if args.checkpoint is None:
        print(f"no --checkpoint: using seeded RANDOM weights (seed {args.seed}) for SAM 2.1 {args.model}; "
              "the pipeline runs end to end but the masks are meaningless")
        return SAM2Model(args.model, seed=args.seed)
    try:
        return SAM2Model.from_checkpoint(args.model, args.checkpoint)
    except (ValueError, OSError) as e:  # WeightError is a ValueError; bad files raise ValueError/OSError
        raise CommandError(f"cannot load {args.checkpoint} as a SAM 2.1 {args.model} checkpoint: {e}") from e
