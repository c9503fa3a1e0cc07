"""`sam2fpga quantize`: calibrate SAM 2 and write the int8 model (the overlay's integer reference).

    sam2fpga quantize --model tiny -o tiny.int8.safetensors
    sam2fpga quantize --model tiny --checkpoint sam2.1_hiera_tiny.pt --calib photos/ --preset kv260 -o tiny.int8.safetensors

Calibration runs the float graph on the calibration photos (default: scikit-image's bundled
photos, offline) with three clicks each, picks every activation's int8 scale (--estimator,
default percentile: see docs/quantisation.md) and quantises weights per output channel. The attention
engine's key tile comes from --preset (its array's cols), so the file is the exact expectation
for that overlay. The file carries the video part too (memory encoder, memory attention, the int8
memory bank's scales), calibrated on tracks through shifted copies of the same photos.
`sam2fpga segment / track --precision int8 --quantised FILE` use it.
"""
from __future__ import annotations

import time
from pathlib import Path

MODELS = ("tiny", "small", "base_plus", "large")
DEFAULT_PRESET = "kv260"


def add_arguments(parser):
    parser.add_argument("--model", choices=MODELS, default="tiny", help="SAM 2.1 size (default: tiny)")
    parser.add_argument("--checkpoint", type=Path,
                        help="official SAM 2.1 checkpoint (.pt or .safetensors); without it: random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights without --checkpoint")
    add_quant_arguments(parser)
    parser.add_argument("--image-size", type=int, metavar="N",
                        help="input size (default: the model's, 1024); smaller multiples of 128 give a "
                             "scaled-down model for quick runs")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .safetensors file")


def add_quant_arguments(parser, *, quantised_file: bool = False):
    """Options shared by `quantize` and the int8 paths of `segment` / `track`."""
    parser.add_argument("--calib", type=Path, nargs="+", metavar="PATH",
                        help="calibration images or directories of images (default: scikit-image's photos)")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"overlay preset whose attention key tile the int8 model uses (default: {DEFAULT_PRESET})")
    parser.add_argument("--estimator", choices=("max", "percentile", "mse"), default="percentile",
                        help="activation-scale estimator (default: percentile, the most accurate measured; "
                             "docs/quantisation.md)")
    if quantised_file:
        parser.add_argument("--quantised", type=Path, metavar="FILE",
                            help="int8 model from `sam2fpga quantize` (default: quantise on the fly)")


def key_tile_of(preset_name: str) -> int:
    from hw.config import preset
    from sw.cli import UsageError
    try:
        return preset(preset_name).cols
    except ValueError as e:
        raise UsageError(str(e)) from None


def calibration_images(paths):
    from golden_model.quant.calibset import CalibrationError, load_images, skimage_photos
    from sw.cli import CommandError
    try:
        return list((load_images(paths) if paths else skimage_photos()).values())
    except CalibrationError as e:
        raise CommandError(str(e)) from e


def quantise_model(model, args, log=print, video: bool = False):
    """Calibrate and quantise a golden SAM2Model with the options in `args`: a QuantModel. With `video`,
    the graph carries the video part too (golden_model/quant/video.py), calibrated on tracks through
    shifted copies of the calibration images."""
    from golden_model.quant.builder import build_graph
    from golden_model.quant.quantize import calibrate, quantize
    from golden_model.quant.video import VIDEO_FRAMES_PER_PHOTO, build_full_graph, calibrate_video, quantize_video
    key_tile = key_tile_of(args.preset)
    images = calibration_images(args.calib)
    graph = build_full_graph(model) if video else build_graph(model)
    t0 = time.monotonic()
    stats = calibrate(graph, images)
    log(f"calibrated on {len(images)} images x 3 clicks in {time.monotonic() - t0:.1f} s "
        f"({'given' if args.calib else 'scikit-image photos'}, estimator {args.estimator})")
    if not video:
        return quantize(graph, stats, args.estimator, key_tile, args.preset)
    t0 = time.monotonic()
    calibrate_video(graph, images, stats)
    log(f"calibrated the video part on {len(images)} tracks of {VIDEO_FRAMES_PER_PHOTO} shifted frames in "
        f"{time.monotonic() - t0:.1f} s")
    return quantize_video(graph, stats, args.estimator, key_tile, args.preset)


def int8_predictor(args, build_model, log=print):
    """The host int8 reference predictor for `segment --precision int8`: from --quantised, or
    quantised on the fly from the float model (`build_model(name, checkpoint, seed)`)."""
    from golden_model.quant.intinterp import IntRunner
    from golden_model.quant.predictor import GraphPredictor
    qm = int8_model(args, build_model, log)
    return GraphPredictor(qm.graph, IntRunner(qm))


def int8_model(args, build_model, log=print, video: bool = False, masks: bool = False):
    """The QuantModel for `segment` / `track --precision int8`: from --quantised (strict; with `video`, it
    must carry the video part; with `masks`, the mask prompt path), or quantised on the fly from the float model."""
    from golden_model.predictor import PromptError
    from golden_model.quant.qfile import QuantFileError, describe, load_quantised
    from golden_model.quant.video import VideoGraphError, require_mask_prompts, require_video
    from sw.cli import CommandError, UsageError
    key_tile_of(args.preset)
    if args.quantised is not None:
        if args.checkpoint is not None:
            raise UsageError("--quantised already holds the weights: drop --checkpoint")
        try:
            qm = load_quantised(args.quantised, model=args.model, preset=args.preset)
            if video:
                require_video(qm.graph, str(args.quantised))
            if masks:
                require_mask_prompts(qm.graph, str(args.quantised))
        except (QuantFileError, VideoGraphError, PromptError) as e:
            raise CommandError(str(e)) from e
        log(f"int8: {describe(qm)} from {args.quantised}")
    else:
        model = build_model(args.model, args.checkpoint, args.seed)
        log(f"int8: no --quantised file: quantising SAM 2.1 {args.model} on the fly "
            f"({'checkpoint ' + str(args.checkpoint) if args.checkpoint else f'RANDOM weights, seed {args.seed}'})")
        qm = quantise_model(model, args, lambda m: log("int8: " + m), video=video)
    return qm


def run(args) -> int:
    from golden_model.quant.builder import random_model
    from golden_model.quant.qfile import describe, save_quantised
    from sw.cli import UsageError
    from sw.commands.segment import build_model
    if args.out.suffix != ".safetensors":
        raise UsageError(f"-o must name a .safetensors file, got {args.out}")
    key_tile_of(args.preset)
    if args.image_size is not None:
        if args.checkpoint is not None:
            raise UsageError("--image-size builds a scaled-down model on random weights: drop --checkpoint")
        try:
            model = random_model(args.model, args.image_size, args.seed)
        except ValueError as e:
            raise UsageError(str(e)) from None
    else:
        model = build_model(args.model, args.checkpoint, args.seed)
    if args.checkpoint is None:
        print(f"quantize: no --checkpoint: SAM 2.1 {args.model} on RANDOM weights (seed {args.seed})")
    qm = quantise_model(model, args, lambda m: print("quantize: " + m), video=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part")
    save_quantised(qm, tmp)
    tmp.replace(args.out)
    print(f"quantize: wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): {describe(qm)}")
    return 0
