"""A dict that keeps only its most recently used entries: the host's memos (timed descriptor lists,
packed vector descriptors, checked lists) are bounded the same way."""
from __future__ import annotations

from collections import OrderedDict


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
