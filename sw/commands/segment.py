"""`sam2fpga segment`: segment an image with point / box prompts on the NumPy golden SAM 2.

    sam2fpga segment photo.jpg --point 220,130 -o out.png
    sam2fpga segment photo.jpg --point 220,130,1 --point 40,260,0 --box 60,40,300,250 \\
        --model tiny --checkpoint sam2.1_hiera_tiny.pt -o out.png --logits-out logits.npy

Writes the image with the mask overlaid (prompts drawn on top). A single point
without a box asks for three candidate masks and keeps the one with the highest
predicted IoU (the official recommendation for ambiguous clicks); other prompts
ask for one mask. --logits-out saves that mask's full-resolution logits
(float32, H x W). Without --checkpoint the model runs on seeded random weights,
and says so: the result is then not a real segmentation. --precision int8 runs
the overlay's integer reference on the host instead (golden_model/quant, from
--quantised FILE or quantised on the fly; docs/quantisation.md). --backend sim|rtl|pynq runs that int8
model on the overlay (sw/runtime/overlay_segment.py; docs/overlay-run.md), bit for bit the same
outputs as --precision int8 for the same --preset, and prints per stage the modelled overlay time,
the host ops' time and the host <-> DDR bytes (--nodes: per node).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from sw import inputs

MODELS = ("tiny", "small", "base_plus", "large")
MASK_COLOUR = (30, 144, 255)
MASK_ALPHA = 0.5
POINT_COLOURS = {1: (0, 220, 0), 0: (230, 0, 0)}
_FORMS = {"point": ("X,Y", "X,Y,LABEL"), "box": ("X0,Y0,X1,Y1",)}


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    parts = text.split(",")
    if len(parts) not in counts:
        raise argparse.ArgumentTypeError(f"{what} must be {' or '.join(_FORMS[what])}, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be finite numbers, got {text!r}")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """X,Y or X,Y,LABEL with LABEL 1 (foreground, the default) or 0 (background)."""
    v = _numbers(text, (2, 3), "point")
    label = 1 if len(v) == 2 else v[2]
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 1 (foreground) or 0 (background), got {text!r}")
    return v[0], v[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _numbers(text, (4,), "box")
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"box must have x0 < x1 and y0 < y1, got {text!r}")
    return x0, y0, x1, y1


def add_overlay_arguments(parser) -> None:
    """--bitfile and --program-store, for the commands that run on the overlay (segment, track)."""
    parser.add_argument("--bitfile", type=Path, metavar="FILE.bit",
                        help="with --backend pynq on a board: the overlay's bitstream (its .hwh beside it); "
                             "without it pynq's library runs on the simulated device")
    parser.add_argument("--program-store", metavar="DIR|off",
                        help="with --backend: where compiled programs are kept for the next run (default "
                             "$SAM2FPGA_PROGRAM_STORE, else $XDG_CACHE_HOME/sam2fpga/programs or "
                             "~/.cache/sam2fpga/programs); off: compile every program (docs/runtime.md)")


def check_overlay_arguments(args) -> None:
    """--bitfile goes with --backend pynq and names a file, --program-store with --backend, and the store's
    budget variable is a number (before any model is built)."""
    from sw.cli import UsageError
    from sw.runtime.program_store import budget_bytes
    if args.program_store is not None and args.backend is None:
        raise UsageError("--program-store is for --backend")
    if args.backend is not None:
        try:
            budget_bytes()                      # SAM2FPGA_PROGRAM_STORE_MB, read when the store opens
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.bitfile is None:
        return
    if args.backend != "pynq":
        raise UsageError("--bitfile is for --backend pynq")
    if not args.bitfile.is_file():
        raise UsageError(f"--bitfile {args.bitfile}: no such file")


def program_store(args):
    """The ProgramStore of --program-store (sw.runtime.program_store.store_from; None: off)."""
    from sw.runtime.program_store import store_from
    return store_from(args.program_store)


def add_arguments(parser):
    parser.add_argument("image", type=Path, help="input image (any format Pillow reads; converted to RGB)")
    parser.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a click in pixels; LABEL 1 = foreground (default), 0 = background; repeatable")
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box prompt in pixels")
    parser.add_argument("--model", choices=MODELS, default="tiny", help="SAM 2.1 size (default: tiny)")
    parser.add_argument("--checkpoint", type=Path,
                        help="official SAM 2.1 checkpoint (.pt) matching --model; without it: random weights")
    parser.add_argument("--seed", type=inputs.seed, default=0, help="seed of the random weights without --checkpoint")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output PNG: the image with the mask overlaid")
    parser.add_argument("--logits-out", type=Path, metavar="FILE.npy",
                        help="save the chosen mask's full-resolution logits (float32, H x W)")
    parser.add_argument("--precision", choices=("float", "int8"),
                        help="float (default): the golden float model; int8: the host integer reference of the "
                             "overlay (implied by --backend)")
    parser.add_argument("--backend", choices=("sim", "rtl", "pynq"),
                        help="run the int8 model on the overlay (preset --preset) on this backend: sim (the "
                             "functional model), rtl (Verilator; small models only), pynq (a board, or pynq's "
                             "library on the simulated device)")
    add_overlay_arguments(parser)
    parser.add_argument("--nodes", action="store_true",
                        help="with --backend: print every node's placement, cycles and DDR bytes")
    from sw.commands.quantize import add_quant_arguments
    add_quant_arguments(parser, quantised_file=True)


def load_rgb(path: Path):
    """The image as uint8 RGB (H, W, 3): 16-bit greyscale scaled to 8 bits, too-large images refused."""
    return inputs.read_rgb(path)


def build_model(name: str, checkpoint: Path | None, seed: int):
    """The golden SAM2Model: strict from a checkpoint, or seeded random weights."""
    from golden_model.model import SAM2Model
    from golden_model.weights import WeightError
    from sw.cli import CommandError
    if checkpoint is None:
        return SAM2Model(name, seed=seed)
    if not checkpoint.is_file():
        raise CommandError(f"checkpoint not found: {checkpoint}")
    try:
        return SAM2Model.from_checkpoint(name, checkpoint)
    except WeightError as e:
        raise CommandError(f"checkpoint {checkpoint} does not fit model {name!r}: {e}") from e
    except (ValueError, OSError) as e:  # malformed file (the loader never unpickles code)
        raise CommandError(f"cannot load checkpoint {checkpoint}: {e}") from e


def overlay(image, mask, points=(), box=None):
    """The image with `mask` tinted and the prompts drawn: uint8 (H, W, 3)."""
    import numpy as np
    out = image.astype(np.float32)
    colour = np.array(MASK_COLOUR, np.float32)
    out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * colour
    out = out.round().astype(np.uint8)
    from PIL import Image, ImageDraw
    im = Image.fromarray(out)
    draw = ImageDraw.Draw(im)
    r = max(3, round(min(image.shape[:2]) / 100))
    if box is not None:
        draw.rectangle(box, outline=(255, 210, 0), width=max(1, r // 2))
    for x, y, label in points:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=POINT_COLOURS[label], outline=(255, 255, 255))
    return np.asarray(im)


def segment(image, points, box, model, predictor=None):
    """(chosen mask logits (H, W) float32, its predicted IoU, index among the candidates, candidate count).
    `predictor` (e.g. the int8 one) replaces the float ImagePredictor of `model`."""
    import numpy as np

    from golden_model.predictor import ImagePredictor
    predictor = predictor if predictor is not None else ImagePredictor(model)
    predictor.set_image(image)
    multimask = len(points) == 1 and box is None
    logits, ious, _ = predictor.predict(
        point_coords=[p[:2] for p in points] if points else None,
        point_labels=[p[2] for p in points] if points else None,
        box=list(box) if box is not None else None, multimask_output=multimask, return_logits=True)
    best = int(np.argmax(ious))
    return logits[best].astype(np.float32), float(ious[best]), best, len(ious)


def check_arguments(args):
    """Everything that can be known wrong before the model is built (seconds of compute); returns the
    image (uint8 RGB)."""
    from sw import outputs
    from sw.cli import UsageError
    if args.backend is not None and args.precision == "float":
        raise UsageError("--backend runs the int8 model on the overlay: drop --precision float")
    if args.nodes and args.backend is None:
        raise UsageError("--nodes needs --backend")
    check_overlay_arguments(args)
    args.precision = args.precision or ("int8" if args.backend else "float")
    if not args.point and args.box is None:
        raise UsageError("segment needs a prompt: at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    if args.out.suffix.lower() != ".png":
        raise UsageError(f"-o must name a .png file, got {args.out}")
    if args.precision == "float" and (args.quantised is not None or args.calib):
        raise UsageError("--quantised and --calib are for --precision int8")
    if args.logits_out is not None and args.logits_out.suffix.lower() != ".npy":
        raise UsageError(f"--logits-out must name a .npy file, got {args.logits_out}")
    inputs.check_not_input(args.out, [args.image, args.checkpoint], "-o")
    inputs.check_not_input(args.logits_out, [args.image, args.checkpoint], "--logits-out")
    image = load_rgb(args.image)
    inputs.check_inside(args.point, args.box, image.shape[1], image.shape[0])
    outputs.check_output_file(args.out, "-o")             # last: it creates missing folders
    if args.logits_out is not None:
        outputs.check_output_file(args.logits_out, "--logits-out")
    return image


def run(args) -> int:
    import numpy as np

    from sw import outputs
    image = check_arguments(args)
    h, w = image.shape[:2]
    t0 = time.monotonic()
    model = predictor = executor = None
    if args.backend is not None:
        from sw.commands.segment_overlay import overlay_predictor
        predictor, executor = overlay_predictor(args, build_model)
    elif args.precision == "int8":
        from sw.commands.quantize import int8_predictor
        predictor = int8_predictor(args, build_model, lambda m: print("segment: " + m))
    else:
        model = build_model(args.model, args.checkpoint, args.seed)
    if args.checkpoint is None and args.quantised is None:
        print(f"segment: no --checkpoint given: SAM 2.1 {args.model} runs on RANDOM weights (seed {args.seed}); "
              "the mask shows the pipeline working, not a real segmentation")
    elif args.checkpoint is not None:
        print(f"segment: SAM 2.1 {args.model} from {args.checkpoint} (all keys matched)")
    t1 = time.monotonic()
    if executor is None:
        logits, iou, best, candidates = segment(image, args.point, args.box, model, predictor)
    else:
        from sw.commands.segment_overlay import segment_on_overlay
        logits, iou, best, candidates = segment_on_overlay(args, image, predictor, executor)
    t2 = time.monotonic()
    mask = logits > 0
    outputs.save_png(args.out, overlay(image, mask, args.point, args.box))
    choice = f"mask {best + 1} of {candidates} (highest predicted IoU)" if candidates > 1 else "single mask"
    print(f"segment: {w}x{h} image, {choice}: predicted IoU {iou:.3f}, "
          f"{int(mask.sum())} pixels ({100 * mask.mean():.1f}%)")
    print(f"segment: wrote {args.out}  (model build {t1 - t0:.1f} s, image encoder + prompt/decoder {t2 - t1:.1f} s)")
    if args.logits_out is not None:
        outputs.save_npy(args.logits_out, logits.astype(np.float32))
        print(f"segment: wrote {args.logits_out} (float32 logits, {h}x{w})")
    return 0
