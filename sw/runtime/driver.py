"""The driver: layer calls on NumPy arrays over one session (sw.runtime) on any backend.

    drv = Driver(preset("kv260"), backend="sim")
    y = drv.linear(a, b, bias, multiplier, shift, relu=True)   # int8 (M, N)
    drv.last_run.cycles, drv.last_run.utilisation

Each call compiles a program, loads it into the session's arena (its buffers bound and its
descriptors checked there), writes its inputs, runs it through the backend's register
protocol (sw.runtime.backend.Backend.run) and reads its output back. A run that does not
finish within `timeout_s` (sim, pynq: wall clock; rtl: `timeout_cycles`) is a hung
accelerator: the backend reads the registers, soft-resets the overlay and raises
AcceleratorError; the session retries the program once (sw.runtime.session), so only a fault that
comes back reaches the caller, naming the program and `drv.frame` (set it per frame). Chains whose
activations stay in DDR use the session directly (sw.runtime.chain).
"""
from __future__ import annotations

import hashlib
import itertools
import weakref

import numpy as np

from sw.compile.linear import compile_linear
from sw.lru import same_bytes
from sw.runtime.arena import ArenaFull
from sw.runtime.backend import (BACKENDS, DDR_BASE, DEFAULT_DDR_BYTES, AcceleratorError,  # noqa: F401
                                describe_error, open_backend)
from sw.runtime.compile_cache import CompileCache
from sw.runtime.session import RunStats, Session  # noqa: F401  (the driver's public names)


class Driver:
    def __init__(self, cfg, backend: str = "sim", *, timeout_s: float = 10.0, timeout_cycles: int = 50_000_000,
                 ddr_bytes: int = DEFAULT_DDR_BYTES, stall: float = 0.0, waves: bool | None = None,
                 bitfile: str | None = None, sim_mode: str = "fast", program_store=None):
        """`bitfile`: pynq backend on a board, the overlay's .bit (its .hwh beside it);
        None runs the real pynq library on the simulated device. `sim_mode`: the sim backend's
        "fast" (whole layers in NumPy) or "checked" (descriptor by descriptor) mode, same bits and cycles.
        `program_store`: a sw.runtime.program_store.ProgramStore the compile cache loads graph nodes' programs
        from instead of compiling them (and stores those it compiles); None (the library's default: a library
        call writes nothing to disk unless asked) compiles them all. The CLI's commands use one by default."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.cfg, self.backend = cfg, backend
        self.ddr_bytes = ddr_bytes
        self._options = dict(ddr_bytes=ddr_bytes, timeout_s=timeout_s, timeout_cycles=timeout_cycles, stall=stall,
                             waves=waves, bitfile=bitfile, sim_mode=sim_mode)
        self.last_run: RunStats | None = None
        self.last_programs: list = []
        self.frame: int | None = None        # named in errors (a caller running a video sets it per frame)
        self._session: Session | None = None
        self._names = itertools.count()
        self._cache: dict = {}               # key -> LoadedProgram, least recently used first
        self._reused: set = set()            # keys of kept programs run again since their load
        # (owner, kind) -> (its last program's regions, their bytes, key, a weak reference to that program)
        self._keys: dict = {}
        self.program_bytes = 0               # descriptors and weights written by loads (host -> DDR), so far
        self.compiles = CompileCache(store=program_store)   # graph nodes' programs, reused while their arguments repeat
        if program_store is not None:
            program_store.load_timings(cfg)     # the cycle model's outcomes of the programs it keeps

    # Where a program's image sits when it is run whole (sw.backends.rtl.run_images, tests); the
    # session binds each region to its own buffer wherever the arena has room.
    BUFFER_BASE = DDR_BASE

    @property
    def session(self) -> Session:
        """The driver's session (the backend opens on first use: the rtl one starts Verilator)."""
        if self._session is None:
            self._session = Session(open_backend(self.backend, self.cfg, **self._options))
        return self._session

    @property
    def device(self):
        """The backend object (registers, DDR, traffic counters)."""
        return self.session.backend

    def close(self) -> None:
        if self.compiles.store is not None:
            self.compiles.store.flush()          # (its background writer's entries and the cycle model's outcomes)
        if self._session is not None:
            self._session.close()
            self._session = None
            self._cache, self._reused, self._keys = {}, set(), {}
            self.compiles.clear()

    def compile(self, a, b, bias=None, multiplier=None, shift=None, *, relu=False, out_int32=False, lut=None,
                residual=None, add=None, a_rows=False):
        base = self._buffer_base()
        prog = compile_linear(self.cfg, a, b, bias, multiplier, shift, relu=relu, out_int32=out_int32, lut=lut,
                              residual=residual, add=add, a_rows=a_rows, base_addr=base,
                              max_ddr_bytes=self.ddr_bytes - base)
        return prog

    def linear(self, a, b, bias=None, multiplier=None, shift=None, *, relu=False, out_int32=False,
               lut=None, residual=None, add=None, keep: bool = True) -> np.ndarray:
        """`lut`: a golden_model.intvec.LutParams fused into the GEMM store (store_lut overlays): the result is
        golden_model.intvec.linear_lut's, the table applied to the requantised int8 with no extra DDR pass.
        `residual` (M x N int8) with `add` (golden_model.intvec.AddParams): the residual add fused into the
        store (store_add overlays): golden_model.intvec.linear_add's result, add(result, residual, add).
        `keep=False`: B changes every call (the mask product's per-frame hypernetwork output), so the
        program is freed after its run, not kept in the cache, where it would never be reused."""
        prog = self.compile(a, b, bias, multiplier, shift, relu=relu, out_int32=out_int32, lut=lut,
                            residual=residual, add=add)
        return prog.output(self.run(prog, keep=keep))

    # Convolutions (sw/compile/routes.py routes each one to an engine): int8 (C, H, W) feature maps.
    def conv2d(self, x, w, bias=None, multiplier=None, shift=None, *, stride=1, padding=0, relu=False,
               out_int32=False) -> np.ndarray:
        from sw.compile import routes
        return routes.conv2d(self, x, w, bias, multiplier, shift, stride=stride, padding=padding, relu=relu,
                             out_int32=out_int32)

    def depthwise_conv2d(self, x, w, bias=None, multiplier=None, shift=None, *, stride=1, padding=0, relu=False,
                         out_int32=False) -> np.ndarray:
        from sw.compile import routes
        return routes.depthwise_conv2d(self, x, w, bias, multiplier, shift, stride=stride, padding=padding,
                                       relu=relu, out_int32=out_int32)

    def conv_transpose2d(self, x, w, bias=None, multiplier=None, shift=None, *, stride=2, padding=0, relu=False,
                         out_int32=False) -> np.ndarray:
        from sw.compile import routes
        return routes.conv_transpose2d(self, x, w, bias, multiplier, shift, stride=stride, padding=padding,
                                       relu=relu, out_int32=out_int32)

    def attention(self, q, k, v, quant, *, out_int32: bool = False) -> np.ndarray:
        """Attention on the overlay: q (Lq, d) or (H, Lq, d), k and v (Lk, d) or (H, Lk, d), int8;
        `quant` a golden_model.intattn.AttentionQuant. Returns int8 (or int32 O / l) of q's shape,
        bit-identical to intattn.attention(..., key_tile=cfg.cols) per head. Calls too big for one
        program run as several (sw.compile.attention.compile_attention_calls); `last_run` sums
        them and `last_programs` lists them."""
        q3 = np.asarray(q)[None] if np.asarray(q).ndim == 2 else np.asarray(q)
        out, runs, self.last_programs = None, [], []
        for h, q0, q1, prog in self.attention_programs(q, k, v, quant, out_int32=out_int32):
            y = prog.output(self.run(prog))
            runs.append(self.last_run)
            self.last_programs.append(prog)
            if h is None:
                out = y
                break
            if out is None:
                out = np.zeros(q3.shape, y.dtype)
            out[h, q0:q1] = y[0]
        if len(runs) > 1:
            self.last_run = RunStats(self.backend, sum(r.cycles for r in runs), sum(r.macs for r in runs),
                                     runs[0].array_macs, sum(r.wall_s for r in runs),
                                     sum(r.descriptors for r in runs))
        return out[0] if np.asarray(q).ndim == 2 else out

    def attention_programs(self, q, k, v, quant, *, out_int32: bool = False, rows=None):
        """The programs of an attention call (sw.compile.attention.compile_attention_calls: (head, q0, q1,
        program), one unless it is too big); `rows` (TokenRows): Q, K, V and out as token rows, to run
        bound to the buffers holding them (run_bound; sw.runtime.graph_exec)."""
        from sw.compile.attention import compile_attention_calls
        base = self._buffer_base()
        return compile_attention_calls(self.cfg, q, k, v, quant, out_int32=out_int32, base_addr=base,
                                       max_ddr_bytes=self.ddr_bytes - base, rows=rows)

    def vector(self, op: str, x, p=None, *, b=None, end_x: int | None = None) -> np.ndarray:
        """An element-wise op of int8 SAM 2 on the vector engine, bit-identical to golden_model.intvec:
        op "layernorm", "lut", "add" (b: (rows, D) or (D,), repeated over x's rows), "rescale", "rope"
        (end_x: axial tables) on x (rows, D); "maxpool", "upsample" on x (H, W, C). `p`: the op's
        intvec parameters (none for maxpool and upsample). Returns int8 of the op's output shape."""
        from sw.compile.vector import compile_vector
        base = self._buffer_base()
        prog = compile_vector(self.cfg, op, x, p, b=b, end_x=end_x, base_addr=base,
                              max_ddr_bytes=self.ddr_bytes - base)
        self.last_programs = [prog]
        return prog.output(self.run(prog))

    #: Programs kept loaded (descriptors and weights in DDR) for calls that repeat a layer (a GraphExecutor
    #: keeps every one while the arena has room: math.inf).
    CACHED_PROGRAMS = 16

    def run(self, prog, descriptors: list[dict] | None = None, keep: bool = True) -> np.ndarray:
        """Run a compiled program on its inputs; return its image with the out region as the overlay
        left it (prog.output(image) unpacks it). A program equal to one run before but for its inputs
        (same descriptors, same weights) reuses that one's buffers: only its inputs are written.
        `descriptors`: numeric fields to run instead of the compiled ones (tests); they are checked
        against the buffer table like any program (and never cached); `keep=False`: not cached either."""
        key = None if descriptors is not None or not keep else _weights_key(prog)
        loaded = self._take(key)
        if loaded is None:
            loaded = self._load(prog, descriptors)
        else:
            loaded.prog = prog
        try:
            loaded.write_inputs()
            self.last_run = loaded.run(self.frame)
            image = prog.image.copy()
            off, size = prog.regions["out"]
            image[off:off + size] = loaded.read("out")
        except BaseException:
            loaded.free()
            self._reused.discard(key)
            raise
        if key is None:
            loaded.free()
        else:
            self._keep(key, loaded)
        return image

    def _take(self, key):
        """The kept program under `key` (None: none), out of the cache while it runs."""
        loaded = self._cache.pop(key, None)
        if loaded is not None:
            self._reused.add(key)
        return loaded

    def _keep(self, key, loaded) -> None:
        self._cache[key] = loaded                # most recently used last
        while len(self._cache) > self.CACHED_PROGRAMS:
            self._drop_one()

    def _drop_one(self) -> None:
        """Free one kept program: the least recently used of those never run again since their load (a
        shape seen once, e.g. a video's memory attention while its bank still grows), else the least
        recently used. A frame's programs run in the same order every frame, so evicting by recency alone
        would, once they exceed the room, drop each one just before its next use."""
        key = next((k for k in self._cache if k not in self._reused), None)
        if key is None:
            key = next(iter(self._cache))
        self._reused.discard(key)
        self._cache.pop(key).free()

    def run_bound(self, prog, bind: dict[str, str], owner: str = "") -> RunStats:
        """Run `prog` with regions bound to session buffers (`bind`: region -> buffer name, e.g. an
        activation the previous program left in DDR; sw.runtime.graph_exec): its descriptors, weights and
        unbound inputs written, nothing read back. Kept like run's programs: a program equal but for its inputs
        and its bound buffers is relinked to the new buffers (its descriptors written again, not its weights).
        `owner` (a graph node's name): its own kept program, not one an equal program of another caller
        relinks to its buffers each time (two max-pools of one shape in a frame)."""
        key = (self._owned_key(prog, owner), tuple(sorted(bind)), owner)
        loaded = self._take(key)
        if loaded is None:
            loaded = self._load(prog, None, bind)
        else:                                    # its weights still in DDR: only the descriptors move
            loaded.prog = prog
            self.program_bytes += loaded.rebind(bind)
        try:
            loaded.write_inputs()
            self.last_run = loaded.run(self.frame)
        except BaseException:
            loaded.free()
            self._reused.discard(key)
            raise
        self._keep(key, loaded)
        self.last_programs = [prog]
        return self.last_run

    def buffer(self, size: int, prefix: str = "act", zero: bool = False, top: bool = False):
        """A new session buffer (zeroed only with `zero`; `top`: kept for the session, Session.buffer), room made
        by dropping the kept programs when the arena is full."""
        name = f"{prefix}{next(self._names)}"
        return self._making_room(lambda: self.session.buffer(name, size, zero=zero, top=top))

    def _load(self, prog, descriptors, bind=None):
        name = f"call{next(self._names)}"
        loaded = self._making_room(lambda: self.session.load(prog, name, bind=bind, descriptors=descriptors))
        self.program_bytes += sum(prog.regions[r][1] for r in loaded.owned_regions()
                                  if prog.ROLES.get(r) in ("program", "weight"))
        return loaded

    def _owned_key(self, prog, owner: str) -> str:
        """_weights_key(prog), without hashing the bytes again when they equal those of the owner's last
        program of this kind (a node's next call: compared, several times faster than hashing), nor comparing
        them when it is that very program (the compile cache's again: a compiled program is never changed)."""
        if not owner:
            return _weights_key(prog)
        mine = (owner, type(prog).__name__)
        kept = self._keys.get(mine)
        if kept is not None and kept[3]() is prog:
            return kept[2]
        parts = _keyed_regions(prog)
        if kept is not None and kept[0] == tuple(prog.regions) and [r for r, _ in kept[1]] == [r for r, _ in parts] \
                and all(same_bytes(a, b) for (_, a), (_, b) in zip(kept[1], parts)):
            self._keys[mine] = (*kept[:3], weakref.ref(prog))
            return kept[2]
        key = _weights_key(prog)
        self._keys[mine] = (tuple(prog.regions), [(r, np.array(a)) for r, a in parts], key, weakref.ref(prog))
        return key

    def _making_room(self, make):
        """make(), room made when the arena is full by dropping kept programs one at a time (_drop_one)."""
        while True:
            try:
                return make()
            except ArenaFull:
                if not self._cache:
                    raise
                self._drop_one()

    def _buffer_base(self) -> int:
        return self.BUFFER_BASE


def _keyed_regions(prog) -> list[tuple[str, np.ndarray]]:
    """The regions _weights_key hashes, in its order: (name, bytes)."""
    return [(region, prog.region(region)) for region, role in prog.ROLES.items()
            if region in prog.regions and role in ("program", "weight")]


def _weights_key(prog) -> str:
    """What makes two compiled programs interchangeable but for their inputs: kind, regions, descriptors, weights
    (the regions: an input in segments may be laid out, so addressed, as the whole region would be)."""
    h = hashlib.sha1(type(prog).__name__.encode())
    h.update(" ".join(prog.regions).encode())
    for region, data in _keyed_regions(prog):
        h.update(region.encode())
        h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()
