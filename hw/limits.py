"""Limits and latencies the host (compiler, checks, sim backend) shares with the hardware.

Plain Python (no Amaranth), like hw/isa.py and hw/config.py: the engines in hw/ import these
and so does sw/, which must run on the board's ARM without Amaranth.
"""
from __future__ import annotations

# ---------------------------------------------------------------- requantiser (hw/requant.py)
REQUANT_LATENCY = 7            # its pipeline stages: the store's and the depthwise engine's cycles count them


# ---------------------------------------------------------------- convolution engine (hw/conv/im2col.py)
MAX_KERNEL = 7                 # the largest K x K kernel the im2col loader gathers


def im2col_row_beats(cfg, k: int, stride: int, offset: int) -> int:
    """AXI beats one IM2COL input row span takes (the hardware computes the same)."""
    return -(-(offset + (cfg.cols - 1) * stride + k) // cfg.beat_bytes)


# ---------------------------------------------------------------- depthwise engine (hw/conv/depthwise.py)
DW_K_MAX = 7                   # each lane has DW_K_MAX x DW_K_MAX multipliers
DW_ROW_SLOTS = 16              # line-buffer row slots: DW_K_MAX rows read, the rest streaming in


# ---------------------------------------------------------------- attention engine (hw/attention/softmax.py)
def softmax_tree_stages(lanes: int) -> int:
    """Register stages of the online softmax's max tree: m and N lanes, two compare levels per stage."""
    return -(-(lanes).bit_length() // 2)          # ceil(ceil_log2(lanes + 1) / 2)


def softmax_latency(lanes: int) -> int:
    """OnlineSoftmax's latency (cycles) for `lanes` lanes (the sim backend's cycle model uses it)."""
    return 11 + softmax_tree_stages(lanes)
