"""A quantised model as files written before the mask prompt path existed (for the strictness tests)."""
from __future__ import annotations

import copy

from golden_model.quant.builder import MASK_INPUT
from golden_model.quant.video import MASK_DOWNSAMPLE, MASK_PIX


def without_mask_path(qm):
    """A copy of `qm` without the mask prompt branch, MASK_PIX and their weights."""
    old = copy.copy(qm)
    g = old.graph = copy.copy(qm.graph)
    gone = [n for n in g.nodes if n.attrs.get("branch") or n.name == MASK_PIX]
    g.nodes = [n for n in g.nodes if n not in gone]
    used = {i for n in g.nodes for i in n.inputs}
    g.tensors = {k: v for k, v in g.tensors.items() if k != MASK_INPUT and k not in {n.outputs[0] for n in gone}}
    g.constants = {k: v for k, v in g.constants.items()
                   if k in used or not (k.startswith("sam_prompt_encoder.mask_downscaling") or k in MASK_DOWNSAMPLE)}
    g.meta = copy.deepcopy(g.meta)
    g.meta.get("video", {}).pop("mask_pix", None)
    old.params = {k: v for k, v in qm.params.items() if k not in {n.name for n in gone}}
    return old
