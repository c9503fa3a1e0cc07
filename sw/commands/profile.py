"""`sam2fpga profile`: how fast SAM 2 runs on a preset, layer by layer, without running any data.

    sam2fpga profile --model tiny --preset kv260 --video
    sam2fpga profile --model small --preset pynq-z2 --image-size 512 -o build/profile

Every node of the int8 graph is placed (sam2fpga plan says where and why), each engine program is
compiled for its shape and timed by the sim backend's cycle model (no data: seconds), the host ops by
the host cost model (sw/perf/host_model.py; --host-model FILE replaces it by a board measurement).
Prints the per-layer table (engine or host, MACs, cycles, MAC utilisation, DDR bytes, compute- or
DDR-bound) and the totals per stage; writes JSON and a PNG chart to the output folder. docs/profile.md.
"""
from __future__ import annotations

from pathlib import Path

from sw.errors import CommandError, UsageError

MODELS = ("tiny", "small", "base_plus", "large")


def add_common(parser):
    """Options `plan` and `profile` share."""
    parser.add_argument("--model", choices=MODELS, default="tiny", help="SAM 2.1 size (default: tiny)")
    parser.add_argument("--preset", default="kv260", help="overlay preset (default: kv260)")
    parser.add_argument("--image-size", type=int, metavar="N",
                        help="input size (default: the model's, 1024; a multiple of 128)")
    parser.add_argument("--video", action="store_true",
                        help="add the video stages: memory attention against a full bank and the memory encoder")
    parser.add_argument("--vector-lanes", type=int, default=0, metavar="L",
                        help="profile as if the preset had a vector engine of L lanes (2..32, a power of two)")
    parser.add_argument("--host-model", type=Path, metavar="FILE",
                        help="JSON of host model fields measured on the board (sw/perf/host_model.py)")


def add_arguments(parser):
    add_common(parser)
    parser.add_argument("-o", "--out", type=Path, default=Path("build/profile"),
                        help="folder for the JSON and PNG (default: build/profile)")
    parser.add_argument("--totals-only", action="store_true", help="print the totals, not every layer")
    parser.add_argument("--objects", default="1,3,8", metavar="N,N,...",
                        help="with --video: a frame's time for these numbers of tracked objects (default: 1,3,8)")


def resolve(args):
    """(cfg, host model) from the shared options, or a clear error."""
    from hw.config import preset
    from sw.perf.host_model import HostModel, host_for
    try:
        cfg = preset(args.preset)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.image_size is not None and (args.image_size < 128 or args.image_size % 128):
        raise UsageError(f"--image-size {args.image_size} must be a positive multiple of 128")
    if args.vector_lanes and args.vector_lanes not in (2, 4, 8, 16, 32):
        raise UsageError(f"--vector-lanes {args.vector_lanes} must be 2, 4, 8, 16 or 32")
    host = host_for(cfg)
    if args.host_model is not None:
        try:
            host = HostModel.load(args.host_model)
        except (OSError, ValueError) as e:
            raise CommandError(f"host model: {e}") from None
    return cfg, host


def object_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise UsageError(f"--objects {text!r}: a comma-separated list of positive object counts (e.g. 1,3,8)")
    return counts


def compute(args):
    from sw.perf.profile import DEFAULT_OBJECTS, profile
    cfg, host = resolve(args)
    objects = object_counts(args.objects) if getattr(args, "objects", None) else DEFAULT_OBJECTS
    return profile(args.model, cfg, image_size=args.image_size, video=args.video, host=host,
                   assume_vector_lanes=args.vector_lanes, objects=objects)


def run(args) -> int:
    from sw.outputs import check_output_dir
    check_output_dir(args.out)
    prof = compute(args)
    print(prof.table(layers=not args.totals_only))
    js, png = prof.write(args.out)
    print(f"profiled in {prof.wall_s:.1f} s -> {js}, {png}")
    return 0
