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

from sw import inputs

MODELS = ("tiny", "small", "base_plus", "large")


def add_arguments(parser):
    parser.add_argument("frames", type=Path, metavar="FRAMES_DIR", help="folder of frames (.jpg/.png), sorted by name")
    parser.add_argument("--frame", type=int, default=0, metavar="N", help="frame index the clicks are on (default 0)")
    parser.add_argument("--point", action="append", required=True, metavar="X,Y[,LABEL]",
                        help="a click in frame pixels; LABEL 1 = object (default), 0 = background; repeatable")
    parser.add_argument("--model", choices=MODELS, default="tiny", help="model size (default tiny)")
    parser.add_argument("--checkpoint", type=Path, help="official SAM 2.1 checkpoint (.pt) matching --model")
    parser.add_argument("--seed", type=inputs.seed, default=0, help="seed of the random weights when there is no checkpoint")
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
    img = inputs.read_rgb(frame_path, "frame").astype(np.float32)
    mask = logits > 0
    tint = np.asarray(colour, np.float32)
    img[mask] = (1 - alpha) * img[mask] + alpha * tint
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    img[edge] = tint
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def frame_sizes(frames) -> tuple[int, int]:
    """(width, height) shared by all frames, each decoded in full before tracking starts (a corrupt
    frame found after minutes of tracking would be worse); a clear error otherwise."""
    from sw.cli import CommandError
    size = None
    for path in frames:
        this = inputs.read_rgb(path, "frame").shape[1::-1]
        if size is None:
            size = this
        elif this != size:
            raise CommandError(f"frame {path.name} is {this[0]}x{this[1]}, earlier frames are {size[0]}x{size[1]}")
    return size


def check_outputs(args) -> None:
    """Output folders usable, and not the frames folder (overlays would overwrite .png frames)."""
    from sw import outputs
    inputs.check_not_input(args.out, [args.frames], "-o")
    inputs.check_not_input(args.logits_out, [args.frames], "--logits-out")
    outputs.check_output_dir(args.out, "-o")
    if args.logits_out:
        outputs.check_output_dir(args.logits_out, "--logits-out")


def run(args) -> int:
    from golden_model.video import VideoPredictor, list_frames
    from sw.cli import CommandError, UsageError

    clicks = [parse_point(p) for p in args.point]
    try:
        frames = list_frames(args.frames)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from e
    if not 0 <= args.frame < len(frames):
        raise UsageError(f"--frame {args.frame}: the video has {len(frames)} frames (0..{len(frames) - 1})")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise CommandError(f"checkpoint {args.checkpoint} does not exist")
    w, h = frame_sizes(frames)
    inputs.check_inside(clicks, None, w, h, "frames")
    check_outputs(args)                 # last: it creates missing folders

    model = _build_model(args)
    predictor = VideoPredictor(model.tracker)
    scores = {}
    try:
        track_frames(predictor, frames, args.frame, clicks, args.out, args.logits_out, scores)
    except (ValueError, CommandError) as e:  # a frame that went bad while tracking: keep what is done
        write_scores(args.out, scores)
        raise CommandError(f"{e}; {summary(frames, args, scores)}") from e
    except KeyboardInterrupt:
        if scores:
            write_scores(args.out, scores)
            print(f"interrupted: {summary(frames, args, scores)}")
        raise
    write_scores(args.out, scores)
    print(summary(frames, args, scores))
    if args.frame > 0:
        print(f"note: frames before {frames[args.frame].name} are not tracked (forward propagation only)")
    return 0


def track_frames(predictor, frames, start: int, clicks, out: Path, logits_out: Path | None, scores: dict) -> None:
    """Track from frame `start`, writing each frame's overlay (and logits) as it comes; `scores` fills
    with each finished frame's object score. Memory stays flat: outputs no later frame reads are released."""
    import numpy as np
    from tqdm import tqdm

    from sw import outputs
    state = predictor.init_state(frames)
    predictor.add_new_points(state, start, 1, [[x, y] for x, y, _ in clicks], [label for _, _, label in clicks])
    for idx, _, logits in tqdm(predictor.propagate_in_video(state), total=len(frames) - start, desc="track",
                               unit="frame"):
        logits = logits[0, 0]
        stem = frames[idx].stem
        outputs.save_png(out / f"{stem}.png", overlay(frames[idx], logits))
        if logits_out:
            outputs.save_npy(logits_out / f"{stem}.npy", logits.astype(np.float32))
        scores[stem] = predictor.object_score_logits(state, idx)
        predictor.release_old_outputs(state, idx)


def write_scores(out: Path, scores: dict) -> None:
    from sw import outputs
    outputs.write_text(out / "object_scores.json", json.dumps(
        {"object_score_logits": scores, "present": {k: v > 0 for k, v in scores.items()}}, indent=1))


def summary(frames, args, scores: dict) -> str:
    """One line on the frames tracked so far (all of them, or those before a failure)."""
    if not scores:
        return "no frame tracked"
    present = sum(v > 0 for v in scores.values())
    last = frames[args.frame + len(scores) - 1]      # forward tracking: the frames done are contiguous
    return (f"tracked {len(scores)} frames ({frames[args.frame].name} .. {last.name}); "
            f"object present on {present}; overlays in {args.out}"
            + (f", logits in {args.logits_out}" if args.logits_out else ""))


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
