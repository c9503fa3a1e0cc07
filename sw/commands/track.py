"""`sam2fpga track`: track objects through a folder of frames with the golden SAM 2.

    sam2fpga track FRAMES_DIR --frame 0 --point 120,80 --point 40,30,0 -o out/ [--logits-out logits/]
    sam2fpga track FRAMES_DIR --prompts prompts.json -o out/ [--reverse] [--start-frame N] [--logits-out logits/]

Frames are the .jpg/.jpeg/.png files of FRAMES_DIR sorted by name. The short form clicks
(x, y in frame pixels, label 1 = object, 0 = background) on frame N for one object; --prompts
gives any number of objects with points, boxes or masks on any frames, and corrections on later
frames (format and rules: sw/prompts.py, docs/track.md). Tracking runs as the official
propagate_in_video: forward from the earliest prompted frame, or from --start-frame N, or backward
with --reverse. Each tracked frame gets an overlay OUT_DIR/<frame-stem>.png (one colour per object)
and, with --logits-out, each object's full-resolution mask logits <frame-stem>_<obj>.npy (float32,
H x W; the short form keeps its <frame-stem>.npy). Every prompt is checked before anything is
computed. Without --checkpoint the model has seeded random weights: the pipeline runs, the masks
mean nothing. --precision int8 runs the overlay's integer reference on the host instead (image path,
memory encoder, memory attention, int8 memory bank: golden_model/quant; from --quantised FILE or
quantised on the fly; docs/quantisation.md), mask prompts and corrections included. --backend sim|pynq
runs that int8 model on the overlay (sw/commands/track_overlay.py: one driver session for the video, the
memory bank in DDR, per-frame and per-stage figures; the same outputs bit for bit).
"""
from __future__ import annotations

import json
from pathlib import Path

from sw import inputs

MODELS = ("tiny", "small", "base_plus", "large")
COLOURS = ((255, 64, 32), (32, 160, 255), (64, 220, 64), (255, 200, 0), (200, 64, 255), (0, 220, 220),
           (255, 128, 192), (160, 160, 160))   # one per object, cycling


def add_arguments(parser):
    parser.add_argument("frames", type=Path, metavar="FRAMES_DIR", help="folder of frames (.jpg/.png), sorted by name")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--point", action="append", metavar="X,Y[,LABEL]",
                        help="a click in frame pixels on --frame, object 1; LABEL 1 = object (default), "
                             "0 = background; repeatable")
    prompt.add_argument("--prompts", type=Path, metavar="PROMPTS.json",
                        help="objects and their points / boxes / masks per frame (see docs/track.md)")
    parser.add_argument("--frame", type=int, metavar="N", help="frame index the --point clicks are on (default 0)")
    parser.add_argument("--reverse", action="store_true", help="track backward (official propagate_in_video reverse)")
    parser.add_argument("--start-frame", type=int, metavar="N",
                        help="frame tracking starts from (default: the earliest prompted frame, as the official)")
    parser.add_argument("--model", choices=MODELS, default="tiny", help="model size (default tiny)")
    parser.add_argument("--checkpoint", type=Path, help="official SAM 2.1 checkpoint (.pt) matching --model")
    parser.add_argument("--seed", type=inputs.seed, default=0, help="seed of the random weights when there is no checkpoint")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT_DIR", help="where overlays go")
    parser.add_argument("--logits-out", type=Path, metavar="DIR",
                        help="also write each object's mask logits <frame-stem>_<obj>.npy here")
    parser.add_argument("--precision", choices=("float", "int8"), default=None,
                        help="float (default): the golden float model; int8: the host integer reference of the overlay")
    parser.add_argument("--backend", choices=("sim", "pynq"),
                        help="run int8 SAM 2 on the overlay (implies --precision int8; --preset picks the overlay): "
                             "sim = the overlay simulator (its cycle model), pynq = the pynq library on the simulated device")
    from sw.commands.segment import add_overlay_arguments
    add_overlay_arguments(parser)
    from sw.commands.sim import _fault
    parser.add_argument("--fault", metavar="KIND[:persistent]", type=_fault,
                        help="with --backend: inject an AXI fault (sw/backends/faults.py) when --fault-frame starts")
    parser.add_argument("--fault-frame", type=int, default=0, metavar="N", help="frame --fault strikes (default 0)")
    from sw.commands.quantize import add_quant_arguments
    add_quant_arguments(parser, quantised_file=True)


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


def overlay(frame_path: Path, logits, alpha: float = 0.5):
    """The frame with each object's mask (logits (objects, H, W) > 0) tinted in its colour, outlined."""
    import numpy as np
    from PIL import Image
    img = inputs.read_rgb(frame_path, "frame").astype(np.float32)
    for i, obj_logits in enumerate(logits):
        mask = obj_logits > 0
        tint = np.asarray(COLOURS[i % len(COLOURS)], np.float32)
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


def read_prompts(args, frames, size):
    """The prompts and the tracking plan, every entry checked against the video (nothing computed yet)."""
    from sw.cli import CommandError, UsageError
    from sw.prompts import PromptError, load_prompts, plan_tracking, short_form_prompts
    w, h = size
    if args.prompts is not None:
        if args.frame is not None:
            raise UsageError("--frame goes with --point; in a prompts file each entry names its frame")
        try:
            prompts = load_prompts(args.prompts, size, len(frames))
        except PromptError as e:
            raise CommandError(str(e)) from e
    else:
        frame = 0 if args.frame is None else args.frame
        clicks = [parse_point(p) for p in args.point]
        if not 0 <= frame < len(frames):
            raise UsageError(f"--frame {frame}: the video has {len(frames)} frames (0..{len(frames) - 1})")
        inputs.check_inside(clicks, None, w, h, "frames")
        prompts = short_form_prompts(frame, clicks)
    try:  # the start frame, the direction and the corrections' frames must fit together
        return prompts, plan_tracking(prompts, len(frames), args.reverse, args.start_frame)
    except PromptError as e:
        raise UsageError(str(e)) from e


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
    from sw.cli import CommandError

    try:
        frames = list_frames(args.frames)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from e
    prompts, plan = read_prompts(args, frames, frame_sizes(frames))
    check_backend(args, len(frames))
    check_precision(args)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise CommandError(f"checkpoint {args.checkpoint} does not exist")

    check_outputs(args)                 # last: it creates missing folders

    # features of the prompted frames stay cached (the official keeps one frame: same numbers, more encoding)
    cache = min(8, len({p.frame for p in prompts}) + 1)
    masks = any(p.mask is not None for p in prompts) or bool(plan.corrections)   # need the file's mask path
    if args.backend:
        predictor = _overlay_predictor(args, cache, prompts, masks)
    elif args.precision == "int8":
        predictor = _int8_predictor(args, cache, masks)
    else:
        predictor = VideoPredictor(_build_model(args).tracker, feature_cache_size=cache)
    scores, tracked = {}, []
    failures = (ValueError, CommandError)
    if args.backend:
        from sw.runtime.arena import ArenaFull
        from sw.runtime.video_exec import BankFull, FrameError
        failures += (FrameError, ArenaFull, BankFull)
    try:
        track_frames(predictor, frames, plan, args, scores, tracked)
    except failures as e:  # a frame that went bad while tracking: keep what is done
        write_scores(args.out, scores)
        raise CommandError(f"{e}; {summary(frames, args, plan, scores, tracked)}") from e
    except KeyboardInterrupt:
        if scores:
            write_scores(args.out, scores)
            print(f"interrupted: {summary(frames, args, plan, scores, tracked)}")
        raise
    write_scores(args.out, scores)
    print(summary(frames, args, plan, scores, tracked))
    if args.backend:
        from sw.commands.track_overlay import report
        report(predictor, tracked)
    obj_ids = next(iter(scores.values()), {})
    for i in obj_ids:
        present = sum(s[i] > 0 for s in scores.values())
        print(f"  object {i}: present on {present} of {len(tracked)} frames")
    if not plan.reverse and plan.start > 0:
        print(f"note: frames before {frames[plan.start].name} are not tracked (track them with --reverse)")
    return 0


def track_frames(predictor, frames, plan, args, scores: dict, tracked: list) -> None:
    """Run the plan, writing each frame's overlay (and each object's logits) as it comes; `scores` fills
    with each finished frame's object scores, `tracked` with its index. Memory stays flat: outputs no
    later frame reads are released."""
    import numpy as np
    from tqdm import tqdm

    from sw import outputs
    from sw.prompts import run_plan
    short_form = args.prompts is None
    state = predictor.init_state(frames)
    for idx, obj_ids, logits in tqdm(run_plan(predictor, state, plan), total=plan.frames_out(len(frames)),
                                     desc="track", unit="frame"):
        logits = logits[:, 0].astype(np.float32)
        stem = frames[idx].stem
        outputs.save_png(args.out / f"{stem}.png", overlay(frames[idx], logits))
        if args.logits_out:
            for obj_id, obj_logits in zip(obj_ids, logits):
                name = f"{stem}.npy" if short_form else f"{stem}_{obj_id}.npy"
                outputs.save_npy(args.logits_out / name, obj_logits)
        scores[stem] = {str(i): predictor.object_score_logits(state, idx, i) for i in obj_ids}
        tracked.append(idx)
        if args.backend:
            from sw.commands.track_overlay import frame_done
            frame_done(predictor, idx, stem)
        predictor.release_old_outputs(state, idx, reverse=plan.reverse)


def write_scores(out: Path, scores: dict) -> None:
    from sw import outputs
    outputs.write_text(out / "object_scores.json", json.dumps(
        {"object_score_logits": scores,
         "present": {stem: {i: v > 0 for i, v in s.items()} for stem, s in scores.items()}}, indent=1))


def summary(frames, args, plan, scores: dict, tracked: list) -> str:
    """One line on the frames tracked so far (all of them, or those before a failure)."""
    if not tracked:
        return "no frame tracked"
    n_obj = len(next(iter(scores.values())))
    first, last = frames[tracked[0]].name, frames[tracked[-1]].name
    return (f"tracked {n_obj} object{'s' * (n_obj > 1)} over {len(tracked)} frames ({first} .. {last}"
            f"{', backward' if plan.reverse else ''}); overlays in {args.out}"
            + (f", logits in {args.logits_out}" if args.logits_out else ""))


def check_backend(args, n_frames: int) -> None:
    """--backend implies --precision int8 (an explicit float is refused); --fault goes with --backend."""
    from sw.cli import UsageError
    if args.backend:
        if args.precision == "float":
            raise UsageError("--backend runs the int8 model on the overlay: drop --precision float")
        args.precision = "int8"
    elif args.fault is not None:
        raise UsageError("--fault needs --backend sim or pynq")
    from sw.commands.segment import check_overlay_arguments
    check_overlay_arguments(args)
    if args.fault is not None and not 0 <= args.fault_frame < n_frames:
        raise UsageError(f"--fault-frame {args.fault_frame}: the video has {n_frames} frames (0..{n_frames - 1})")
    args.precision = args.precision or "float"


def check_precision(args) -> None:
    """--precision options that fit together (before any compute)."""
    from sw.cli import UsageError
    if args.precision == "float" and (args.quantised is not None or args.calib):
        raise UsageError("--quantised and --calib are for --precision int8")


def _int8_model(args, masks: bool = False):
    """The QuantModel with the video part (--quantised, or quantised on the fly); `masks`: with the mask path."""
    from sw.commands.quantize import int8_model
    from sw.commands.segment import build_model
    qm = int8_model(args, build_model, lambda m: print("track: " + m), video=True, masks=masks)
    if args.quantised is None and args.checkpoint is None:
        print(f"track: no --checkpoint: SAM 2.1 {args.model} runs on RANDOM weights (seed {args.seed}); "
              "the masks show the pipeline working, not real tracking")
    return qm


def _int8_predictor(args, cache: int, masks: bool = False):
    """The golden VideoPredictor on the integer graph (golden_model/quant/video.py)."""
    from golden_model.quant.video import VideoIntRunner, graph_video_predictor
    qm = _int8_model(args, masks)
    return graph_video_predictor(qm.graph, VideoIntRunner(qm), feature_cache_size=cache)


def _overlay_predictor(args, cache: int, prompts, masks: bool = False):
    """The int8 VideoPredictor on the overlay, one driver session for the whole video (sw.commands.track_overlay)."""
    from sw.commands.track_overlay import overlay_predictor
    return overlay_predictor(args, _int8_model(args, masks), cache, prompts)


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
