"""A session: one backend, one DDR arena on it, programs loaded into named buffers.

    s = Session(open_backend("sim", cfg))
    s.buffer("x", nbytes)                                   # an activation living in DDR
    p = s.load(prog, "proj", bind={"in": "x"})              # descriptors + weights written once
    p.write("in", data); p.run(); p.read("out")             # per run: only what the host gives or takes
    s.traffic                                               # host <-> DDR bytes so far

`load` allocates every region of the program that is not bound to an existing buffer (all
at once: ArenaFull names the sizes before anything is written), links the descriptors to the
buffers' addresses (sw.runtime.program.link), checks every access against the buffer table
(sw.runtime.checks), and writes the descriptors and the weights. A loaded program runs again and
again on new inputs without recompiling or rewriting them; `rebind` moves its bound regions to other
buffers, writing the descriptors that changed, and keeps a descriptor list per placement of its bound
buffers that recurs (their addresses: one bound to pinned buffers, `pin`, a memory bank's slots read in
turn, one per slot placement; any other one when a placement comes back, as a video's activations
alternate between two placements while a buffer outlives a frame), so a placement met again writes and
links nothing. `relinks` counts the rebinds that linked a list again.

A run the overlay reports an error for, or that does not finish in time (AcceleratorError; the
backend has read the registers and soft-reset the overlay), is retried once, whole (every START of
the program from the first: the reset cleared the scratchpads); a transient fault so costs one
retry and is logged in `Session.recoveries`. A second failure raises one AcceleratorError naming
the program (and the frame, when the caller passes one).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from hw import isa
from sw.engines import engine_of_kind
from sw.lru import Lru
from sw.runtime.checks import check_descriptors
from sw.runtime.arena import Arena, ArenaFull, Buffer
from sw.runtime.backend import DDR_BASE, AcceleratorError, Backend
from sw.runtime.program import link_words, with_fields


#: Descriptor lists a program keeps for each placement of its pinned buffers (one where it binds none): a
#: video frame's activations take one of two placements while a buffer outlives a frame (the predictor's feature
#: cache of 2 keeps frame t - 1's features while frame t's are made, so frame t's land where t - 2's were).
ALTERNATES = 2


@dataclass
class RunStats:
    backend: str
    cycles: int
    macs: int
    array_macs: int
    wall_s: float          # rtl: simulation only (no Verilator build / cocotb start-up)
    descriptors: int
    engine: str = "gemm"   # convolutions: which route ran it (sw/compile/routes.py)

    @property
    def utilisation(self) -> float:
        return self.macs / (self.cycles * self.array_macs) if self.cycles else 0.0

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.wall_s if self.wall_s else 0.0


def program_runs(prog, count: int, whole: bool = False) -> list[tuple[int, int]]:
    """(first descriptor, count) per START: the compiled program's runs (sw.compile.linear.split_runs), or
    one run of all `count` descriptors when it has none or `whole` (descriptors other than the compiled ones)."""
    return [(0, count)] if whole else getattr(prog, "runs", None) or [(0, count)]


class Session:
    def __init__(self, backend: Backend):
        self.backend, self.cfg = backend, backend.cfg
        base = max(backend.ddr_base, DDR_BASE)       # sim, rtl: the low MiB stays unused (address 0 is no buffer)
        self.arena = Arena(base, backend.ddr_base + backend.ddr_bytes - base)
        self.recoveries: list[str] = []      # faults a retry recovered from, one line each
        self._checked = Lru(keep=1024)   # (bytes digest, buffer table, runs) of lists that passed the checks
        self.pinned: set[str] = set()    # buffers read in turn for the session (pin): a memory bank's slots
        self.placements = 1              # placements of pinned buffers a program bound to them meets in turn (pin)
        self.relinks = 0                 # rebinds that linked a descriptor list again (not a kept one's placement)
        self.links = 0                   # descriptor lists linked (loads and relinks)
        self.checks = 0                  # of which checked (the rest passed the same checks before: _checked)
        self._views = 0                  # views made (view): their names' numbers

    @property
    def traffic(self):
        return self.backend.traffic

    def buffer(self, name: str, size: int, *, zero: bool = True, top: bool = False) -> Buffer:
        """A named buffer of the session (an activation, a scratch area). `zero`: cleared once now
        (feature maps keep zero margins that convolutions read as padding). `top`: one kept for the session,
        placed from the arena's high end with the programs (Arena.allocate_all), so the activations of a call
        that repeats take the addresses they had before it was made."""
        buf = self.arena.allocate_all({name: size}, top=top)[name]
        if zero:
            self.backend.write(buf.addr, np.zeros(size, np.uint8))
        return buf

    def free(self, name: str) -> None:
        self.arena.free(name)
        self.pinned.discard(name)

    def view(self, of: str, offset: int, size: int, name: str | None = None) -> str:
        """Bytes offset .. offset + size of buffer `of` as a buffer of its own (Arena.view), which a program binds
        alone: its name (`name`, else a new one). `offset` a multiple of the DMA beat. Freed like any buffer; `of`
        lives until it and its views are freed."""
        if name is None:
            self._views += 1
            name = f"{of}[{offset}:{offset + size}]#{self._views}"
        self.arena.view(name, of, offset, size, align=self.cfg.beat_bytes)
        return name

    def pin(self, names, placements: int) -> None:
        """Mark buffers `names` as read in turn by the same programs for the whole session (a memory bank's ring
        slots: a reader's segments move to other slots each frame), in at most `placements` placements that
        recur (a ring of n slots taken in turn repeats its placements every <= n frames). A loaded program
        bound to pinned buffers keeps one descriptor list per placement of them, up to `placements`
        (LoadedProgram.rebind; ALTERNATES times as many where its other buffers alternate too): once each has been
        met, relinking it to a recurring placement writes nothing."""
        self.pinned.update(names)
        self.placements = max(self.placements, placements)

    def load(self, prog, name: str, bind: dict[str, str] | None = None, descriptors: list[dict] | None = None
             ) -> "LoadedProgram":
        """Place `prog` in the arena under `name`: region r in buffer bind[r] when bound, else in a new
        buffer "name.r". Writes the descriptors and every region that is not an input or output
        (weights; scratch and unbound outputs zeroed). `descriptors`: numeric fields to use instead of
        the compiled ones (their addresses still bind like the program's)."""
        bind = dict(bind or {})
        self._check_bind(name, prog, bind)
        own = {region: f"{name}.{region}" for region in prog.regions if region not in bind}
        placed = self.arena.allocate_all({own[r]: prog.regions[r][1] for r in own}, top=True)
        names = {**bind, **own}
        try:
            addresses, raw = self._link(prog, names, descriptors)
        except Exception:
            for buf in placed:
                self.arena.free(buf)
            raise
        loaded = LoadedProgram(self, prog, name, names, addresses, raw.size // isa.DESCRIPTOR_BYTES, list(placed),
                               edited=descriptors is not None)
        loaded.placement = loaded.placement_of(bind)
        loaded.linked = None if descriptors is not None else self._linked(prog, names)
        self.backend.write(addresses["descriptors"], raw)
        for region in own:
            if prog.ROLES.get(region) in ("weight", "output", "scratch"):
                loaded.write(region, prog.region(region))
        return loaded

    def _check_bind(self, name: str, prog, bind: dict[str, str]) -> None:
        for region, buf in bind.items():
            if region not in prog.regions:
                raise ValueError(f"{name}: the program has no region {region!r} (regions: {', '.join(prog.regions)})")
            if buf not in self.arena:
                raise ValueError(f"{name}: region {region!r} bound to {buf!r}, which is not a buffer of the session")
            if self.arena[buf].size < prog.regions[region][1]:
                raise ValueError(f"{name}: region {region!r} needs {prog.regions[region][1]:,} bytes, buffer {buf!r} "
                                 f"holds {self.arena[buf].size:,}")

    def _linked(self, prog, names: dict[str, str]) -> tuple:
        """What linking `prog` into the buffers `names` makes bytes of, and what its checks see: the compiled
        descriptor list (the object: a compiler never changes a list it made), each region's buffer (address,
        size), the runs. Equal for two links: the same bytes, which passed the same checks."""
        table = tuple((r, self.arena[n].addr, self.arena[n].size) for r, n in names.items())
        return prog.symbolic, table, tuple(program_runs(prog, 0))

    def _link(self, prog, names: dict[str, str], descriptors=None) -> tuple[dict[str, int], np.ndarray]:
        """(region -> address, the descriptors' bytes) for `prog` with its regions in buffers `names`, every
        access checked against those buffers."""
        addresses = {r: self.arena[names[r]].addr for r in prog.regions}
        symbolic = prog.symbolic if descriptors is None else with_fields(prog.symbolic, descriptors)
        raw = link_words(symbolic, addresses)
        self.links += 1
        table = {r: (self.arena[n].addr, self.arena[n].size) for r, n in names.items()}
        runs = program_runs(prog, raw.size // isa.DESCRIPTOR_BYTES, descriptors is not None)   # counts restart per START
        # The checks are a function of the bytes, the buffer table and the runs: a program relinked to
        # buffers at the addresses it had before (a video's steady state) passed them already.
        key = (hashlib.blake2b(raw, digest_size=16).digest(), tuple(table.items()), tuple(runs))
        if self._checked.get(key):
            return addresses, raw
        self.checks += 1
        for first, count in runs:
            check_descriptors(self.cfg, raw[first * isa.DESCRIPTOR_BYTES:(first + count) * isa.DESCRIPTOR_BYTES],
                              table)
        self._checked.put(key, True)
        return addresses, raw

    def close(self) -> None:
        self.backend.close()


def _write_changed(backend, addr: int, raw: np.ndarray, old: np.ndarray | None) -> int:
    """Write descriptor bytes `raw` at `addr` where DDR holds `old` (the same list linked to the last buffers;
    None: unknown): only the runs of descriptors that differ (a relink moves a few regions: a memory bank's
    slots in turn leave the other regions' descriptors as they are). The bytes written."""
    if old is None or old.size != raw.size:
        backend.write(addr, raw)
        return raw.size
    d = isa.DESCRIPTOR_BYTES
    rows = raw.reshape(-1, d)
    changed = np.flatnonzero(np.any(rows != old.reshape(-1, d), axis=1))
    backend.write_rows(addr, rows, changed)
    return len(changed) * d


@dataclass
class LoadedProgram:
    session: Session
    prog: object
    name: str
    buffers: dict[str, str]            # region -> arena buffer name
    addresses: dict[str, int]          # region -> DDR address
    count: int                         # descriptors
    owned: list[str]                   # arena buffers this program allocated (freed with it; bound ones are not)
    edited: bool = False               # loaded with other descriptors than the compiled ones (one run, no fast job)
    last_run: RunStats | None = None
    linked: tuple | None = None        # Session._linked of the descriptors in DDR (None: edited ones)
    placement: tuple = ()              # where the bound buffers of the current descriptor list sit (placement_of)
    # the other placements' descriptor lists, least recently used first: placement -> (descriptors buffer,
    # linked, addresses) as the current list's buffers["descriptors"], linked, addresses (Session.pin)
    lists: dict = field(default_factory=dict)
    met: dict = field(default_factory=dict)     # placements met lately (a dict as an ordered set): which recur
    # (descriptor list, addresses dict, its linked bytes) of rebind's last link: the bytes DDR holds while that
    # list and that dict (the object) are current, the next rebind's `old` without linking them again
    relinked: tuple = (None, None, None)

    def owned_regions(self) -> list[str]:
        """The regions in buffers this program allocated (not bound to the caller's)."""
        return [r for r, buf in self.buffers.items() if buf in self.owned]

    def placement_of(self, bind: dict[str, str]) -> tuple:
        """Where bound regions `bind` (region -> buffer) sit, as the descriptors and their checks see them:
        ((region, address, size), ...), equal for two binds whose lists link alike."""
        buffers = self.session.arena.buffers
        return tuple(sorted((r, buffers[b].addr, buffers[b].size) for r, b in bind.items()))

    def rebind(self, bind: dict[str, str]) -> int:
        """Move the regions bound at load to other session buffers (the next call's activations): the
        descriptors relinked, checked and written again, the weights left in place. Returns the bytes
        written (0 when nothing moved, or the new buffers sit where the old ones did: the descriptors in
        DDR are already these, as a steady video frame's allocations repeat the last frame's). A program keeps a
        descriptor list per placement of its bound buffers that recurs (_use_list: those bound to pinned buffers,
        Session.pin, a memory bank's slots, which move every frame; the activations' two placements where a
        buffer outlives a frame): a placement met before finds its list as it left it."""
        s = self.session
        if self.edited or set(bind) != set(self.buffers) - set(self.owned_regions()):
            bound = sorted(set(self.buffers) - set(self.owned_regions()))
            raise ValueError(f"{self.name}: rebind moves the regions bound at load ({', '.join(bound)}), "
                             f"got {', '.join(bind)}")
        s._check_bind(self.name, self.prog, bind)
        names = {**self.buffers, **bind}
        if names == self.buffers:
            return 0
        placement = self.placement_of(bind)
        if placement != self.placement:
            self._use_list(placement, any(b in s.pinned for b in bind.values()))
            names["descriptors"] = self.buffers["descriptors"]
        linked = s._linked(self.prog, names)
        if self.linked is not None and linked[0] is not None and linked[0] is self.linked[0] \
                and linked[1:] == self.linked[1:]:
            # the same list in buffers of the same addresses and sizes: the bytes in DDR, checked then
            self.buffers = names
            return 0
        addresses, raw = s._link(self.prog, names)
        s.relinks += 1
        written = 0
        if addresses != self.addresses:
            same_list = self.linked is not None and linked[0] is not None and linked[0] is self.linked[0] \
                and addresses["descriptors"] == self.addresses["descriptors"]
            old = None
            if same_list:
                kept = self.relinked
                old = kept[2] if kept[0] is linked[0] and kept[1] is self.addresses else \
                    link_words(linked[0], self.addresses)
            written = _write_changed(s.backend, addresses["descriptors"], raw, old)
        self.buffers, self.addresses, self.linked = names, addresses, linked
        self.relinked = (linked[0], addresses, raw)
        return written

    def _use_list(self, placement: tuple, pinned: bool) -> None:
        """Make the descriptor list of `placement` current: the one kept for it; else a new one (written whole by
        rebind) when the placement recurs (it binds pinned buffers, or was met before) while the program has fewer
        lists than it meets placements in turn (ALTERNATES, times Session.placements when pinned) and the arena
        has room; else the least recently used one, relinked in place (rebind writes the descriptors that
        differ). The current list is kept for its placement."""
        s = self.session
        self.lists[self.placement] = (self.buffers["descriptors"], self.linked, self.addresses)
        self.met[self.placement] = True
        kept = self.lists.pop(placement, None)
        limit = ALTERNATES * (s.placements if pinned else 1)
        recurs = pinned or self.met.pop(placement, False)
        self.met[placement] = True                          # (most recent last: the oldest dropped past 2 x limit)
        while len(self.met) > 2 * limit:
            del self.met[next(iter(self.met))]
        if kept is None and recurs and len(self.lists) < limit:
            name = f"{self.name}.descriptors@{len(self.lists)}"
            try:
                s.arena.allocate_all({name: self.prog.regions["descriptors"][1]}, top=True)
                self.owned.append(name)
                kept = (name, None, {})
            except ArenaFull:       # no room for another list: relink one in place, as a program without lists
                pass
        if kept is None:
            kept = self.lists.pop(next(iter(self.lists)))
        self.buffers = {**self.buffers, "descriptors": kept[0]}
        self.linked, self.addresses, self.placement = kept[1], kept[2], placement

    def write(self, region: str, data) -> None:
        self.session.backend.write(self.addresses[region], data)

    def read(self, region: str) -> np.ndarray:
        return self.session.backend.read(self.addresses[region], self.prog.regions[region][1])

    def write_inputs(self) -> None:
        """The compiled input regions (the data the program was compiled with)."""
        for region, role in self.prog.ROLES.items():
            if role == "input" and region in self.prog.regions and self.buffers[region] in self.owned:
                self.write(region, self.prog.region(region))

    def describe(self, frame: int | None = None) -> str:
        kind = type(self.prog).__name__.removesuffix("Program").lower() or "linear"
        return f"program {self.name!r} ({kind})" + (f", frame {frame}" if frame is not None else "")

    def run(self, frame: int | None = None) -> RunStats:
        """The program's runs (_run_once); on an AcceleratorError (the overlay already reset) once more,
        whole. A second failure raises AcceleratorError naming the program and `frame` (when given)."""
        try:
            return self._run_once()
        except AcceleratorError as first:
            where = self.describe(frame)
            try:
                stats = self._run_once()
            except AcceleratorError as again:
                raise AcceleratorError(f"{where}: {again} (failed again after a soft reset and one retry)",
                                       again.regs, again.timed_out, self.name, frame) from None
            self.session.recoveries.append(f"{where}: {first}; retried after the reset: recovered")
            return stats

    def _run_once(self) -> RunStats:
        """Each of the program's runs (sw.compile.linear.split_runs), one START each; cycles and wall time summed.
        On the sim backend the first run is announced with the fast mode's job for the whole layer
        (sw.backends.fast: it reads and writes the regions at this program's addresses), the later
        runs only take their time."""
        from sw.backends import fast
        be = self.session.backend
        job = None if self.edited else fast.job(self.session.cfg, self.prog, self.addresses)
        cycles = wall = 0
        for i, (first, count) in enumerate(program_runs(self.prog, self.count, self.edited)):
            addr = self.addresses["descriptors"] + first * isa.DESCRIPTOR_BYTES
            if job is not None:
                be.expect(addr, count, job if i == 0 else None)
            t0 = time.monotonic()
            cycles += be.run(addr, count)
            wall += be.last_wall_s or time.monotonic() - t0
        prog = self.prog
        engine = engine_of_kind()[prog.op["kind"]]         # every compiler records its op's kind
        self.last_run = RunStats(be.name, int(cycles), prog.macs, getattr(prog, "array_macs", self.session.cfg.macs),
                                 wall, self.count, engine)
        return self.last_run

    def output(self) -> np.ndarray:
        """The program's result, read from its out buffer and unpacked (prog.unpack_out)."""
        return self.prog.unpack_out(self.read("out"))

    def free(self) -> None:
        for buf in self.owned:
            self.session.arena.free(buf)
        self.owned, self.lists, self.met = [], {}, {}
