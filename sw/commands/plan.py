"""`sam2fpga plan`: where each node of the int8 SAM 2 graph runs on a preset, and why.

    sam2fpga plan --model tiny --preset kv260
    sam2fpga plan --model tiny --preset pynq-z2 --video --vector-lanes 8

The rule (sw/compile/graph.py, docs/profile.md): layout nodes are DMA addressing; host-only nodes run on
the host; every other node runs on its engine when the preset has it and the compiler accepts the shape,
unless the host cost model says the host is faster.
"""
from __future__ import annotations

from sw.commands.profile import add_common, compute


def add_arguments(parser):
    add_common(parser)


def run(args) -> int:
    prof = compute(args)
    print(prof.header())
    print(f"{'node':44s} {'op':18s} {'on':9s} reason")
    counts: dict[str, int] = {}
    for p in prof.placements:
        counts[p.where] = counts.get(p.where, 0) + 1
        print(f"{p.layer.name:44s} {p.layer.op:18s} {p.where:9s} {p.reason}")
    print("nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    return 0
