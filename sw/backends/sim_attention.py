"""The attention engine in the sim backend: bit-exact state machine and cycle model.

Mirrors hw/attention/engine.py: per (slot, query row) the state (m, l, O) of the
attn_q_slots tiles of R rows the engine holds; STEP(slot) reads S rows from the
accumulator scratchpad and V entries, NORM(slot) writes O / l into accumulator rows. The arithmetic is
golden_model.intattn's step functions (so the result equals intattn.attention with
key_tile = C).
"""
from __future__ import annotations

import numpy as np

from golden_model import intattn as A
from hw import isa
from hw.limits import softmax_latency

# Cycle model of the RTL (hw/attention/engine.py), calibrated against it cycle for cycle
# (tests/test_attention_engine.py) and against Verilator runs of the overlay (tests/test_attention_overlay.py).
# A STEP: the front takes the command (IDLE), waits for its bank (WAIT), runs the softmax phase
# (R rows, SOFTMAX_LATENCY), hands the bank to the P V array when the previous tile's last channel
# issues (HANDOVER); the P V array streams d_pad channels, and the step is done when the last row's
# last channel is written (PV_TAIL after the array's R + C skew). So back-to-back steps cost d_pad each.
SOFTMAX_READ = 1          # SOFTMAX start to HANDOVER = R + SOFTMAX_READ (acc/state read) + the softmax's latency
PV_TAIL = 3               # stages A-C (O read, rescale product, round + add + write) after the array's R + C
NORM_ROW = 20             # per query row: reciprocal (18 division steps) and hand-over; then the row's chunks x G
                          # lane groups, one a cycle (G = cols / norm_lanes: the lanes share G x fewer multipliers,
                          # and the O memories give norm_lanes channels a cycle)
NORM_LATENCY = 4          # NORM start to done = R x (NORM_ROW + chunks x G) + NORM_LATENCY ...
NORM_AGAIN = 1            # ... + 1 once the normaliser has run since reset (it drops the last row's reciprocal first)


def pv_lut_delay(cfg) -> int:
    """Cycles the P V array's last row adds to its R + C: 1 when it is a LUT row (cfg.attn_pv_lut_rows: its
    product register, hw/attention/pv_array.py), the engine's STEP done then a cycle later."""
    return int(cfg.attn_pv_lut_rows > 0)


class AttentionModel:
    def __init__(self, cfg):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        self.v = np.zeros((isa.scratchpad_depth(cfg, "V"), C), np.int8)
        S = cfg.attn_q_slots
        self.m = np.full((S, R), A.M_INIT, np.int64)         # per (slot, row): the RTL's state memory
        self.l = np.zeros((S, R), np.int64)
        self.o = np.zeros((S, R, cfg.attn_max_dim), np.int64)
        self.normed = False           # a NORM ran since reset (the normaliser keeps its last reciprocal)
        self.reset_timing()

    def reset_timing(self):
        """The engine idle: both banks free, nothing in the P V array (a new run)."""
        self.front_idle = 0           # first cycle the front (IDLE) takes a command
        self.bank_done = [-2, -2]     # each bank's last done cycle
        self.bank = 0                 # the bank the next STEP fills
        self.handover = -10 ** 9      # last HANDOVER cycle
        self.pv_len = 0               # its d_pad: the next HANDOVER is at least this much later

    def timing_key(self, t: int) -> tuple:
        """The timing state relative to cycle t, for a caller whose commands all come at t or later: a
        time schedule() only compares with such a command's (front_idle, bank_done, handover + pv_len)
        counts from t if later, as t if not (sw.backends.cycles remembers a run of descriptors by it)."""
        return (max(self.front_idle, t) - t, max(self.bank_done[0], t) - t, max(self.bank_done[1], t) - t,
                self.bank, max(self.handover, t - self.pv_len) - t, self.pv_len, self.normed)

    def timing_at(self, t: int) -> tuple:
        """The timing state with its times relative to cycle t (set_timing_at restores it shifted)."""
        return (self.front_idle - t, self.bank_done[0] - t, self.bank_done[1] - t, self.bank, self.handover - t,
                self.pv_len, self.normed)

    def set_timing_at(self, state: tuple, t: int) -> None:
        fi, b0, b1, self.bank, h, self.pv_len, self.normed = state
        self.front_idle, self.bank_done, self.handover = fi + t, [b0 + t, b1 + t], h + t

    def schedule(self, d, t: int) -> tuple[int, int]:
        """Cycles of one ATTENTION descriptor offered at cycle t: (taken, done)."""
        R, C = self.cfg.rows, self.cfg.cols
        a = max(t, self.front_idle)
        if d["target"] & 1 == isa.ATTN_MODES["STEP"]:
            b = self.bank
            s0 = max(a + 2, self.bank_done[b] + 2)                    # WAIT sees the bank free, SOFTMAX
            h = max(s0 + R + SOFTMAX_READ + softmax_latency(C), self.handover + self.pv_len)
            dp = (d["k_last"] + 1) * C
            done = h + dp + R + C + pv_lut_delay(self.cfg) + PV_TAIL
            self.bank_done[b], self.bank, self.handover, self.pv_len = done, 1 - b, h, dp
            self.front_idle = h + 1
        else:
            n0 = max(a + 1, max(self.bank_done) + 1)                  # WAIT sees everything done
            g = C // self.cfg.norm_lanes
            done = (n0 + 1 + R * (NORM_ROW + d["count"] * g) + NORM_LATENCY
                    + (NORM_AGAIN if self.normed else 0))
            self.normed = True
            self.front_idle = done + 1
        return a, done

    def load_v(self, sp, n, raw):
        idx = (sp + np.arange(n)) % len(self.v)
        self.v[idx] = raw.view(np.int8).reshape(n, self.cfg.cols)

    def run(self, d, acc) -> None:
        """Execute one ATTENTION descriptor on `acc` (the accumulator scratchpad)."""
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
        else:
            c0, n = d["sp_addr"], d["count"]
            o = self.o[slot, :, c0 * C:(c0 + n) * C]
            t = A.normalise(o, self.l[slot])                                                   # (R, n * C)
            for c in range(n):
                rows = (d["acc_base"] + c * R + np.arange(R)) % cfg.acc_depth
                acc[rows] = t[:, c * C:(c + 1) * C]
