"""Injected AXI faults: what the DDR side of the overlay's AXI master answers wrongly, for any engine.

A fault strikes one channel of the overlay's AXI master, counted in its units from the START it
strikes, whichever engine's descriptor owns the transfer (nothing here knows the engines):

  read   data read beats (R, every id but the fetcher's): the n-th answers SLVERR or DECERR
  write  write beats (W): the burst of the n-th gets SLVERR or DECERR as its B response (data may be lost)
  fetch  descriptor fetch beats (R, the fetcher's id): the n-th answers SLVERR
  hang   the n-th data read beat never comes (falls back to the fetch when a run reads no data):
         STATUS.DONE never rises

The sim model (sw.backends.sim_model) and the rtl bench's AXI RAM (sim/benches/axi_faults.py) take
the same Fault. `runs`: how many STARTs it strikes (1: a transient fault, None: every START, a
persistent one). `beat`: which unit of the channel (None: drawn from `seed`, uniform over the run's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from hw import isa

#: kind -> (channel, AXI response; None: no response at all).
KINDS = {"read_slverr": ("read", "SLVERR"), "read_decerr": ("read", "DECERR"),
         "write_slverr": ("write", "SLVERR"), "write_decerr": ("write", "DECERR"),
         "fetch_error": ("fetch", "SLVERR"), "hang": ("read", None)}
#: The ERROR bit each channel's error response sets (hw.isa.ERROR_NAMES).
CHANNEL_ERROR = {"read": isa.ERROR_AXI_READ, "write": isa.ERROR_AXI_WRITE, "fetch": isa.ERROR_DESC_FETCH}


@dataclass
class Fault:
    kind: str
    beat: int | None = None
    runs: int | None = 1
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; choose one of {', '.join(KINDS)}")

    @property
    def channel(self) -> str:
        return KINDS[self.kind][0]

    @property
    def resp(self) -> str | None:
        return KINDS[self.kind][1]


def parse(text: str) -> Fault:
    """The CLI's form: KIND or KIND:persistent (e.g. read_decerr, hang:persistent)."""
    kind, _, mode = text.partition(":")
    if mode not in ("", "persistent"):
        raise ValueError(f"fault {text!r}: expected KIND or KIND:persistent")
    return Fault(kind, runs=None if mode else 1)


class Strike(Exception):
    """Raised inside the sim model's DMA when the armed fault fires (the run stops there)."""

    def __init__(self, channel: str, resp: str | None):
        super().__init__(channel, resp)
        self.channel, self.resp = channel, resp


class FaultPlan:
    """The sim model's side: the armed fault, and the DMA's counts of the current run per channel."""

    def __init__(self):
        self.fault: Fault | None = None
        self.counts = dict(read=0, write=0, fetch=0)
        self.target: tuple[str, int, str | None] | None = None    # this run's strike: (channel, unit, response)

    def arm(self, fault: Fault | None) -> None:
        self.fault = dataclasses.replace(fault) if fault is not None else None     # (its runs count down)

    def start(self) -> Fault | None:
        """A START: the fault striking this run (None: none), its remaining runs counted down."""
        self.counts = dict(read=0, write=0, fetch=0)
        self.target = None
        f = self.fault
        if f is None:
            return None
        if f.runs is not None:
            f.runs -= 1
            if f.runs <= 0:
                self.fault = None
        return f

    def aim(self, fault: Fault, totals: dict[str, int]) -> None:
        """Choose this run's unit: fault.beat, or a seeded draw over `totals` (the channel's units in a
        fault-free run); a hang on a run without data reads waits on a fetch instead."""
        channel = fault.channel
        if fault.kind == "hang" and totals["read"] == 0:
            channel = "fetch"
        n = totals[channel]
        if n == 0:
            self.target = None                          # nothing of that kind in this run: it passes
            return
        beat = fault.beat if fault.beat is not None else int(np.random.default_rng(fault.seed).integers(n))
        self.target = (channel, min(beat, n - 1), fault.resp)

    def transfer(self, channel: str, units: int) -> None:
        """`units` beats of `channel` in the current run pass; Strike when one of them is the target."""
        first = self.counts[channel]
        self.counts[channel] = first + units
        if self.target is not None and self.target[0] == channel and first <= self.target[1] < first + units:
            _, _, resp = self.target
            self.target = None
            raise Strike(channel, resp)
