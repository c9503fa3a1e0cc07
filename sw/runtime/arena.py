"""The DDR arena: one region of device memory per session, carved into named buffers.

Allocator: first fit over an address-ordered free list, neighbours coalesced on free; long-lived
buffers (a session's loaded programs: `top=True`) are placed by last fit from the high end, so the
activations at the low end take the same addresses whenever the same calls repeat (a video's frames),
and programs relinked to them find their descriptors unchanged (sw.runtime.session).
Why not a buddy allocator: buffers are few (tens) and their sizes arbitrary (a 96 x 4096
int8 map, a 288 x 96 weight tile), so power-of-two blocks would waste up to half the
arena; first fit with coalescing keeps the waste to the alignment padding, and the
lifetimes are mostly stack-like (weights for the session, activations per chain step),
which first fit handles without fragmenting. Every buffer starts and ends on ALIGN
(4 KiB): the DMA's bursts may not cross a 4 KiB page, and a page-aligned buffer keeps
the compilers' in-buffer alignment (beats, 4 KiB rows) true at any address.

A view (`view`) names a part of a buffer as a buffer of its own, so a program binds that part
alone (several objects' rows of one engine output, each object's read by its own reader); it
reserves nothing, and the buffer it is part of stays allocated until it and every view of it are
freed, in any order. A view may start inside a page (at `align`, e.g. the DMA beat): the engines'
reads split their bursts at 4 KiB wherever they start, and a STORE's rows, which may not cross a
page, are checked against their addresses (sw.runtime.checks).
"""
from __future__ import annotations

from dataclasses import dataclass

ALIGN = 4096


class ArenaFull(MemoryError):
    """The arena cannot hold what was asked for; the message gives the sizes (nothing was written)."""


@dataclass(frozen=True)
class Buffer:
    name: str
    addr: int          # device (DDR byte) address
    size: int          # bytes asked for (the arena reserves it rounded up to ALIGN)

    @property
    def end(self) -> int:
        return self.addr + self.size


def aligned(n: int) -> int:
    """`n` bytes rounded up to ALIGN: what the arena reserves for a buffer of that size."""
    return -(-n // ALIGN) * ALIGN


class Arena:
    def __init__(self, base: int, size: int):
        if base % ALIGN:
            raise ValueError(f"arena base {base:#x} is not {ALIGN}-byte aligned")
        self.base, self.size = base, size // ALIGN * ALIGN
        self._free: list[tuple[int, int]] = [(base, self.size)]     # (addr, bytes), by address
        self.buffers: dict[str, Buffer] = {}
        self.views: dict[str, str] = {}          # view -> the buffer it is part of (view)
        self._viewed: dict[str, int] = {}        # buffer -> its live views
        self._dropped: set[str] = set()          # buffers freed while views of them live: freed with the last

    # ---------------------------------------------------------------- queries
    @property
    def free_bytes(self) -> int:
        return sum(n for _, n in self._free)

    @property
    def largest_free(self) -> int:
        return max((n for _, n in self._free), default=0)

    def __contains__(self, name: str) -> bool:
        return name in self.buffers

    def __getitem__(self, name: str) -> Buffer:
        return self.buffers[name]

    # ---------------------------------------------------------------- allocation
    def allocate(self, name: str, size: int) -> Buffer:
        return self.allocate_all({name: size})[name]

    def allocate_all(self, sizes: dict[str, int], top: bool = False) -> dict[str, Buffer]:
        """Allocate several buffers at once, or none: when they do not all fit, ArenaFull says
        what was asked and what is free before anything is allocated (so before any write).
        `top`: from the arena's high end down (the last fit), for buffers that live long (a session's
        loaded programs), so the short-lived ones (activations, from the low end) sit at the same
        addresses whenever the same calls repeat, whatever programs were loaded or dropped meanwhile."""
        for name, size in sizes.items():
            if name in self.buffers:
                raise ValueError(f"buffer {name!r} is already allocated")
            if size < 1:
                raise ValueError(f"buffer {name!r}: size {size} must be positive")
        free = list(self._free)
        placed = {}
        for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):     # largest first: fewer failures
            at = (self._last_fit if top else self._first_fit)(free, aligned(size))
            if at is None:
                asked = sum(aligned(s) for s in sizes.values())
                detail = ", ".join(f"{n} {s:,}" for n, s in sizes.items())
                raise ArenaFull(f"DDR arena full: {asked:,} bytes asked ({detail}), {self.free_bytes:,} of "
                                f"{self.size:,} free (largest block {self.largest_free:,}); "
                                f"{len(self.buffers)} buffers live ({self._live_summary()})")
            placed[name] = Buffer(name, at, size)
        self._free = free
        self.buffers.update(placed)
        return placed

    @staticmethod
    def _first_fit(free: list[tuple[int, int]], size: int) -> int | None:
        for i, (addr, n) in enumerate(free):
            if n >= size:
                if n == size:
                    free.pop(i)
                else:
                    free[i] = (addr + size, n - size)
                return addr
        return None

    @staticmethod
    def _last_fit(free: list[tuple[int, int]], size: int) -> int | None:
        for i in range(len(free) - 1, -1, -1):
            addr, n = free[i]
            if n >= size:
                if n == size:
                    free.pop(i)
                else:
                    free[i] = (addr, n - size)
                return addr + n - size
        return None

    def view(self, name: str, of: str, offset: int, size: int, align: int = ALIGN) -> Buffer:
        """Bytes offset .. offset + size of buffer `of` (a view's: of the buffer it is part of) as buffer `name`;
        `offset` a multiple of `align` (by default a page, where every buffer starts)."""
        if name in self.buffers:
            raise ValueError(f"buffer {name!r} is already allocated")
        parent = self.buffers[of]
        if offset % align or offset < 0 or size < 1 or offset + size > parent.size:
            raise ValueError(f"view {name!r}: bytes {offset:,}..{offset + size:,} of {of!r} ({parent.size:,} bytes) "
                             f"must lie inside it and start on a multiple of {align} bytes")
        root = self.views.get(of, of)
        self.views[name] = root
        self._viewed[root] = self._viewed.get(root, 0) + 1
        self.buffers[name] = buf = Buffer(name, parent.addr + offset, size)
        return buf

    def free(self, name: str) -> None:
        """Give buffer `name` back; a view only drops its name, and a buffer views of which still live is given
        back with the last of them."""
        root = self.views.pop(name, None)
        if root is not None:
            del self.buffers[name]
            self._viewed[root] -= 1
            if self._viewed[root]:
                return
            del self._viewed[root]
            if root not in self._dropped:
                return
            self._dropped.discard(root)
            name = root
        elif self._viewed.get(name):
            if name not in self.buffers or name in self._dropped:
                raise KeyError(name)
            self._dropped.add(name)
            return
        buf = self.buffers.pop(name)
        addr, size = buf.addr, aligned(buf.size)
        free = self._free
        i = next((j for j, (a, _) in enumerate(free) if a > addr), len(free))
        free.insert(i, (addr, size))
        # Coalesce with the following and the preceding blocks.
        if i + 1 < len(free) and free[i][0] + free[i][1] == free[i + 1][0]:
            free[i] = (free[i][0], free[i][1] + free.pop(i + 1)[1])
        if i > 0 and free[i - 1][0] + free[i - 1][1] == free[i][0]:
            free[i - 1] = (free[i - 1][0], free[i - 1][1] + free.pop(i)[1])

    def _live_summary(self, most: int = 6) -> str:
        big = sorted(self.buffers.values(), key=lambda b: -b.size)
        text = ", ".join(f"{b.name} {b.size:,}" for b in big[:most])
        return text + (f", ... {len(big) - most} more" if len(big) > most else "") if big else "none"
