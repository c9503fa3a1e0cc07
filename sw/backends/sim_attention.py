"""The attention engine in the sim backend: bit-exact state machine and cycle model.

Mirrors hw/attention/engine.py: per query row the state (m, l, alpha, O) of the tile of
R rows the engine holds; STEP reads S rows from the accumulator scratchpad and V
entries, NORM writes O / l into accumulator rows. The arithmetic is
golden_model.intattn's step functions (so the result equals intattn.attention with
key_tile = C).
"""
from __future__ import annotations

import numpy as np

from golden_model import intattn as A
from hw import isa

# Cycle model of the RTL FSM (calibrated against Verilator runs, tests/test_attention_overlay.py).
SOFTMAX_LATENCY = 9       # acc read + OnlineSoftmax.LATENCY + state write
PV_LATENCY = 4            # V read, array entry, stage A/B
NORM_ROW = 20             # per query row: reciprocal (18 division steps) and hand-over
NORM_LATENCY = 4


class AttentionModel:
    def __init__(self, cfg):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        self.v = np.zeros((isa.scratchpad_depth(cfg, "V"), C), np.int8)
        S = cfg.attn_q_slots
        self.m = np.full((S, R), A.M_INIT, np.int64)         # per (slot, row): the RTL's state memory
        self.l = np.zeros((S, R), np.int64)
        self.o = np.zeros((S, R, cfg.attn_max_dim), np.int64)

    def load_v(self, sp, n, raw):
        idx = (sp + np.arange(n)) % len(self.v)
        self.v[idx] = raw.view(np.int8).reshape(n, self.cfg.cols)

    def run(self, d, acc) -> int:
        """Execute one ATTENTION descriptor on `acc` (the accumulator scratchpad); return its cycles."""
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        mode = d["target"] & 1                     # the engine decodes one bit (the host refuses others)
        slot = d["slot"] % cfg.attn_q_slots        # (the host refuses slots past the engine's)
        if mode == isa.ATTN_MODES["STEP"]:
            rows = (d["sp_addr"] + np.arange(R)) % cfg.acc_depth
            s = acc[rows][:, :d["count"]]
            mult, shift = d["param_addr"], d["stride"] & 63
            x = A.scores_log2(s, mult, shift)
            first = not d["accumulate"]
            m_old = np.full(R, A.M_INIT, np.int64) if first else self.m[slot]
            m_new = np.maximum(m_old, x.max(axis=1))
            p = A.exp2fix(m_new[:, None] - x)
            alpha = A.exp2fix(m_new - m_old)
            dp = (d["k_last"] + 1) * C
            vt = self.v[(d["b_base"] + np.arange(dp)) % len(self.v)][:, :d["count"]]     # (dp, keys)
            pv = (p.astype(np.float64) @ vt.T.astype(np.float64)).astype(np.int64)      # (R, dp)
            l_old = np.zeros(R, np.int64) if first else self.l[slot]
            self.l[slot] = A.rescale(l_old, alpha) + p.sum(axis=1)
            o_old = self.o[slot, :, :dp]
            self.o[slot, :, :dp] = (0 if first else A.rescale(o_old, alpha[:, None])) + pv
            self.m[slot] = m_new
            return 2 * R + C + dp + SOFTMAX_LATENCY + PV_LATENCY
        else:
            c0, n = d["sp_addr"], d["count"]
            o = self.o[slot, :, c0 * C:(c0 + n) * C]
            t = A.normalise(o, self.l[slot])                                                   # (R, n * C)
            for c in range(n):
                rows = (d["acc_base"] + c * R + np.arange(R)) % cfg.acc_depth
                acc[rows] = t[:, c * C:(c + 1) * C]
            return R * (NORM_ROW + n) + NORM_LATENCY
