"""Print the int8 SAM 2 graph: `python -m golden_model.quant [tiny|small|...] [--image-size N] [--video]`.

One line per node (engine, op, output shape, MACs), totals per stage and engine, and the host
ops with their MACs and bytes (the table in docs/quantisation.md). Structure only: seeded random
weights, no calibration. --video adds the memory encoder and memory attention (MACs at a full bank:
7 memory frames + 16 object pointers).
"""
import argparse

from golden_model.quant.builder import build_graph, random_model

p = argparse.ArgumentParser(prog="python -m golden_model.quant")
p.add_argument("model", nargs="?", default="tiny")
p.add_argument("--image-size", type=int)
p.add_argument("--video", action="store_true", help="with the video part (golden_model/quant/video.py)")
a = p.parse_args()
if a.video:
    from golden_model.quant.video import build_full_graph
    g = build_full_graph(random_model(a.model, a.image_size))
else:
    g = build_graph(random_model(a.model, a.image_size))
print(g.summary())
print()
print(g.host_table())
