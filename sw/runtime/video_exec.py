"""int8 SAM 2 video tracking on the overlay: the video nodes on the engines, the memory bank in DDR.

    ex = VideoGraphExecutor(qm, preset("bench16"), backend="sim")
    predictor = overlay_video_predictor(qm, ex, cond_frames=1)       # a golden_model.video.VideoPredictor
    state = predictor.init_state(frames); predictor.add_new_points_or_box(state, 0, 1, points=..., labels=[1])
    for idx, obj_ids, logits in predictor.propagate_in_video(state): ...
    ex.frame_stats            # per stage of the last frame: overlay cycles, host time, host <-> DDR bytes

VideoGraphExecutor is sw.runtime.graph_exec.GraphExecutor with the video nodes (memory encoder,
memory attention): the same placement rule, the same Driver calls, plus RoPE on the vector engine's
ROPE op (the object-pointer tokens it excludes through RESCALE) and the host ops of
golden_model.quant.video (the bank gather, the fast depthwise path where the preset leaves it on the
host). Every node equals VideoIntRunner's (tests/test_video_exec.py).

The memory bank (DdrBank) lives in the driver session's DDR arena, allocated once: int8 memory
frames (mem.features), each frame's cross-attention values and keys (every layer's v_proj, and
k_proj + RoPE, of its tokens: ring `values`, `keys`), int8 object pointers (in host memory: HOST_RINGS), the
int8 slot encodings
(sine + temporal embedding per slot, uploaded once) and each temporal slot's keys (every layer's
k_proj + RoPE of its encoding: ring SLOT_KEYS, projected on the slot's first use in the session).
Projected once (BankedChain, VideoGraphExecutor.project): rows of a linear, of RoPE with its table
repeated per frame and of the pointers' rescale are independent, so the bank's rows equal the
nodes' output on the whole memory. A frame's features, projections and pointer are written into
free slots when the tracker banks them; the tracker's output dicts hold BankEntry handles. On a
tracked frame the banked chains run only on the object-pointer tokens and put the bank's rows before
them; the per-frame key work left is the k_sum add (golden_model.quant.video). No node reads the
gather's frame rows then, so they are placeholders, never read from DDR, and the bank's rows are read in
place (below). A slot is free again when
no output refers to it: the predictor drops
a frame's features once it is past the memory window (num_maskmem x stride frames) and its pointer
once past max_obj_ptrs_in_encoder frames, so the slot counts are fixed for any video length:
    frames (and their values, keys):  cond + objects x (num_maskmem x stride + 1) + 1
    pointers:                  cond + objects x (max_obj_ptrs_in_encoder + 1) + 1
(cond: prompted (object, frame) pairs; +1 per object: the frame being tracked; +1: a failed
attempt's entries while its re-run goes on). The objects share the rings, each entry in a slot of its
own (an object's bytes never overlap another's); the bank is sized for `objects` when the predictor is
made, and a prompt for one object more is refused (BankFull) before anything runs.

Several objects: one image-encoder pass per frame; before the frame's first object step, the memory
attentions of every object the frame tracks run together (VideoGraphExecutor.run_objects, unless
OverlayVideoPredictor.batch_objects is off): the nodes that read only the frame (layer 0's
self-attention, norm2 and cross-attention queries) once for all; every other node but attention once
over all objects' rows concatenated (one Driver call, its weights read once; exact: rows are
independent and the scales per tensor), the objects' pointer tokens placed last so the ROPE's
excluded tail and the banked chains' unbanked tail stay one block; attention per object, in one
Driver call per group of objects with equally long memories (stacked on its head batch; the objects
ordered by memory length). Each
object's step then takes its own result: exact, since an object's memory attention reads only its
own bank, which the other objects' steps on the frame do not change.

Fault rule (OverlayVideoPredictor): an AcceleratorError that survives the session's own retry of
the program aborts the frame; the frame is run again once, on the same bank (its failed attempt
wrote only into free slots, which nothing reads); a second failure raises FrameError naming the
frame and the layer.

Chained in DDR (GraphExecutor.chained, as run_nodes): one object's memory attention runs its nodes as
run_nodes would, engine outputs left in DDR for the next node (RoPE too where it is one ROPE call:
_rope_dev). Several objects: a batched node's output is every object's rows in one DeviceTensor,
object after object (_Stacked), which the next batched node reads in place (a banked chain's inner rows
too: every object's pointer tokens' k_proj, for its RoPE); an attention whose objects' memories are equally
long reads Q, K, V stacked on its batch in place and leaves its output so; a tensor of the frame's (shared by
the objects: layer 0's queries, its residual) that such an attention or a vector add reads per object is its
one buffer bound once per object (a SegmentedTensor of it, _stacked_input); a fused residual add reads the
batched residual (_batched_residual). Each object's part of the batch's output is a view of that buffer
(Session.view), left in DDR for its decoder (a Resident, _per_object). Objects of unequally long memories
attend in a call per length, the batch ordered by length so each call's rows are adjacent: read in place,
written into their rows of one buffer (_attention_groups). What a per-object reader needs (a banked chain
with a reader on the host, a ROPE with its pointer tail, an attention whose inputs are not all in DDR) is read
back then, counted to the memory attention stage (_fetch).

The bank read in place: a banked chain's output whose every reader is on the overlay and chained (the
k_sum add on the vector engine, the attention's V: `in_place`) is a SegmentedTensor (sw.runtime.graph_exec):
each memory frame's (slot's) layer rows in its own bank buffer (LAYER_RINGS: one buffer per slot and layer,
layer_buffer), then the pointer tokens' rows, the chain's nodes' output on them left in DDR (the pointer
tokens, the gather's rows, written once a run and read in place by every such chain's first node:
_tail_rows; the keys' RoPE, every token excluded, one RESCALE: _rope_dev); in a batch, object after object,
each object's pointer rows a view of the chain's one output (Session.view). The readers' programs take it
as RowSegments (a region per range, relinked per frame to that frame's slots, LoadedProgram.rebind: the bank's
slot buffers are pinned, Session.pin, so each program keeps a descriptor list per placement of them, written
the first time it comes; the ring's placements recur, so a steady frame writes none), so the host neither reads
the bank's rows nor writes them back.

A new frame's features are STOREd into its `frames` slot by the memory encoder's last node (taken before the run:
OverlayTracker.encode_new_memory, VideoGraphExecutor.into), and its values and keys into their slots by their
chains' last nodes where those run on
an engine (project_into: the slots taken first, DdrBank.take, the nodes' outputs bound to their layer
buffers, a program with a descriptor list per slot: Session.pin), the chains' first nodes reading the frame's tokens in its `frames` slot in
place (SLOT_RINGS), an inner node's rows (k_proj's) left in a buffer the executor keeps (_stage).

Not yet (honest): a reader on the host reads the bank's rows at the gather (BankEntry.part), a projection
on the host is written in by the host (DdrBank.write_part), and a temporal slot's keys go through the host
(once a session per slot). A fused add's residual crosses the host (the store's RES
region is N-tile-major, not token rows). Per-object readers in a batch (above) read their tensor back, and
each object's prompt encoder + mask decoder and memory encoder run on their own (a call per node and object).
"""
from __future__ import annotations

import gc
import math
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from golden_model.quant.intinterp import IntRunner
from golden_model.quant.video import (SLOTS, GraphImageModel, GraphTracker, VideoIntRunner, _VideoRunner,
                                      rope_parts)
from golden_model.video import VideoPredictor
from sw.compile.attention import token_rows_refusal
from sw.runtime.arena import aligned
from sw.runtime.backend import AcceleratorError
from golden_model.quant.intinterp import _vec_params
from sw.runtime.graph_exec import (DEVICE_OPS, ENGINE_OPS, IN_PLACE, DeviceTensor, GraphExecError,
                                   GraphExecutor, SegmentedTensor, SessionKept, _upload, _vector_dev, _want)
from sw.runtime.layout import TokenRowLayout
from sw.runtime.overlay_segment import STAGE_GROUPS

#: the per-frame stages a video frame is reported in, and the graph stages each one sums
STAGES = {**STAGE_GROUPS, "memory encoder": ("memory_encoder",), "memory attention": ("memory_attention",)}
STAGE_OF = {s: name for name, stages in STAGES.items() for s in stages}


class FrameError(RuntimeError):
    """A frame failed twice on the overlay (names the frame and the layer)."""


# ---------------------------------------------------------------- RoPE on the vector engine
def _rope(drv, n, a, r):
    """ROPE on the rotated tokens (the table tiled over memory frames: rope_k_repeat), RESCALE on the
    object-pointer tokens it excludes: golden_model.quant.video._rope_int's numbers."""
    flat, keep, rp, tail = rope_parts(n, a, r)
    # The tables on chip as their axial factors (memory attention's RoPE is axial over a square map): whole,
    # a 256 px map's 16 x 16 positions already need 32,768 pair slots of the engine's 8,192.
    side = math.isqrt(rp.positions)
    out, runs = np.empty(flat.shape, np.int8), []
    for i, tokens in enumerate(flat):
        if keep:            # none on a banked chain's pointer tokens (VideoGraphExecutor._banked)
            out[i, :keep] = drv.vector("rope", tokens[:keep], rp, end_x=side)
            runs.append(drv.last_run)
        if keep < tokens.shape[0]:
            out[i, keep:] = drv.vector("rescale", tokens[keep:], tail)
            runs.append(drv.last_run)
    return out.reshape(a[0].shape), runs


def _rope_dev(drv, n, a, r, out=None):
    """_rope with its output left in DDR (sw.runtime.graph_exec._vector_dev: its input read in place; `out`: in
    that buffer) where it is one ROPE call: one batch row, no excluded tokens (the queries', the self-attention's
    keys, a memory frame's keys entering the bank); else _rope."""
    x = a[0]
    _, keep, rp, tail = rope_parts(n, [np.zeros(x.shape, np.int8)] + list(a[1:]), r)     # the split, from the shape
    if x.shape[0] == 1 and keep == 0:       # every token excluded (a banked chain's pointer tokens): one RESCALE
        return _vector_dev(drv, n, "rescale", x, tail, out=out)
    if x.shape[0] != 1 or keep != math.prod(x.shape[1:-1]):
        return _rope(drv, n, [np.asarray(x)] + list(a[1:]), r)
    return _vector_dev(drv, n, "rope", x, rp, end_x=math.isqrt(rp.positions), out=out)


def _into_bank(dev_op):
    """A device op whose output goes into the buffer the executor's `store_into` names for the node (a bank
    slot's layer, VideoGraphExecutor.project_into), else into a new one."""
    return lambda d, n, a, r: dev_op(d, n, a, r, out=r.store_into.get(n.name))


def _add_dev(drv, n, a, r, out=None):
    """graph_exec's device add, its output into `out` where given (the memory encoder's last node: the bank slot
    of the frame's features, OverlayTracker.encode_new_memory)."""
    return _vector_dev(drv, n, "add", a[0], _vec_params(r, n, "AddParams"), a[1], want=_want(r, n, a[:2]), out=out)


class _VideoHostOps(IntRunner):
    """Host functions of the video ops (VideoIntRunner's table), for GraphExecutor's host placements."""

    def op_fn(self, node):
        if not node.attrs.get("host") and node.op in VideoIntRunner.OPS:
            return VideoIntRunner.OPS[node.op]
        return super().op_fn(node)


@dataclass
class ObjectMemory:
    """One object's gathered memory for a frame's memory attention (GraphTracker.memory_inputs)."""
    bank: dict                 # "memory", "memory_pos": (1, K, mem_dim) int8
    ptr_tokens: int            # its last tokens: object pointers (no RoPE; their projections not in the bank)
    banked: dict | None        # ring -> its memory frames' (slots') entries (BankEntry), None: nothing banked


@dataclass
class StageStats:
    cycles: int = 0
    host_s: float = 0.0       # host ops' wall time
    engine_s: float = 0.0     # this process's time for the engine nodes (compile + simulate + copies)
    device_s: float = 0.0     # of which inside the device's runs (NodeRecord.device_s; sim: its data and cycles)
    ddr_bytes: int = 0        # host <-> DDR bytes (Driver calls, bank reads and writes)


@dataclass
class FrameStats:
    stages: dict = field(default_factory=lambda: {s: StageStats() for s in STAGES})
    batches: list = field(default_factory=list)   # per memory-attention batch: its objects' memory lengths
    # per node, every run of the frame summed: [host <-> DDR bytes, of them programs', of them the host ops' own]
    # (NodeRecord's fields, which hold a node's last run only); the stages' bytes less theirs: outside the nodes
    nodes: dict = field(default_factory=dict)
    inside: int = 0          # > 0 while a node runs: its bytes are its record's (NodeRecord.ddr_bytes), counted once

    def reset(self) -> None:
        self.stages = {s: StageStats() for s in STAGES}
        self.batches = []
        self.nodes = {}

    def node(self, name: str, ddr_bytes: int, program_bytes: int = 0, own_bytes: int = 0) -> None:
        t = self.nodes.setdefault(name, [0, 0, 0])
        t[0], t[1], t[2] = t[0] + ddr_bytes, t[1] + program_bytes, t[2] + own_bytes

    def batch_note(self) -> str:
        """The frame's memory-attention runs, e.g. "3 objects (2 memory lengths) + 1 object": one run of
        3 objects batched (its attention in 2 calls), then one object alone (a correction's)."""
        return " + ".join(f"{len(b)} object{'s' * (len(b) > 1)}"
                          + (f" ({len(set(b))} memory lengths)" if len(set(b)) > 1 else "") for b in self.batches)

    def outside(self, stage: str, host_s=0.0, ddr_bytes=0) -> None:
        """Bytes (and host time) moved by the executor or the bank for a node's run: added where no node runs, else
        already in that node's record."""
        if not self.inside:
            self.add(stage, host_s=host_s, ddr_bytes=ddr_bytes)

    def add(self, stage: str, cycles=0, host_s=0.0, engine_s=0.0, ddr_bytes=0, device_s=0.0) -> None:
        s = self.stages[STAGE_OF.get(stage, stage)]
        s.cycles += cycles
        s.host_s += host_s
        s.engine_s += engine_s
        s.device_s += device_s
        s.ddr_bytes += ddr_bytes


class VideoGraphExecutor(_VideoRunner, GraphExecutor, _VideoHostOps):
    """GraphExecutor over the whole video graph (module docstring); `frame_stats` sums the current frame."""
    ENGINE_OPS = {**ENGINE_OPS, "rope": _rope}
    DEVICE_OPS = {**DEVICE_OPS, "rope": _into_bank(_rope_dev), "linear": _into_bank(DEVICE_OPS["linear"]),
                  "add": _into_bank(_add_dev), "attention": _into_bank(DEVICE_OPS["attention"])}
    IN_PLACE = {**IN_PLACE, "rope": (0,)}

    def __init__(self, qm, cfg, backend: str = "sim", driver=None):
        super().__init__(qm, cfg, backend, driver)
        self.frame_stats = FrameStats()
        self.current: str | None = None       # the node running (named when a frame fails)
        self.chains = banked_chains(self.graph)
        self.chain_of = {name: c for c in self.chains for name in c.nodes}
        self.host_outputs |= set(self.chain_of)     # banked, or joined with the bank's rows
        # the memory attention's output (its last node's), the decoder's input: left in DDR for it (chained)
        self.run_outputs.add(self.nodes_named(self.graph.meta["video"]["memory_attention"][-1:])[0].outputs[0])
        # every reader of the gathered memory is a banked chain: with the bank's rows the gather's frame
        # tokens and slot encodings are never read (OverlayTracker passes placeholders)
        self.bank_only = {n.name for n in self.graph.nodes if set(n.inputs) & set(BANK_TENSORS.values())} == {
            c.nodes[0] for c in self.chains}
        self.banked: dict | None = None     # per ring: the gathered memory frames' (slots') entries, set per gather
        self.in_place = self._segment_readers()     # chains whose output its readers take from the bank in place
        self.batch_groups: list | None = None     # a batch's objects: (banked entries, pointer tokens) (_rows_batched)
        self.store_into: dict = {}          # node -> the session buffer its output goes into (project_into)
        self.into: dict = {}                # tensor -> the BankEntry a run's node writes it into (run_nodes)
        self._projecting: set = set()       # a banked chain's nodes projecting a frame into the bank (in DDR)
        self._stages = SessionKept(self.driver)     # node -> its buffer (_stage)
        self._tails: dict = {}              # part -> (run, its pointer tokens in DDR, their values) (_tail_rows)
        self._repeated: list = []           # the frame's tensors a batched node reads as segments (_stacked_input)

    def project(self, tokens, part: str) -> dict:
        """The banked chains of `part` ("memory": one memory frame's tokens, "memory_pos": one slot
        encoding) run on those tokens alone, once, when they enter the bank: {ring: (layers, HW, C) int8}.
        No object-pointer tokens among them (O = 0)."""
        out: dict = {}
        for chain, y in self._projections(tokens, part):
            out.setdefault(chain.ring, []).append(np.asarray(y)[0])
        return {ring: np.stack(ys) for ring, ys in out.items()}

    def project_into(self, tokens, part: str, entries: dict, source=None) -> None:
        """project, each chain's output into its layer of entries[ring] (a BankEntry of DdrBank.take): STOREd
        there by the chain's last node where it runs on an engine and chains (its rows never cross the host),
        else written in by the host. `source`: the BankEntry holding `tokens` (a frame's slot), which the chains'
        first nodes on an engine read in place."""
        for chain, y in self._projections(tokens, part, entries if self.chain else {}, source):
            e = entries[chain.ring]
            if not (isinstance(y, DeviceTensor) and y.buffer == e.segment(chain.layer)[0]):
                e.bank.write_part(e, chain.layer, np.asarray(y))

    def _projections(self, tokens, part: str, entries: dict | None = None, source=None):
        """(chain, its output) of each banked chain of `part` on `tokens`; `entries`: ring -> the BankEntry
        whose layer buffer a chain's last node leaves its output in, where it runs on an engine. `tokens` may be
        `source` itself (a BankEntry), read from DDR only where a node needs its values on the host."""
        shape = (1, math.prod(tokens.shape[:-1]), tokens.shape[-1])
        saved, self.banked = (self.banked, getattr(self, "run_dims", None)), None
        self.run_dims = {"O": 0}
        chains = [c for c in self.chains if c.part == part]
        src = None if entries else np.asarray(tokens).reshape(shape)
        if entries:        # the chains in DDR: the tokens written once, each chain's rows left for the next node
            self._projecting = {name for c in chains for name in c.nodes}
            before = self.driver.device.traffic.snapshot()
            layout = TokenRowLayout(shape[1], shape[-1], self.cfg.cols)
            src = DeviceTensor(self.driver, source.segment(0)[0] if source is not None and
                               layout.pitch == layout.channels else
                               _upload(self.driver, np.asarray(tokens).reshape(shape)[0], layout),
                               layout, shape, BANK_TENSORS[part])
            src.kept = source is not None and src.buffer == source.segment(0)[0]      # the bank's slot stays
            self.frame_stats.add("memory_attention", ddr_bytes=self.driver.device.traffic.since(before).total)
        try:
            for chain in chains:
                y = src
                for n in self.nodes_named(chain.nodes):
                    if n.name == chain.nodes[-1] and chain.ring in (entries or {}):
                        self.store_into = {n.name: entries[chain.ring].segment(chain.layer)[0]}
                    elif entries and self.driver.CACHED_PROGRAMS:       # (no kept programs: nothing to keep linked)
                        self.store_into = {n.name: self._stage(n, shape[1])}
                    try:
                        x, y = y, self.op_fn(n)(n, [y] + [self.arg(i, {}) for i in n.inputs[1:]], self)
                    finally:
                        self.store_into = {}
                    if isinstance(x, DeviceTensor) and x is not src and x.buffer not in self._staged() | {None}:
                        x.free(keep=False)       # a chain's rows between its nodes, in a buffer of their own
                yield chain, y
        finally:
            self.banked, self.run_dims, self._projecting = *saved, set()
            if isinstance(src, DeviceTensor):
                src.free(keep=False)

    def _stage(self, node, tokens: int) -> str:
        """The buffer a banked chain's inner node (k_proj before its RoPE) leaves a frame's rows in when the
        frame enters the bank: the executor's, one per node and session, so its program (one per output buffer
        the caller keeps: _run_to_device) and its reader's stay linked to it."""
        rows = -(-tokens // self.cfg.rows) * self.cfg.rows
        layout = TokenRowLayout(rows, self.graph.tensors[node.outputs[0]].shape[-1], self.cfg.cols)
        return self._stages.get(node.name, lambda: self.driver.buffer(layout.size, "stage").name)

    def _staged(self) -> set:
        return set(self._stages.current())

    def _device(self, node, layout: bool = False) -> bool:
        """GraphExecutor's, and a banked chain's nodes where they leave their rows in DDR: projecting a frame
        entering the bank (project_into), or on the pointer tokens where the chain's output is read in place
        as segments (its pointer rows then never cross the host)."""
        if node.name in self.store_into or node.name in self._projecting:
            return True
        chain = self.chain_of.get(node.name)
        if chain is not None:
            return self.banked is not None and self._in_place_now(chain.nodes[-1]) and node.op in self.DEVICE_OPS
        return super()._device(node, layout)

    def _segment_readers(self) -> set:
        """The banked chains' last nodes whose every reader takes their output as segments in DDR (a
        SegmentedTensor: each memory frame's rows in its bank slot, the pointer tokens' in a buffer): a vector
        add (k_sum) or an attention reading its token rows (V), on the overlay, chained, rows a multiple of C."""
        if not self.chain:
            return set()
        readers: dict = {}
        for n in self.graph.nodes:
            for t in n.inputs:
                readers.setdefault(t, []).append(n)
        out = set()
        for c in self.chains:
            last = self.nodes_named([c.nodes[-1]])[0]
            rs = readers.get(last.outputs[0], [])
            if rs and self.graph.tensors[last.outputs[0]].shape[-1] % self.cfg.cols == 0 and all(
                    map(self._takes_segments, rs)):
                out.add(last.name)
        return out

    def op_fn(self, node):
        fn = super().op_fn(node)
        if node.name in self.chain_of:
            fn = self._banked(node, fn)
        rec = self.records[node.name]

        def counted(n, args, r):
            self.current = n.name
            traffic = self.driver.device.traffic
            before = traffic.snapshot()
            self.frame_stats.inside += 1
            try:
                y = fn(n, args, r)
            finally:
                self.frame_stats.inside -= 1
            # the record's, and what the executor moved for the node around it (a banked chain's pointer rows)
            rec.ddr_bytes = traffic.since(before).total
            on_host = rec.where in ("host", "layout")
            self.frame_stats.add(n.stage, rec.cycles, rec.wall_s if on_host else 0.0,
                                 0.0 if on_host else rec.wall_s, rec.ddr_bytes, rec.device_s)
            self.frame_stats.node(n.name, rec.ddr_bytes, rec.program_bytes, rec.own_bytes)
            return y
        return counted

    def _banked(self, node, fn):
        """A banked chain's node on the gathered memory: the first runs on the object-pointer tokens only (the
        memory frames' rows are in the bank), the last puts the bank's rows (computed when each frame or slot
        entered it) before its own: the chain's output equals the nodes' on the whole memory, since every
        row's result is its own (linear, RoPE with its table repeated per frame, the pointers' rescale)."""
        chain = self.chain_of[node.name]
        first, last = chain.nodes[0] == node.name, chain.nodes[-1] == node.name
        channels = self.graph.tensors[node.outputs[0]].shape[-1]

        def run(n, args, r):
            if self.banked is None:
                return fn(n, args, r)
            entries, x = self.banked[chain.ring], args[0]
            if first:
                rows = sum(e.shape[1] for e in entries)
                if rows > x.shape[1]:
                    raise GraphExecError(f"{n.name}: the bank's {chain.ring} hold {rows} tokens, the memory "
                                         f"{x.shape[1]}")
                x = np.ascontiguousarray(x[:, rows:])
            written = 0
            if first and x.shape[1] and self._device(n):      # the pointer tokens, written once for every such chain
                x, written = self._bytes_of(lambda: self._tail_rows(chain.part, x))
            y = fn(n, [x] + list(args[1:]), r) if x.shape[1] else np.zeros((1, 0, channels), np.int8)
            if written:         # a host node's rows (the gather's): the host's own
                self.records[n.name].own_bytes += written
            if not last:
                return y
            if self._in_place_now(n.name):
                groups = self.batch_groups or [(self.banked, x.shape[1])]
                return self._segments(n, chain, [(b[chain.ring], t) for b, t in groups], y, channels)
            parts, read = [], {}        # a slot's rows read once a call: batched objects share the slot keys
            for e in entries:
                if e.slot not in read:
                    read[e.slot] = e.part(chain.layer)[None]
                parts.append(read[e.slot])
            return np.concatenate(parts + [np.asarray(y)], axis=1)
        return run

    def _tail_rows(self, part: str, x: np.ndarray) -> DeviceTensor:
        """The gathered `part`'s pointer tokens `x` (a host node's rows) in DDR for the banked chains of `part`
        in this run, which read them in place: written once (not once per chain and layer), freed after the
        last of those chains' first nodes."""
        scope, kept = self._scope, self._tails.get(part)
        if kept is not None and kept[0] is scope and kept[1].buffer is not None and np.array_equal(kept[2], x):
            return kept[1]
        firsts = [n for c in self.chains if c.part == part for n in self.nodes_named(c.nodes[:1])
                  if n.name in scope.nodes and self._device(n)]
        layout = TokenRowLayout(x.shape[1], x.shape[-1], self.cfg.cols)
        t = DeviceTensor(self.driver, _upload(self.driver, x[0], layout), layout, x.shape, firsts[0].name)
        t.pending = len(firsts)
        scope.made[id(t)] = t
        self._tails[part] = (scope, t, x)
        return t

    def _in_place_now(self, name: str) -> bool:
        """Whether this run leaves a banked chain's output in DDR as segments (_segment_readers): a memory
        attention chained in DDR (one object's, or a batch's)."""
        return name in self.in_place and self._scope is not None and name in self._scope.nodes

    def _segments(self, node, chain, groups, ptrs, channels: int) -> SegmentedTensor:
        """A banked chain's output where its readers bind it, object after object (`groups`: each object's
        memory frames' (slots') entries and pointer tokens): its memory frames' layer rows in the bank, then
        its pointer tokens' rows (of `ptrs`, their projection's: every object's, in order) where the chain left
        them in DDR: one object's, that buffer; several objects', each object's part of it (a view, Session.view:
        rows of a multiple of C bytes start on a DMA beat). Else (on the host) written once per object. Freed after
        its last reader in the run, the bank's slots kept."""
        parts, owns, t0 = [], [], 0
        tails = [t for _, t in groups]
        starts = np.cumsum([0] + tails)[:-1]
        mine = None
        if isinstance(ptrs, DeviceTensor) and ptrs.buffer is not None and ptrs.layout.pitch == channels \
                and not ptrs.pad and ptrs.order is None and (sum(t > 0 for t in tails) == 1 or all(
                    s * channels % self.cfg.beat_bytes == 0 for s, t in zip(starts, tails) if t)):
            del self._scope.made[id(ptrs)]         # the chain left them in DDR: the segments are there
            mine, ptrs.buffer = ptrs.buffer, None
            owns.append(mine)
        else:
            ptrs = self._fetch(ptrs).reshape(-1, channels)
        single = sum(t > 0 for t in tails) == 1
        for entries, tail in groups:
            parts += [e.segment(chain.layer) for e in entries]
            if tail:
                if mine is None:
                    owns.append(_upload(self.driver, ptrs[t0:t0 + tail],
                                        TokenRowLayout(tail, channels, self.cfg.cols)))
                elif not single:
                    owns.append(self.driver.session.view(mine, t0 * channels, tail * channels))
                parts.append((mine if single and mine else owns[-1], tail))
                t0 += tail
        y = SegmentedTensor(self.driver, parts, channels, (1, sum(r for _, r in parts), channels), node.name, owns)
        y.pending = self._scope.readers.get(node.outputs[0], 0)      # GraphExecutor._done's liveness
        self._scope.made[id(y)] = y
        return y

    def node_fn(self, node):
        """run_nodes' nodes (the video stages) where the placement puts them, as run()'s."""
        return self.op_fn(node)

    def run_nodes(self, names, env: dict, observe=None) -> dict:
        """_VideoRunner.run_nodes with the engine outputs chained in DDR between the nodes (GraphExecutor.chained).
        `self.into`: tensor -> a BankEntry of a one-buffer SLOT_RINGS slot (a frame's features) its node's output
        goes into: STOREd there where the node runs on an engine and leaves token rows of the slot's bytes (its
        values never cross the host), else written in by the host; the env then holds the entry."""
        writers = {n.outputs[0]: n.name for n in self.nodes_named(names)}
        into = {t: e for t, e in self.into.items() if t in writers}

        def call():
            self.store_into = {writers[t]: e.segment(0)[0] for t, e in into.items()       # token rows = the slot's
                               if self.chain and e.shape[-1] % self.cfg.cols == 0}
            try:
                out = super(VideoGraphExecutor, self).run_nodes(names, env, observe)
            finally:
                self.store_into = {}
            for t, e in into.items():
                out[t] = self._into_slot(out[t], e)
            return out
        return self.chained(self.nodes_named(names), call)

    def _into_slot(self, y, entry: "BankEntry") -> "BankEntry":
        """A node's output `y` as the BankEntry it was STOREd into (run_nodes' `into`), or written in by the host:
        a DeviceTensor in the slot's buffer is left there (not read back at the run's end)."""
        buf = entry.segment(0)[0]
        if isinstance(y, DeviceTensor) and y.buffer == buf:
            y.kept = True           # the bank's buffer: never the arena's to free
            if self._scope is not None:
                self._scope.made.pop(id(y), None)
            if y.order is None and not y.pad and y.layout.pitch == y.layout.channels \
                    and y.layout.tokens * y.layout.channels == math.prod(entry.shape):
                y.buffer = None
                return entry
            y.host, y.buffer = y.read(), None       # rows in another order: put back in the map's by the host
        entry.bank.write_part(entry, 0, np.asarray(y).astype(np.int8, copy=False))
        return entry

    def own_reason(self, name: str) -> str:
        """Why node `name`'s own bytes (NodeRecord.own_bytes) are the host's: a host node's, the inputs the host
        makes (a feed, a host node's output) it writes, the output the host reads."""
        n = self.nodes_named([name])[0]
        if self.placements[name].where == "host":
            return "a host node"
        why = [f"writes {t} (" + ("fed" if t in self.graph.inputs else "a host node's") + ")"
               for t in n.inputs if t in self.host_made]
        why += [f"reads {t} for the host" for t in n.outputs if t in self.host_read]
        return ", ".join(why)

    def on_read_back(self, rec, nbytes: int) -> None:
        own = rec.own_bytes
        super().on_read_back(rec, nbytes)
        self.frame_stats.add(rec.stage, ddr_bytes=nbytes)
        self.frame_stats.node(rec.name, nbytes, 0, rec.own_bytes - own)

    # ------------------------------------------------------------ several objects' memory attention at once
    def run_objects(self, names, env: dict, objects: list, output: str, observe=None) -> list:
        """run_nodes for every object of `objects` (ObjectMemory) on one frame's `env`: each one's tensor
        `output`, in order. A node whose inputs are the frame's alone runs once for all (memory
        attention layer 0's self-attention and cross-attention queries); the other nodes run once over
        all objects' rows (_rows_batched) except attention, one call per group of objects with equal
        memory lengths (_attention_batched). Each object's numbers are run_nodes' (module docstring).
        One object: run_nodes on its gathered memory."""
        if len(objects) == 1:
            o = objects[0]
            self.frame_stats.batches.append([o.bank["memory"].shape[1]])
            saved = getattr(self, "bank", None), getattr(self, "run_dims", None), self.banked
            self.bank, self.run_dims, self.banked = o.bank, {"O": o.ptr_tokens}, o.banked
            try:
                return [self.run_nodes(names, dict(env), observe)[output]]
            finally:
                self.bank, self.run_dims, self.banked = saved
        nodes = self.nodes_named(names)
        # equally long memories next to each other: each attention call's objects are adjacent rows of the batch
        order = sorted(range(len(objects)), key=lambda k: objects[k].bank["memory"].shape[1])
        keys = [f"{output}#{k}" for k in order]       # each object's, a run output of its own
        saved = self.run_outputs
        self.run_outputs = saved | set(keys)
        try:
            out = self.chained(nodes, lambda: dict(zip(keys, self._per_object(
                self._run_objects(nodes, env, [objects[k] for k in order], output, observe)))))
        finally:
            self.run_outputs = saved
        return [out[f"{output}#{k}"] for k in range(len(objects))]

    def _per_object(self, y: "_Stacked") -> list:
        """Each object's rows of a batch's output: where the batch left them in DDR, one buffer, each object's part
        of it (a view, Session.view), which chained() keeps there (a Resident: the object's decoder reads it in
        place); else read back and split."""
        t, scope = y.whole, self._scope
        if not (isinstance(t, DeviceTensor) and not isinstance(t, SegmentedTensor) and t.buffer is not None
                and scope is not None and id(t) in scope.made and t.order is None and not t.pad and not t.kept
                and not t.pinned and t.layout.pitch == t.layout.channels):
            return list(y)
        sizes = [math.prod(s[:-1]) * t.layout.channels for s in y.shapes]
        starts = np.cumsum([0] + sizes)[:-1]
        if any(int(s) % self.cfg.beat_bytes for s in starts):
            return list(y)
        del scope.made[id(t)]
        # Each object's reader (its decoder's first node) is one program: the objects' views, named by where they
        # are and pinned (Session.pin), give it a descriptor list per object, so a steady frame relinks none.
        s, addr, out = self.driver.session, self.driver.session.arena[t.buffer].addr, []
        names = [f"{t.producer}.object@{addr + int(start):#x}" for start in starts]
        for shape, start, size, name in zip(y.shapes, starts, sizes, names):
            v = DeviceTensor(self.driver, s.view(t.buffer, int(start), size, name),
                             TokenRowLayout(math.prod(shape[:-1]), shape[-1], self.cfg.cols), shape, t.producer)
            scope.made[id(v)] = v
            out.append(v)
        s.pin(names, len(names))
        t.free(keep=False)          # the views hold its bytes: given back with the last of them
        return out

    def _fetch(self, x, stage: str = "memory_attention") -> np.ndarray:
        """x's values on the host: a DeviceTensor read back and its buffer freed (a later reader takes the
        values), its bytes counted to `stage`; one a later reader still reads in place (pinned: an earlier run's
        output, a Resident's) read, not freed."""
        if isinstance(x, DeviceTensor) and x.buffer is not None and x.pinned:
            x.host, moved = self._bytes_of(lambda: np.asarray(x))      # read once: the objects share it
            self.frame_stats.outside(stage, ddr_bytes=moved)
            return x.host
        if isinstance(x, DeviceTensor) and x.buffer is not None:
            self.frame_stats.outside(stage, ddr_bytes=self._free(x, keep=True))
        return np.asarray(x)

    def _stacked_rows(self, node, objects, per, shared) -> list | None:
        """The inputs of a batched row-wise node with no tail (_rows_batched's split not needed): each
        activation as every object's rows, object after object, in one tensor (a _Stacked input as it
        is: read in place); None where the node needs _rows_batched (a ROPE tail, a banked chain)."""
        if node.attrs.get("exclude") == "O" or node.name in self.chain_of:
            return None
        return [self._stacked_input(i, per, shared, len(objects), self._takes_segments(node))
                if i in per or i not in self.graph.constants else self.arg(i, shared) for i in node.inputs]

    def _stacked_input(self, i, per, shared, n: int, segments: bool = False):
        """Tensor `i` as every object's rows, object after object, in one (1, rows, C) tensor: a _Stacked one
        as it is (in place); the frame's (shared by the objects) where it is in DDR and `segments` (the reader
        binds segments): its buffer n times, a SegmentedTensor (released after the reader: _release_shared);
        else the objects' values (the frame's, n times) concatenated on the host."""
        v = per.get(i)
        if isinstance(v, _Stacked):
            return v.whole
        if v is None and segments and self._rows_in_ddr(self.arg(i, shared)):
            return self._repeat(self.arg(i, shared), n)
        parts = v if v is not None else [self.arg(i, shared)] * n
        return np.concatenate([self._fetch(x).reshape(-1, np.shape(x)[-1]) for x in parts])[None]

    def _rows_in_ddr(self, x) -> bool:
        """Whether x is one tensor's token rows in a buffer of its own in DDR, unpadded, in order: its rows a range
        of bytes (a segment, a view)."""
        return (isinstance(x, DeviceTensor) and not isinstance(x, SegmentedTensor) and x.buffer is not None
                and x.order is None and not x.pad and x.layout.pitch == x.layout.channels == x.shape[-1]
                and x.shape[-1] % self.cfg.cols == 0)

    def _repeat(self, x, n: int) -> SegmentedTensor:
        """The frame's tensor x (_rows_in_ddr) as every one of n objects' rows: its buffer n times, a SegmentedTensor
        (x released after the reader: _release_shared)."""
        rows = x.layout.tokens
        self._repeated.append(x)
        return SegmentedTensor(self.driver, [(x.buffer, rows)] * n, x.shape[-1], (1, n * rows, x.shape[-1]), x.producer)

    def _takes_segments(self, n) -> bool:
        """Whether node n on the overlay binds an input held as segments (RowSegments) in place: a vector add (not
        in a linear's store) or an attention reading its token rows."""
        where = self.placements[n.name].where
        if not self.chain:
            return False
        if n.op == "add":        # (one not in its linear's store runs on the vector engine: GraphExecutor.unfused)
            return (where == "vector" or n.name in self.unfused) and n.name not in self._fused_into
        d = self.graph.tensors[n.inputs[0]].shape[-1] // n.attrs.get("heads", 1)
        return n.op == "attention" and where == "attention" and token_rows_refusal(self.cfg, d, True) is None

    def _release_shared(self, node) -> None:
        """The frame's tensors a batched node read as segments (_stacked_input): one reader fewer each (freed
        after their last, as _done does)."""
        repeated, self._repeated = self._repeated, []
        self._done(node, repeated, None)

    def _object_shapes(self, i, per, shared, n: int) -> list:
        v = per.get(i)
        return list(v.shapes) if isinstance(v, _Stacked) else [np.shape(x) for x in v] if v is not None else \
            [np.shape(self.arg(i, shared))] * n

    def _run_objects(self, nodes, env: dict, objects: list, output: str, observe=None) -> list:
        shared, per = dict(env), {}
        self._repeated = []         # (none left by a failed run)
        self.frame_stats.batches.append([o.bank["memory"].shape[1] for o in objects])
        for node in nodes:
            if node.op == "memory_bank":
                ys = [o.bank[node.attrs["part"]] for o in objects]
            elif not any(i in per for i in node.inputs):
                if node.name in self.fused_adds and self._residual(node) in per:
                    raise GraphExecError(f"{node.name}: a shared node whose fused add reads an object's tensor")
                shared[node.outputs[0]] = y = self.node_fn(node)(node, [self.arg(i, shared) for i in node.inputs],
                                                                 self)
                if observe is not None:
                    observe(node, y)
                continue
            else:
                n = len(objects)
                stacked = (self._stacked_attention(node, per, shared, n) if node.op == "attention"
                           else self._stacked_rows(node, objects, per, shared))
                if node.name in self.fused_adds:      # the store's residual, row for row with the batched rows
                    self._env = self._batched_residual(node, per, shared, n)
                if isinstance(stacked, _Stacked):
                    ys = stacked
                elif stacked is not None:         # one run over every object's rows, its output kept whole
                    y = self.node_fn(node)(node, stacked, self)
                    ys = _Stacked(y, [s[:-1] + y.shape[-1:] for s in self._object_shapes(node.inputs[0], per,
                                                                                           shared, n)], self._fetch)
                elif node.op == "attention":
                    ys = self._attention_groups(node, per, shared, objects)
                else:
                    ys = self._rows_batched(node, per, shared, objects)
                self._release_shared(node)
            per[node.outputs[0]] = ys
            for y in (ys.peek() if isinstance(ys, _Stacked) else ys) if observe is not None else ():
                observe(node, y)
        return per[output]

    def _stacked_attention(self, node, per, shared, n: int):
        """Every object's attention in one Driver call where their memories are equally long: Q, K, V each
        object after object on the call's batch (a _Stacked input read in place), the output kept whole
        (_Stacked). None where the lengths differ (_attention_batched's groups)."""
        shapes = [self._object_shapes(i, per, shared, n) for i in node.inputs]
        if any(len(set(s)) != 1 for s in shapes):
            return None
        ins, reshaped = [], []
        for i, s in zip(node.inputs, shapes):
            x = self._stacked_input(i, per, shared, n, self._takes_segments(node))
            batch = (n * s[0][0],) + tuple(s[0][1:])
            if isinstance(x, DeviceTensor):        # the same bytes seen as the call's batch
                reshaped.append((x, x.shape))
                x.shape = batch
            ins.append(x if isinstance(x, DeviceTensor) else np.asarray(x).reshape(batch))
        try:
            y = self.node_fn(node)(node, ins, self)
        finally:
            for x, shape in reshaped:
                x.shape = shape
        if isinstance(y, DeviceTensor):        # one block of rows, as the next batched node reads it
            y.shape = (1, math.prod(y.shape[:-1]), y.shape[-1])
        else:
            y = y.reshape(1, -1, y.shape[-1])
        return _Stacked(y, [s[:-1] + (y.shape[-1],) for s in shapes[0]], self._fetch)

    def _batched_residual(self, node, per, shared, n: int) -> dict:
        """The environment a batched linear's fused add reads its residual from: every object's rows of it,
        object after object (a _Stacked one as it is, in DDR)."""
        r = self._residual(node)
        return {r: self._stacked_input(r, per, shared, n)}

    def _residual(self, node) -> str:
        """The tensor a linear's fused add (GraphExecutor.fused_adds) reads as its residual."""
        add, i = self.fused_adds[node.name]
        return add.inputs[1 - i]

    def _rows_batched(self, node, per, shared, objects):
        """One run of a row-wise node (linear, layernorm, add, rescale, ROPE) over every object's rows: the
        rows concatenated, the objects' pointer tokens last (the ROPE's excluded tail, a banked chain's
        rows not in the bank), so the node's own split applies to all. Exact: the weights and the
        requantisation scales are per tensor, every row's result is its own. An input already in that order
        (a _Stacked one of pointer rows alone: a banked chain's inner rows) is read in place, and a chain's inner
        output left in DDR so for its next node (_Stacked); the other outputs come back to the host, per object."""
        chain = self.chain_of.get(node.name)
        tail = node.attrs.get("exclude") == "O" or chain is not None
        n = len(objects)
        activation = [i in per or i not in self.graph.constants for i in node.inputs]
        shapes = [self._object_shapes(i, per, shared, n) if act else None for i, act in zip(node.inputs, activation)]
        counts = [math.prod(s[:-1]) for s in shapes[0]]
        heads = [c - (o.ptr_tokens if tail else 0) for c, o in zip(counts, objects)]
        ins = []
        for i, act, sh in zip(node.inputs, activation, shapes):
            if not act:                     # a constant (weights, tables): the same for all
                ins.append(self.arg(i, shared))
                continue
            if [math.prod(s[:-1]) for s in sh] != counts:
                raise GraphExecError(f"{node.name}: input {i} is not row for row with {node.inputs[0]}")
            v = per.get(i)
            if isinstance(v, _Stacked) and (not any(heads) or heads == counts):      # in the batch's order
                ins.append(v.whole)
                continue
            rows = [np.asarray(x).reshape(-1, np.shape(x)[-1]) for x in (v if v is not None else
                                                                         [self.arg(i, shared)] * n)]
            ins.append(np.concatenate([r[:h] for r, h in zip(rows, heads)] +
                                      [r[h:] for r, h in zip(rows, heads)])[None])
        saved = getattr(self, "run_dims", None), self.banked
        tails = [c - h for c, h in zip(counts, heads)]
        if tail:
            self.run_dims = {**(saved[0] or {}), "O": sum(tails)}
            banked = [o.banked for o in objects]
            self.banked = None if None in banked else {ring: [e for b in banked for e in b[ring]] for ring in banked[0]}
            if chain is not None and self.banked is not None:      # a banked chain's output as segments: by object
                self.batch_groups = [(o.banked, t) for o, t in zip(objects, tails)]
        try:
            y = self.node_fn(node)(node, ins, self)
            if isinstance(y, SegmentedTensor):       # every object's rows in DDR, object after object
                return _Stacked(y, [(1, o.bank[chain.part].shape[1], y.shape[-1]) for o in objects], self._fetch)
            if chain is not None and self.banked is not None and node.name != chain.nodes[-1] and \
                    isinstance(y, DeviceTensor):     # a banked chain's inner rows (its pointer tokens') in DDR
                return _Stacked(y, [(1, t, y.shape[-1]) for t in tails], self._fetch)
            y = self._fetch(y)                       # a banked chain's inner rows on the host, split below
            if chain is not None and self.banked is not None:   # its head rows: the bank's (the last) or none
                heads = [o.bank[chain.part].shape[1] - o.ptr_tokens if node.name == chain.nodes[-1] else 0
                         for o in objects]
        finally:
            self.run_dims, self.banked, self.batch_groups = *saved, None
        y = y.reshape(-1, y.shape[-1])
        out, h0, t0 = [], 0, sum(heads)
        for sh, h, t in zip(shapes[0], heads, tails):
            shape = tuple(sh[:-1]) if chain is None else (1, h + t)      # a chain's rows: (1, K, C)
            out.append(np.concatenate([y[h0:h0 + h], y[t0:t0 + t]]).reshape(shape + y.shape[-1:]))
            h0, t0 = h0 + h, t0 + t
        return out

    def _attention_groups(self, node, per, shared, objects):
        """Attention per group of objects with equally long memories (each object's keys and values are its own),
        one Driver call a group. Where every input is in DDR (a _Stacked one, or the frame's) and the groups'
        rows are adjacent (run_objects orders the objects by memory length), each call reads its objects' rows
        in place (a view of the batch's rows, or its segments) and writes its output into their rows of one
        buffer for all (a view), which the next batched node reads in place (_Stacked); else through the host
        (_attention_batched)."""
        n, scope = len(objects), self._scope
        shapes = [self._object_shapes(i, per, shared, n) for i in node.inputs]
        keys = [tuple(s[k] for s in shapes) for k in range(n)]
        bounds = [0] + [k for k in range(1, n) if keys[k] != keys[k - 1]] + [n]
        ins = [per.get(i) for i in node.inputs]
        if not (len(bounds) - 1 == len(set(keys)) and scope is not None and self._device(node)
                and self._takes_segments(node)
                and all(isinstance(v, _Stacked) and isinstance(v.whole, DeviceTensor) and v.whole.buffer is not None
                        and (isinstance(v.whole, SegmentedTensor) or self._rows_in_ddr(v.whole))
                        or v is None and self._rows_in_ddr(self.arg(i, shared)) for i, v in zip(node.inputs, ins))):
            frame = {i: self._fetch(self.arg(i, shared)) for i in node.inputs if i not in per}     # read by all
            return self._attention_batched(node, [[per[i][k] if i in per else frame[i] for i in node.inputs]
                                                  for k in range(n)], objects)
        rows = [[math.prod(sh[:-1]) for sh in s] for s in shapes]           # per input, each object's rows
        c = shapes[0][0][-1]
        drv, s = self.driver, self.driver.session
        out = drv.buffer(sum(rows[0]) * c).name
        whole = DeviceTensor(drv, out, TokenRowLayout(sum(rows[0]), c, self.cfg.cols), (1, sum(rows[0]), c), node.name)
        try:
            for a, b in zip(bounds, bounds[1:]):
                args = []
                for i, v, r, sh in zip(node.inputs, ins, rows, shapes):
                    batch = ((b - a) * sh[a][0],) + tuple(sh[a][1:])
                    if v is None:
                        t = self._repeat(self.arg(i, shared), b - a)
                    else:
                        t = self._rows_of(v.whole, sum(r[:a]), sum(r[a:b]))
                        if t is None:
                            raise GraphExecError(f"{node.name}: objects {a}..{b - 1}'s rows of {i} straddle segments")
                    t.shape = batch
                    args.append(t)
                view = s.view(out, sum(rows[0][:a]) * c, sum(rows[0][a:b]) * c)
                self.store_into = {node.name: view}
                try:
                    y = self.node_fn(node)(node, args, self)
                finally:
                    self.store_into = {}
                    for t in args:          # the views of its inputs (freed by _done where it ran)
                        if not isinstance(t, SegmentedTensor) and t.buffer is not None:
                            t.free(keep=False)
                if not (isinstance(y, DeviceTensor) and y.buffer == view):
                    raise GraphExecError(f"{node.name}: a group's attention did not run on the engine in place")
                scope.made.pop(id(y), None)
                y.free(keep=False)
        except BaseException:
            whole.free(keep=False)
            raise
        self._release_shared(node)
        self._done(node, [v.whole for v in ins if v is not None], None)       # one reader of each, done
        whole.pending = scope.readers.get(node.outputs[0], 0)
        scope.made[id(whole)] = whole
        return _Stacked(whole, [sh[:-1] + (c,) for sh in shapes[0]], self._fetch)

    def _rows_of(self, t, r0: int, n: int):
        """Rows r0 .. r0 + n - 1 of DeviceTensor t (_rows_in_ddr, or a SegmentedTensor whose segments they cover
        whole) in place: a view (freed after its reader, by _done), or a SegmentedTensor of those segments (owning
        none); None where they straddle a segment."""
        if isinstance(t, SegmentedTensor):
            parts, at = [], 0
            for buf, k in t.parts:
                if r0 <= at and at + k <= r0 + n:
                    parts.append((buf, k))
                elif at < r0 + n and r0 < at + k:
                    return None
                at += k
            return SegmentedTensor(self.driver, parts, t.layout.channels, (1, n, t.layout.channels), t.producer)
        c = t.layout.channels
        if r0 * c % self.cfg.beat_bytes:
            return None
        return DeviceTensor(self.driver, self.driver.session.view(t.buffer, r0 * c, n * c),
                            TokenRowLayout(n, c, self.cfg.cols), (1, n, c), t.producer)

    def _attention_batched(self, node, args, objects) -> list:
        """Attention per object (its keys and values are its own), in one Driver call for each group of
        objects with the same memory length: stacked on the call's leading batch (its heads)."""
        groups: dict = {}
        for k, a in enumerate(args):
            groups.setdefault(tuple(np.shape(x) for x in a), []).append(k)
        out = [None] * len(args)
        for ks in groups.values():
            if len(ks) == 1:            # alone: its Q, K, V as they are (DeviceTensors read in place)
                out[ks[0]] = self.node_fn(node)(node, args[ks[0]], self)
                continue
            y = self.node_fn(node)(node, [np.concatenate([self._fetch(args[k][j]) for k in ks])
                                          for j in range(len(node.inputs))], self)
            y = self._fetch(y)
            ends = np.cumsum([np.shape(args[k][0])[0] for k in ks])
            for k, part in zip(ks, np.split(y, ends[:-1])):
                out[k] = part
        return out


class _Stacked:
    """Every object's rows of one tensor of a batched memory attention in one array or DeviceTensor (1,
    rows, C), object after object: read in place by the next batched node; `shapes`: each object's.
    Indexing (a per-object reader) takes it to the host through `fetch` (counted, its buffer freed)."""

    def __init__(self, whole, shapes: list, fetch):
        self.whole, self.shapes, self.fetch = whole, [tuple(s) for s in shapes], fetch
        self._parts = None

    def _split(self, rows: np.ndarray) -> list:
        rows = rows.reshape(-1, rows.shape[-1])
        ends = np.cumsum([math.prod(s[:-1]) for s in self.shapes])[:-1]
        return [p.reshape(s) for p, s in zip(np.split(rows, ends), self.shapes)]

    def peek(self) -> list:
        """The objects' values, read without freeing (an observer's look)."""
        return self._parts if self._parts is not None else self._split(np.asarray(self.whole))

    def __getitem__(self, k: int):
        if self._parts is None:
            self._parts = self._split(self.fetch(self.whole))
        return self._parts[k]

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self):
        return (self[k] for k in range(len(self)))


# ---------------------------------------------------------------- the memory bank in DDR
class BankFull(MemoryError):
    """Every slot of a bank ring is referenced (more prompted frames or objects than it was made for)."""


class BankEntry:
    """An int8 array that lives in a DdrBank slot: np.asarray(entry) reads it from DDR. The slot is
    freed when the last reference to the entry goes."""

    def __init__(self, bank: "DdrBank", ring: str, slot: int, shape: tuple):
        self.bank, self.ring, self.slot, self.shape, self.dtype = bank, ring, slot, tuple(shape), np.dtype(np.int8)
        weakref.finalize(self, bank.release, ring, slot)

    def __array__(self, dtype=None, copy=None):
        a = self.bank.read(self.ring, self.slot).reshape(self.shape)
        return a if dtype is None else a.astype(dtype)

    def reshape(self, *shape):
        return np.asarray(self).reshape(*shape)

    def part(self, i: int) -> np.ndarray:
        """Row i of the entry's first axis, read alone."""
        return self.bank.read(self.ring, self.slot, i).reshape(self.shape[1:])

    def segment(self, i: int) -> tuple[str, int]:
        """Row i of a SLOT_RINGS entry (a layer's token rows) where an engine reads it in place: (its session
        buffer, its rows)."""
        return layer_buffer(self.ring, self.slot, i), self.shape[1]


class DdrBank:
    """Rings of fixed int8 slots in the session's DDR arena (module docstring); allocated once.
    `rings`: name -> (one slot's shape, slots); ring SLOT_KEYS has one slot per temporal slot, written once; a
    HOST_RINGS ring's slots hold their values in host memory (the same slots, free list and BankFull)."""

    def __init__(self, session, rings: dict, slot_pos: np.ndarray, stats: FrameStats | None = None):
        self.session, self.stats = session, stats
        self.shapes = {ring: tuple(shape) for ring, (shape, _) in rings.items()}
        self.counts = {ring: n for ring, (_, n) in rings.items()}
        self.free = {ring: list(range(n)) for ring, n in self.counts.items() if ring != SLOT_KEYS}
        self.slot_keys: dict[int, BankEntry] = {}     # temporal slot -> its keys (projected on first use)
        self.held: dict[tuple, np.ndarray] = {}       # (HOST_RINGS ring, slot) -> its values, in host memory
        pos = np.ascontiguousarray(slot_pos, np.int8)
        self.pos_shape = pos.shape
        self.buffers = {name: session.buffer(name, size, zero=name != "bank.slot_pos")
                        for name, size in bank_buffers(rings, pos.nbytes).items()}
        session.backend.write(self.buffers["bank.slot_pos"].addr, pos.reshape(-1).view(np.uint8))
        # The memory attention reads its memory frames' slots in place, in an order that moves every frame (the
        # frames' temporal order); a ring's slots are taken in turn, so those placements recur every <= n frames
        # (n slots): its programs keep a descriptor list per placement and a steady frame rewrites none.
        session.pin([layer_buffer(r, slot, i) for r in SLOT_RINGS if r in rings for slot in range(self.counts[r])
                     for i in range(self.shapes[r][0])], max(self.counts[r] for r in SLOT_RINGS if r in rings))

    @property
    def nbytes(self) -> int:
        """The arena bytes the bank holds (its buffers, each rounded up to the arena's ALIGN)."""
        return sum(aligned(b.size) for b in self.buffers.values())

    def _spans(self, ring: str, slot: int) -> list[tuple[int, int]]:
        """(DDR address, bytes) of a slot's parts, in order: one per layer of a SLOT_RINGS ring, else one."""
        shape = self.shapes[ring]
        if ring in SLOT_RINGS:
            return [(self.buffers[layer_buffer(ring, slot, i)].addr, math.prod(shape[1:])) for i in range(shape[0])]
        n = math.prod(shape)
        return [(self.buffers[f"bank.{ring}"].addr + slot * n, n)]

    def _part_spans(self, ring: str, slot: int, part: int | None) -> list[tuple[int, int]]:
        """_spans, or only those of row `part` of the slot shape's first axis."""
        spans = self._spans(ring, slot)
        if part is None:
            return spans
        if len(spans) == 1:
            n = spans[0][1] // self.shapes[ring][0]
            return [(spans[0][0] + part * n, n)]
        return spans[part:part + 1]

    def _io(self, stage: str, t0: float, nbytes: int) -> None:
        if self.stats is not None:
            self.stats.outside(stage, host_s=time.perf_counter() - t0, ddr_bytes=nbytes)

    def put(self, ring: str, x: np.ndarray) -> BankEntry:
        """Write int8 `x` into a free slot of `ring`; its handle."""
        x = np.asarray(x)
        if x.dtype != np.int8 or x.size != math.prod(self.shapes[ring]):
            raise ValueError(f"bank {ring}: expected {math.prod(self.shapes[ring])} int8 values, got {x.dtype} "
                             f"{x.shape}")
        entry = self.take(ring, x.shape)
        if ring in HOST_RINGS:
            self.held[ring, entry.slot] = x.copy()
        else:
            self._write(ring, entry.slot, x, "memory encoder")
        return entry

    def take(self, ring: str, shape: tuple | None = None) -> BankEntry:
        """A free slot of `ring`, nothing written (its rows STOREd there by the engines, or write_part)."""
        if not self.free[ring]:
            gc.collect()            # entries of a failed frame attempt held by a reference cycle
        if not self.free[ring]:
            raise BankFull(f"memory bank: all {self.counts[ring]} {ring} slots are in use")
        return BankEntry(self, ring, self.free[ring].pop(0), shape or self.shapes[ring])

    def write_part(self, entry: BankEntry, i: int, x: np.ndarray) -> None:
        """Row i of the entry's first axis (a layer's rows of a LAYER_RINGS slot), written by the host."""
        self._write(entry.ring, entry.slot, x, "memory encoder", part=i)

    def _write(self, ring: str, slot: int, x: np.ndarray, stage: str, part: int | None = None) -> None:
        t0 = time.perf_counter()
        flat, pos = np.ascontiguousarray(x).reshape(-1).view(np.uint8), 0
        for addr, n in self._part_spans(ring, slot, part):
            self.session.backend.write(addr, flat[pos:pos + n])
            pos += n
        self._io(stage, t0, x.size)

    def slot_key_entry(self, slot: int, project) -> "BankEntry":
        """The keys of temporal slot `slot`'s encoding (ring SLOT_KEYS): project(encoding) on the slot's first
        use in the session, read in place after that."""
        if slot not in self.slot_keys:
            keys = np.asarray(project(self.slot_encoding(slot)), np.int8)
            if keys.shape != self.shapes[SLOT_KEYS]:
                raise ValueError(f"bank {SLOT_KEYS}: expected {self.shapes[SLOT_KEYS]}, got {keys.shape}")
            self._write(SLOT_KEYS, slot, keys, "memory attention")
            self.slot_keys[slot] = BankEntry(self, SLOT_KEYS, slot, keys.shape)
        return self.slot_keys[slot]

    def read(self, ring: str, slot: int, part: int | None = None) -> np.ndarray:
        """A slot's bytes (int8), or only its `part`-th row along the slot shape's first axis."""
        if ring in HOST_RINGS:
            x = self.held[ring, slot].reshape(-1)
            return x if part is None else x.reshape(self.shapes[ring][0], -1)[part]
        t0 = time.perf_counter()
        spans = self._part_spans(ring, slot, part)
        data = np.concatenate([np.asarray(self.session.backend.read(a, n)) for a, n in spans]).view(np.int8)
        self._io("memory attention", t0, data.size)
        return data

    def slot_encoding(self, slot: int) -> np.ndarray:
        t0 = time.perf_counter()
        n = math.prod(self.pos_shape[1:])
        data = np.asarray(self.session.backend.read(self.buffers["bank.slot_pos"].addr + slot * n, n)).view(np.int8)
        self._io("memory attention", t0, n)
        return data.reshape(self.pos_shape[1:])

    def release(self, ring: str, slot: int) -> None:
        self.held.pop((ring, slot), None)
        if ring in self.free:
            self.free[ring].append(slot)

    def in_use(self, ring: str) -> int:
        return len(self.slot_keys) if ring == SLOT_KEYS else self.counts[ring] - len(self.free[ring])


# ---------------------------------------------------------------- the tracker and predictor over them
class _BankImageModel(GraphImageModel):
    def __init__(self, graph, runner, bank, observe=None):
        super().__init__(graph, runner, observe)
        self.bank = bank

    def bank_pointer(self, ptr):
        return self.bank.put("ptrs", super().bank_pointer(ptr))


class OverlayTracker(GraphTracker):
    """GraphTracker on a VideoGraphExecutor whose bank frames, pointers and slot encodings are in DDR."""

    def __init__(self, graph, executor: VideoGraphExecutor, bank: DdrBank, observe=None):
        super().__init__(graph, executor, observe)
        self.bank = bank
        self.image_model = _BankImageModel(graph, executor, bank, observe)
        self.attended: dict = {}      # (frame, reverse, id(output_dict)) -> the frame's batched memory attention

    def encode_new_memory(self, vision_feat, pred_masks_high_res, object_score_logits, is_mask_from_pts):
        """GraphTracker's, the memory encoder's last node (`mem.features`) writing into a free `frames` slot of the
        bank (VideoGraphExecutor.run_nodes' `into`): the features are a BankEntry, never read back."""
        self.runner.into = {"mem.features": self.bank.take("frames")}
        try:
            return super().encode_new_memory(vision_feat, pred_masks_high_res, object_score_logits, is_mask_from_pts)
        finally:
            self.runner.into = {}

    def bank_features(self, feats):
        """The frame into the bank (already there: encode_new_memory's entry), with its memory-attention
        projections (every layer's values, and its RoPE'd keys of the memory part) when kept: entry.projections,
        ring -> BankEntry."""
        entry = feats if isinstance(feats, BankEntry) else self.bank.put("frames", feats)
        entry.projections = {}
        if self.banks_projections:          # each ring's slot taken first: the engines STORE the rows there
            rings = sorted({c.ring for c in self.runner.chains if c.part == "memory"})
            entry.projections = {ring: self.bank.take(ring) for ring in rings}
            self.runner.project_into(feats, "memory", entry.projections, source=entry)
        return entry

    @property
    def banks_projections(self) -> bool:
        return all(c.ring in self.bank.shapes for c in self.runner.chains) and bool(self.runner.chains)

    def prepare_memory_conditioned_features(self, frame_idx, is_init_cond_frame, vision_feat, vision_pos,
                                            output_dict, num_frames, track_in_reverse=False):
        """GraphTracker's, the memory attention through attend(): the object's result of the frame's batch
        when the predictor ran one (OverlayVideoPredictor), else this object's alone."""
        if is_init_cond_frame:
            return super().prepare_memory_conditioned_features(frame_idx, True, vision_feat, vision_pos, output_dict,
                                                               num_frames, track_in_reverse)
        done = self.attended.get((frame_idx, track_in_reverse, id(output_dict)))
        if done is not None:
            return done
        return self.attend(frame_idx, vision_feat, [output_dict], num_frames, track_in_reverse)[0]

    def attend(self, frame_idx, vision_feat, output_dicts, num_frames, track_in_reverse=False) -> list:
        """The memory attention of the objects with these banks on one non-initial frame, batched
        (VideoGraphExecutor.run_objects): each object's conditioned features, in order."""
        v = self.video
        b, hw, c = vision_feat.shape
        side = math.isqrt(hw)
        objects = []
        try:
            for od in output_dicts:
                bank, ptr_tokens = self.memory_inputs(frame_idx, od, num_frames, track_in_reverse)
                objects.append(ObjectMemory(bank, ptr_tokens, self.runner.banked))
        finally:
            self.runner.banked = None
        return self.runner.run_objects(v["memory_attention"], {v["curr"]: vision_feat.reshape(b, side, side, c)},
                                       objects, "ma.to_decoder", self.observe)

    def memory_frames(self, frame_idx, output_dict, track_in_reverse=False):
        frames, selected, unselected = super().memory_frames(frame_idx, output_dict, track_in_reverse)
        if self.banks_projections:      # the banked chains read these frames' (and their slots') entries
            ex = self.runner
            banked = {ring: [prev["maskmem_features"].projections[ring] for _, prev in frames]
                      for ring in {c.ring for c in ex.chains if c.part == "memory"}}
            if any(c.ring == SLOT_KEYS for c in ex.chains):
                banked[SLOT_KEYS] = [self.bank.slot_key_entry(self.temporal_slot(t_pos), lambda pos: ex.project(
                    pos, "memory_pos")[SLOT_KEYS]) for t_pos, _ in frames]
            ex.banked = banked
        return frames, selected, unselected

    def _unread(self) -> bool:
        """Whether the gather's frame tokens and slot encodings go unread (every reader banked)."""
        return self.runner.banked is not None and self.runner.bank_only

    def frame_tokens(self, prev):
        if self._unread():          # a placeholder of the frame's shape: its rows are the bank's
            return np.zeros((1, math.prod(self.bank.shapes["frames"][:-1]), self.cfg.mem_dim), np.int8)
        return super().frame_tokens(prev)

    def slot_encoding(self, slot: int) -> np.ndarray:
        if self._unread():
            return np.zeros(self.bank.pos_shape[1:], np.int8)
        return self.bank.slot_encoding(slot)


class OverlayVideoPredictor(VideoPredictor):
    """VideoPredictor on an OverlayTracker: outputs past the bank's window release their slots; a frame
    that fails on the overlay is run again once (module docstring)."""

    def __init__(self, tracker: OverlayTracker, max_objects: int = 1, **kwargs):
        super().__init__(tracker, **kwargs)
        self.executor = tracker.runner
        self.max_objects = max_objects     # the objects the bank's rings were sized for (bank_slots)
        self.retries: list[str] = []       # frames a re-run recovered, one line each
        self.faults: dict = {}             # frame -> sw.backends.faults.Fault armed when that frame starts (tests)
        self.batch_objects = True          # the objects' memory attentions batched per frame (False: one by one)
        self._guarded = False

    def _twice(self, frame_idx: int, step):
        """step() under the fault rule: once more after an AcceleratorError, FrameError after a second."""
        if self._guarded:                  # the image encoder inside a frame's step: the frame's rule covers it
            return step()
        ex = self.executor
        ex.driver.frame = frame_idx
        if frame_idx in self.faults:
            ex.driver.device.inject_fault(self.faults.pop(frame_idx))
        self._guarded = True
        try:
            try:
                return step()
            except AcceleratorError as first:
                self.retries.append(f"frame {frame_idx}: layer {ex.current}: {first}; re-ran the frame: recovered")
            try:
                return step()
            except AcceleratorError as again:
                raise FrameError(f"frame {frame_idx}: the overlay failed twice, at layer {ex.current} "
                                 f"({again})") from None
        finally:
            self._guarded = False

    def add_new_points_or_box(self, state, frame_idx, obj_id, *args, **kwargs):
        self._room_for(state, obj_id)
        return super().add_new_points_or_box(state, frame_idx, obj_id, *args, **kwargs)

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self._room_for(state, obj_id)
        return super().add_new_mask(state, frame_idx, obj_id, mask)

    def _room_for(self, state, obj_id) -> None:
        """A new object only while the bank has its slots (its size is fixed when the session starts)."""
        if obj_id not in state.objects and len(state.objects) >= self.max_objects:
            raise BankFull(f"object {obj_id!r}: the memory bank in DDR was made for {self.max_objects} object"
                           f"{'s' * (self.max_objects > 1)} ({', '.join(map(repr, state.objects))} already); "
                           f"make the predictor with objects >= {len(state.objects) + 1}")

    def _features(self, state, frame_idx):
        cache = state.cached_features
        if frame_idx not in cache:      # the frames it replaces out first: their features in DDR (Residents) are
            while len(cache) >= self.feature_cache_size:      # freed before this frame's image encoder allocates,
                cache.popitem(last=False)                     # so every frame allocates as the one feature_cache_size
                                                              # frames before it (LoadedProgram.rebind: a list each)
        return self._twice(frame_idx, lambda: super(OverlayVideoPredictor, self)._features(state, frame_idx))

    def _run_single_frame(self, state, obj, frame_idx, is_init, point_inputs, mask_inputs, reverse, run_mem_encoder,
                          prev_sam_mask_logits=None):
        def step():
            if self.batch_objects and run_mem_encoder and not is_init and point_inputs is None and mask_inputs is None:
                self._attend_objects(state, frame_idx, reverse)       # a propagation step
            return super(OverlayVideoPredictor, self)._run_single_frame(
                state, obj, frame_idx, is_init, point_inputs, mask_inputs, reverse, run_mem_encoder,
                prev_sam_mask_logits)
        return self._twice(frame_idx, step)

    def _attend_objects(self, state, frame_idx: int, reverse: bool) -> None:
        """The memory attention of every object propagate_in_video tracks on this frame (those it is not a
        conditioning frame of), batched, once per frame: each object's step then takes its result.
        Exact: an object's memory attention reads only its own bank, which the frame's steps before it
        (other objects') do not change."""
        tracker = self.tracker
        if any(k[:2] == (frame_idx, reverse) for k in tracker.attended):
            return
        objs = [o for o in state.objects.values() if frame_idx not in o.output_dict["cond_frame_outputs"]]
        feats = self._features(state, frame_idx)
        outs = tracker.attend(frame_idx, feats.vision_feat, [o.output_dict for o in objs], state.num_frames, reverse)
        tracker.attended = {(frame_idx, reverse, id(o.output_dict)): y for o, y in zip(objs, outs)}

    def propagate_in_video(self, state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False):
        cfg = self.cfg
        window = cfg.num_maskmem * cfg.memory_temporal_stride_for_eval
        sign = -1 if reverse else 1
        self.tracker.attended = {}
        try:
            for frame_idx, obj_ids, masks in super().propagate_in_video(state, start_frame_idx,
                                                                        max_frame_num_to_track, reverse):
                self.tracker.attended = {}          # a later pass over this frame reads changed banks
                yield frame_idx, obj_ids, masks
                self.release_old_outputs(state, frame_idx, reverse)
                for obj in state.objects.values():     # features past the memory window: never read again
                    for t, out in obj.output_dict["non_cond_frame_outputs"].items():
                        if (frame_idx - t) * sign >= window:
                            out["maskmem_features"] = None
        finally:
            self.tracker.attended = {}


def bank_slots(cfg, cond_frames: int, objects: int = 1) -> tuple[int, int]:
    """(frame slots, pointer slots) of the bank for `cond_frames` prompted (object, frame) pairs and
    `objects` tracked objects (module docstring)."""
    window = cfg.num_maskmem * cfg.memory_temporal_stride_for_eval
    return (cond_frames + objects * (window + 1) + 1, cond_frames + objects * (cfg.max_obj_ptrs_in_encoder + 1) + 1)


#: the gathered memory's parts (memory_bank node attrs part) and their tensors
BANK_TENSORS = {"memory": "ma.memory", "memory_pos": "ma.memory_pos"}
SLOT_KEYS = "slot_keys"
#: the rings of projections (a slot: every layer's HW token rows), which the memory attention's engines read in
#: place: one DDR buffer per slot and layer (layer_buffer), a segment of the reader's input (RowSegments)
LAYER_RINGS = ("values", "keys", SLOT_KEYS)
#: the rings whose slots are session buffers of their own (a slot's every layer one): the projections', and the
#: frames' (a frame entering the bank is projected from its slot in place: VideoGraphExecutor.project_into)
SLOT_RINGS = LAYER_RINGS + ("frames",)
#: the rings the host alone makes and reads, kept in host memory (no DDR buffer): the object pointers (a host
#: node's, the pointer MLP's, quantised on the host), whose one reader is the gather (a host node) building the
#: pointer tokens; in DDR each would be written once and read back by every frame that attends to it
HOST_RINGS = ("ptrs",)


def layer_buffer(ring: str, slot: int, layer: int) -> str:
    """The session buffer of layer `layer`'s rows of slot `slot` of a SLOT_RINGS ring."""
    return f"bank.{ring}.{slot}.{layer}"


def bank_buffers(rings: dict, slot_pos_bytes: int) -> dict[str, int]:
    """The bank's DDR buffers (name -> bytes) for bank_rings' `rings`: a SLOT_RINGS ring one per slot and
    layer (the frames': one layer), a HOST_RINGS ring none, any other ring one for all its slots; the slot
    encodings ("bank.slot_pos")."""
    out = {}
    for ring, (shape, n) in rings.items():
        if ring in HOST_RINGS:
            continue
        if ring in SLOT_RINGS:
            out.update({layer_buffer(ring, slot, i): math.prod(shape[1:]) for slot in range(n)
                        for i in range(shape[0])})
        else:
            out[f"bank.{ring}"] = n * math.prod(shape)
    return {**out, "bank.slot_pos": slot_pos_bytes}


@dataclass(frozen=True)
class BankedChain:
    """Memory-attention nodes whose output on a memory frame's tokens (a slot encoding's) is kept in the bank,
    computed once when the frame (the slot, per session) enters it: the first node reads the gathered
    `part`, a second (the keys' RoPE) the first's output; the last's output is row `layer` of `ring`."""
    nodes: tuple
    part: str           # "memory" (the frames) or "memory_pos" (the temporal slots' encodings)
    ring: str           # "values", "keys" (a slot per frame) or SLOT_KEYS (a slot per temporal slot)
    layer: int


def banked_chains(graph) -> list[BankedChain]:
    """The cross-attentions' projections of the gathered memory, in layer order: v_proj of the frames
    (values), k_proj + RoPE of the frames (keys) and of the slot encodings (SLOT_KEYS). A graph with the
    keys projected from memory + pos (files quantised before the split) has only the values."""
    readers: dict = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    chains, layers = [], {}
    for part, tensor in BANK_TENSORS.items():
        for first in readers.get(tensor, ()):
            if first.op != "linear" or first.stage != "memory_attention":
                continue
            nxt = readers.get(first.outputs[0], [])
            rope = nxt[0] if len(nxt) == 1 and nxt[0].op == "rope" and nxt[0].attrs.get("exclude") == "O" else None
            ring = SLOT_KEYS if part == "memory_pos" else "keys" if rope else "values"
            chains.append(BankedChain((first.name,) + ((rope.name,) if rope else ()), part, ring, layers.get(ring, 0)))
            layers[ring] = layers.get(ring, 0) + 1
    return chains


def bank_rings(graph, cond_frames: int = 1, objects: int = 1, project_memory: bool = True) -> dict:
    """The bank's rings: name -> (one slot's int8 shape, slots)."""
    from golden_model.quant.video import require_video, tracker_config
    require_video(graph)
    cfg = tracker_config(graph)
    frame_shape = graph.tensors["mem.features"].shape
    frames, ptrs = bank_slots(cfg, cond_frames, objects)
    rings = {"frames": (frame_shape, frames), "ptrs": ((1, cfg.hidden_dim), ptrs)}
    chains = banked_chains(graph) if project_memory else []
    for c in chains:         # a slot: every layer's rows of one frame (temporal slot)
        shape = (sum(d.ring == c.ring for d in chains), frame_shape[1] * frame_shape[2],
                 graph.tensors[c.nodes[-1]].shape[-1])
        rings[c.ring] = (shape, cfg.num_maskmem if c.ring == SLOT_KEYS else frames)
    return rings


def bank_bytes(graph, **kwargs) -> int:
    """DDR bytes the bank takes (its rings and the slot encodings, each buffer rounded to the arena's ALIGN)."""
    buffers = bank_buffers(bank_rings(graph, **kwargs), graph.constants[SLOTS].size)
    return sum(aligned(size) for size in buffers.values())


def video_driver(cfg, backend: str, graph, bitfile=None, program_store=None, **kwargs):
    """A Driver whose arena holds a segment session's (OVERLAY_DDR_BYTES: a frame's programs stay loaded, so
    the next frame only relinks them) plus the memory bank (`kwargs`: bank_rings'); `bitfile`: the
    overlay's .bit on a board (pynq backend); `program_store`: Driver's."""
    from sw.runtime.driver import Driver
    from sw.runtime.overlay_segment import OVERLAY_DDR_BYTES
    return Driver(cfg, backend, ddr_bytes=OVERLAY_DDR_BYTES + bank_bytes(graph, **kwargs),
                  bitfile=None if bitfile is None else str(bitfile), program_store=program_store)


def overlay_video_predictor(qm, executor: VideoGraphExecutor, cond_frames: int = 1, objects: int = 1, observe=None,
                            project_memory: bool = True, **kwargs) -> OverlayVideoPredictor:
    """The golden VideoPredictor on the overlay, its memory bank allocated in the executor's DDR arena."""
    g = qm.graph
    bank = DdrBank(executor.driver.session, bank_rings(g, cond_frames, objects, project_memory), g.constants[SLOTS],
                   executor.frame_stats)
    return OverlayVideoPredictor(OverlayTracker(g, executor, bank, observe), max_objects=objects, **kwargs)


__all__ = ["VideoGraphExecutor", "DdrBank", "BankEntry", "OverlayTracker", "OverlayVideoPredictor", "FrameError",
           "overlay_video_predictor", "bank_slots", "bank_rings", "bank_bytes", "video_driver", "STAGES"]
