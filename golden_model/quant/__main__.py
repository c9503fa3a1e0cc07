"""Print the int8 SAM 2 graph: `python -m golden_model.quant [tiny|small|...] [--image-size N]`.

One line per node (engine, op, output shape, MACs), totals per stage and engine, and the host
ops with their MACs and bytes (the table in docs/quantisation.md). Structure only: seeded random
weights, no calibration.
"""
import argparse

from golden_model.quant.builder import build_graph, random_model

p = argparse.ArgumentParser(prog="python -m golden_model.quant")
p.add_argument("model", nargs="?", default="tiny")
p.add_argument("--image-size", type=int)
a = p.parse_args()
g = build_graph(random_model(a.model, a.image_size))
print(g.summary())
print()
print(g.host_table())
