"""A dict that keeps only its most recently used entries: the host's memos (timed descriptor lists,
packed vector descriptors, checked lists) are bounded the same way; BytesMemo: results made of device
bytes, used again while those bytes are unchanged."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class Lru(OrderedDict):
    """At most `keep` entries; `get` and `put` mark an entry used, `put` drops the least recently used."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def get(self, key, default=None):
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.keep:
            self.popitem(last=False)


class BytesMemo:
    """What is made of device bytes that rarely change between uses (the sim backend's: a layer's weights as
    a float matrix, its output stage, a descriptor list's decoded fields), kept with a copy of those bytes
    and used again only while the memory still holds exactly them (compared on every use, so the result is
    the one made from the bytes now there). Bounded by the bytes kept (copies and results: `nbytes`
    where it has one), least recently used dropped first."""

    def __init__(self, budget: int):
        self.budget, self.used, self._kept = budget, 0, {}

    def get(self, ddr, addr: int, n: int, stride: int, used: int, how, make):
        """make(raw) of the n x `used` bytes (uint8) at addr, `stride` apart (tiles()), remembered per (place,
        how)."""
        raw = ddr[addr:addr + n * stride].reshape(n, stride)[:, :used]
        key = (addr, n, stride, used, how)
        kept = self._kept.pop(key, None)
        if kept is not None and same_bytes(kept[0], raw):
            self._kept[key] = kept                            # most recently used last
            return kept[1]
        if kept is not None:
            self.used -= kept[2]
        value = make(raw)
        size = raw.size + getattr(value, "nbytes", 0)
        if size <= self.budget:
            self._kept[key] = (raw.copy(), value, size)
            self.used += size
            while self.used > self.budget:
                self.used -= self._kept.pop(next(iter(self._kept)))[2]
        return value


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal uint8 arrays (rows contiguous, any row stride), compared 8 bytes at a time where rows divide."""
    if a.shape != b.shape:
        return False
    if a.ndim and a.shape[-1] % 8 == 0:
        a, b = a.view(np.uint64), b.view(np.uint64)
    return bool((a == b).all())
