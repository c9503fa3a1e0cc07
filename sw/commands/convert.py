"""`sam2fpga convert IN OUT.safetensors`: an official SAM 2 checkpoint to safetensors, without torch.

The .pt is read by golden_model.checkpoint's restricted unpickler (no code from the
file ever runs); dtypes are kept (bfloat16 stays bfloat16).
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("src", type=Path, help="official checkpoint (.pt zip) or .safetensors")
    parser.add_argument("dst", type=Path, help="output .safetensors file")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def run(args) -> int:
    from golden_model.checkpoint import CheckpointError, convert
    from sw import outputs
    from sw.cli import CommandError, UsageError
    if args.dst.suffix != ".safetensors":
        raise UsageError(f"output must end in .safetensors, got {args.dst}")
    if args.src.resolve() == args.dst.resolve():
        raise UsageError("input and output are the same file")
    if args.dst.exists() and not args.dst.is_dir() and not args.force:
        raise CommandError(f"{args.dst} exists (use --force to overwrite)")
    outputs.check_output_file(args.dst, "output", create_parent=False)
    try:
        tensors = convert(args.src, args.dst)
    except CheckpointError as e:
        raise CommandError(str(e)) from e
    n_params = sum(t.data.size for t in tensors.values())
    dtypes = sorted({t.dtype for t in tensors.values()})
    print(f"{args.dst}: {len(tensors)} tensors, {n_params:,} values ({', '.join(dtypes)}), "
          f"{args.dst.stat().st_size:,} bytes")
    return 0
