"""cocotb drivers for Amaranth `lib.stream` ports (`<name>__valid/ready/payload`).

Both ends take a `stall` probability so every bench exercises random ready/valid
stalls; payloads are plain ints (pack structs with `pack_fields`).

Timing discipline: signals are written just after a rising edge, the handshake
is sampled in ReadOnly of the same cycle (settled combinational values), and a
beat moves at the next rising edge when valid and ready were both high.
"""
from __future__ import annotations

import random

from cocotb.triggers import ReadOnly, RisingEdge


def pack_fields(fields: list[tuple[int, int]]) -> int:
    """Pack (value, width) pairs LSB-first, the way Amaranth lays out a data.Struct."""
    word, pos = 0, 0
    for value, width in fields:
        word |= (value & ((1 << width) - 1)) << pos
        pos += width
    return word


def to_signed(value: int, width: int) -> int:
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


class _StreamEnd:
    def __init__(self, dut, prefix: str, clk, stall: float, rng: random.Random):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.clk, self.stall, self.rng = clk, stall, rng


class StreamSource(_StreamEnd):
    """Drives valid/payload with random idle cycles; honours ready. Call `send` after a rising edge."""

    def __init__(self, dut, prefix, clk, *, stall=0.0, rng=None):
        super().__init__(dut, prefix, clk, stall, rng or random.Random(0))
        self.valid.value = 0

    async def send(self, items):
        for item in items:
            while self.rng.random() < self.stall:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = item
            while True:
                await ReadOnly()
                accepted = bool(self.ready.value)
                await RisingEdge(self.clk)
                if accepted:
                    break
        self.valid.value = 0


class StreamSink(_StreamEnd):
    """Drives ready with random stalls and collects `count` payloads (as unsigned ints)."""

    def __init__(self, dut, prefix, clk, *, stall=0.0, rng=None):
        super().__init__(dut, prefix, clk, stall, rng or random.Random(1))
        self.ready.value = 0

    async def receive(self, count: int) -> list[int]:
        items = []
        while len(items) < count:
            ready = int(self.rng.random() >= self.stall)
            self.ready.value = ready
            await ReadOnly()
            if ready and self.valid.value:
                items.append(int(self.payload.value))
            await RisingEdge(self.clk)
        self.ready.value = 0
        return items
