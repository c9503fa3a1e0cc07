"""int8 video tracking on the overlay (sw.runtime.video_exec, `track --backend`): a scaled-down tiny SAM 2
(128 px, seeded random weights) tracked on the sim and pynq backends equals the host integer tracker
(VideoIntRunner) node by node and logit for logit; the memory bank lives in fixed DDR slots whatever
the video's length; a frame that fails on the overlay is re-run once on the same bank, a second
failure names the frame and the layer and keeps the frames already written.

Time: the default cases keep one node of each video engine op on the overlay (the rest on the host, as
a placement may); the bench16 placement (everything on the overlay, ~5 s a frame on sim) is slow-marked."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
from PIL import Image

from golden_model.quant.builder import random_model
from golden_model.quant.quantize import calibrate
from golden_model.quant.video import (VideoIntRunner, build_full_graph, calibrate_video, graph_video_predictor,
                                      quantize_video, shifted_frames)
from hw.config import preset
from sw.backends.faults import Fault
from sw.runtime import graph_exec
from sw.runtime import video_exec
from sw.runtime.video_exec import (LAYER_RINGS, BankEntry, BankFull, VideoGraphExecutor, bank_bytes, video_driver,
                                   overlay_video_predictor)

SIZE = 128
CLICK = [60.0, 70.0]
#: the nodes the cheaper cases keep on the overlay, one of each engine op of the video stages (the
#: image encoder stays on the host there)
ON_OVERLAY = ("mem.ds.conv0", "mem.fuser0.dw", "mem.fuser0.norm", "ma.layers.0.cross.v", "ma.layers.0.cross.k_rope",
              "ma.layers.0.cross.sdpa", "ma.layers.0.cross.out", "ma.layers.0.cross_res")


@pytest.fixture(scope="module")
def video_case():
    model = random_model("tiny", SIZE, seed=0)
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    graph = build_full_graph(model)
    stats = calibrate(graph, [photo], prompts_per_image=1)
    calibrate_video(graph, [photo], stats, frames_per_video=2)
    cfg = preset("bench16")
    return quantize_video(graph, stats, key_tile=cfg.cols, preset=cfg.name), cfg, shifted_frames(photo, 11)


def _track(predictor, frames, after_frame=None, frames_out=None):
    """Click on frame 0, track `frames_out` frames (all by default) of the video `frames`: the logits."""
    state = predictor.init_state(frames)
    predictor.add_new_points_or_box(state, 0, 1, points=[CLICK], labels=[1])
    out = []
    for idx, _, logits in predictor.propagate_in_video(state, 0, None if frames_out is None else frames_out - 1):
        out.append(logits)
        if after_frame:
            after_frame(idx, state)
    return out


#: nodes observed whole (not as digests): the gather, whose frame rows go unread on the overlay (placeholders:
#: the bank's keys and values replace every node reading them), and the key projections of the gathered
#: memory, which the overlay runs on the object-pointer tokens alone (the frames' and slots' keys are banked)
WHOLE = ("ma.memory", "ma.memory_pos", ".cross.k", ".cross.kpos")


class _Banked:
    """A WHOLE node's output, equal (==) to another's by the rule of the banked rows: the gather's by shape
    (on the overlay its frame rows are placeholders, never read), a key projection's by its rows (the
    overlay's are the last rows of the host's: the object-pointer tokens)."""

    def __init__(self, name: str, out):
        self.name, self.out = name, np.array(out)

    def __eq__(self, other) -> bool:
        a, b = sorted((self.out, other.out), key=lambda x: x.shape[1])
        if self.name.startswith("ma.memory"):
            return a.shape == b.shape
        return np.array_equal(a, b[:, b.shape[1] - a.shape[1]:])

    __hash__ = None


def _digests(seen: list):
    return lambda node, out: seen.append((node.name, np.asarray(out).dtype.str, _Banked(node.name, out) if
                                          node.name.endswith(WHOLE) else
                                          hashlib.sha1(np.ascontiguousarray(out).tobytes()).hexdigest()))


@pytest.fixture(scope="module")
def reference(video_case):
    """The host integer tracker on the 11-frame video: every node's output (digest) in order, the logits."""
    qm, _, frames = video_case
    seen = []
    return seen, _track(graph_video_predictor(qm.graph, VideoIntRunner(qm), _digests(seen)), frames)


def _mostly_host(monkeypatch, on_overlay=ON_OVERLAY):
    """Placements with only `on_overlay` on the overlay (where the rule puts them)."""
    real = graph_exec.place_all

    def place_all(cfg, layers, **kw):
        return [p if p.layer.name in on_overlay else dataclasses.replace(p, where="host", reason="test: on the host")
                for p in real(cfg, layers, **kw)]
    monkeypatch.setattr(graph_exec, "place_all", place_all)


def _fused_outputs(ref_nodes, ex):
    """The reference's node outputs as the executor observes them: a linear whose store applied its GELU
    (GraphExecutor.fused) or its residual add (GraphExecutor.fused_adds) holds that node's output."""
    holds = {**{lin: g.name for lin, g in ex.fused.items()}, **{lin: a.name for lin, (a, _) in ex.fused_adds.items()}}
    out = list(ref_nodes)
    for i, (name, dtype, _) in enumerate(out):
        if name in holds:
            rider = next(r for r in out[i + 1:] if r[0] == holds[name])
            out[i] = (name, dtype, rider[2])
    return out


def _node_by_node(video_case, reference, frames_out):
    qm, cfg, frames = video_case
    seen = []
    ex = VideoGraphExecutor(qm, cfg, "sim")
    banked, projected = [], []
    project, project_into = ex.project, ex.project_into
    ex.project = lambda tokens, part: projected.append(part) or project(tokens, part)
    ex.project_into = lambda tokens, part, into, **kw: projected.append(part) or project_into(tokens, part, into, **kw)
    digest, ex.in_ddr = _digests(seen), set()        # nodes whose output a run left in DDR (chained)

    def observe(node, out):
        if isinstance(out, graph_exec.DeviceTensor):
            ex.in_ddr.add(node.name)
        digest(node, out)
    predictor = overlay_video_predictor(qm, ex, observe=observe)
    bank, reads = predictor.tracker.bank, []
    read = bank.read
    bank.read = lambda ring, slot, part=None: reads.append(ring) or read(ring, slot, part)
    got = _track(predictor, frames, lambda idx, state: banked.extend(
        state.objects[1].output_dict["cond_frame_outputs"].values()), frames_out)
    ref_nodes, ref_logits = reference
    assert len(seen) <= len(ref_nodes) and [n for n, *_ in seen] == [n for n, *_ in ref_nodes[:len(seen)]]
    assert [n for n, r in zip(seen, _fused_outputs(ref_nodes, ex)) if n != r] == []
    for a, b in zip(ref_logits, got):
        np.testing.assert_array_equal(a, b)
    assert all(isinstance(o["maskmem_features"], BankEntry) and isinstance(o["obj_ptr"], BankEntry) for o in banked)
    # every frame's keys and values projected once, when it entered the bank; a temporal slot's keys once in the
    # session, when a memory frame first sits in it (frame f: frame 0 in slot 6, frames 1..f-1 in slots 5..7-f)
    assert {c.ring for c in ex.chains} == {"values", "keys", "slot_keys"}
    assert (projected.count("memory"), projected.count("memory_pos")) == (frames_out, frames_out - 1), projected
    # each tracked frame's gather: its memory frames' keys, values and slot keys, one read per layer where a
    # reader is on the host (the overlay's read them in place: ex.in_place), and none of the frames' features
    # (the frames' rows of the gather are never read)
    memory_frames = sum(range(1, frames_out))
    on_host = [sum(c.ring == r and c.nodes[-1] not in ex.in_place for c in ex.chains) for r in LAYER_RINGS]
    assert [reads.count(r) for r in LAYER_RINGS + ("frames",)] == [n * memory_frames for n in on_host] + [0]
    return ex


def test_video_nodes_on_every_engine_kind_bit_exact(video_case, reference, monkeypatch):
    """One node of each video engine kind on the overlay (conv, depthwise, GEMM, attention, layernorm,
    ROPE with the pointer tokens' RESCALE), 3 frames: every node equals VideoIntRunner's, the logits too
    (the value projections read from the bank: projected when each frame entered it), and the bank
    holds DDR entries, not arrays."""
    _mostly_host(monkeypatch)
    ex = _node_by_node(video_case, reference, 3)
    on = {r.name: r for r in ex.records.values() if r.where not in ("host", "layout")}
    assert set(on) == set(ON_OVERLAY) and all(r.cycles > 0 for r in on.values() if r.name != "ma.layers.0.cross_res")
    assert ex.in_place == {"ma.layers.0.cross.v"}         # its reader, the attention, binds the bank's values
    # its last run: frame 2's keys entering the bank, ROPE alone (the pointers' RESCALE runs per tracked frame)
    assert on["ma.layers.0.cross.k_rope"].calls == 1
    # the memory attention chained in DDR: the cross-attention's output read in place by its out_proj, whose
    # store adds the residual (the fused add)
    assert "ma.layers.0.cross.sdpa" in ex.in_ddr and on["ma.layers.0.cross.out"].holds == "ma.layers.0.cross_res"


@pytest.mark.slow
def test_every_video_node_bit_exact_on_bench16(video_case, reference):
    """bench16's own placement (the memory encoder and attention all on the overlay), 2 frames (~20 s). The
    image encoder's outputs and the memory attention's stay in DDR for the runs that read them (Residents: none
    read back, none written again), and the decoder's upscaling chains there up to the logits."""
    ex = _node_by_node(video_case, reference, 2)
    on = {r.where for r in ex.records.values() if r.stage in ("memory_encoder", "memory_attention")}
    assert on >= {"gemm", "conv", "depthwise", "attention", "vector"}
    # the last frame: the image encoder's outputs and the decoder's upscaling chain in DDR; the mask downsampler's
    # convolutions and the fuser's depthwise ones between token rows (the host writes the mask's pixels alone),
    # the layernorms after them reading in place: no other data byte crosses (descriptors relinked aside)
    rec = ex.records
    data = {n: r.ddr_bytes - r.program_bytes for n, r in rec.items()}
    kept = ("neck.fpn2", "feat_s0", "feat_s1", "image_embed", "src", "ma.to_decoder", "mem.pix_proj", "dec.up.conv0",
            "dec.up.add_s1", "dec.up.conv3", "dec.up.add_s0", "dec.up.gelu2", "mem.ds.conv1", "mem.ds.conv2",
            "mem.ds.conv3", "mem.fuser0.dw", "mem.fuser1.dw", "mem.fuser0.norm", "mem.fuser1.norm")
    assert {n: data[n] for n in kept if data[n]} == {}
    assert data["mem.ds.conv0"] == rec["mem.ds.conv0"].own_bytes == SIZE * SIZE
    assert all(rec[n].cycles == ex.placements[n].cycles for n in ("mem.ds.conv1", "mem.fuser0.dw"))


def test_bank_bounded_read_in_place_and_a_failed_frame_rerun_on_the_same_bank(video_case, reference, monkeypatch):
    """11 frames on a bank of 9 frame slots (made for no prompted frame, so frame 9 takes frame 1's slot
    and frame 10 reads it): the arena's allocation is the same after frame 3 and frame 10 (the bank's
    slots are reused: the frames' in use stop growing once the window is full); layer 0's cross-attention
    (k_sum on the vector engine, the attention's V) reads its memory frames' keys, slot keys and values in
    place: the host reads none of layer 0's bank bytes, only the later layers' (their readers on the host),
    and writes none of a new frame's layer 0 values and keys (STOREd into its slots by their nodes);
    a fault that outlives the session's own retry on frame 2 makes the frame run again, and every frame
    still equals the host's bit for bit (the failed attempt changed nothing it reads)."""
    qm, cfg, frames = video_case
    _mostly_host(monkeypatch, ON_OVERLAY + ("ma.layers.0.cross.k", "ma.layers.0.cross.k_sum", "mem.features"))
    ex = VideoGraphExecutor(qm, cfg, "sim")
    ex.driver.CACHED_PROGRAMS = 0            # the arena without the driver's program cache (at most 16 programs)
    assert {c.ring for c in ex.chains if c.nodes[-1] in ex.in_place} == set(LAYER_RINGS)
    assert all(c.layer == 0 for c in ex.chains if c.nodes[-1] in ex.in_place)
    predictor = overlay_video_predictor(qm, ex, cond_frames=0)
    predictor.faults[2] = Fault("read_slverr", runs=2)          # both tries of the session's program
    arena, bank = ex.driver.session.arena, predictor.tracker.bank
    device, used, reads, slots = ex.driver.device, {}, {}, {}
    spans = {name: (b.addr, b.end) for name, b in bank.buffers.items()}
    read, write, writes = device.read, device.write, {}

    def count(into, addr, n):
        """Host bytes to or from a bank buffer, by its name's last part (a LAYER_RINGS buffer's: its layer)."""
        for name, (a, e) in spans.items():
            if a <= addr < e:
                into[name] = into.get(name, 0) + n
    device.read = lambda addr, n: count(reads, addr, n) or read(addr, n)
    device.write = lambda addr, data: count(writes, addr, len(data)) or write(addr, data)
    uploads: dict = {}        # host arrays written into new buffers, by the node running (VideoGraphExecutor.current)
    upload = video_exec._upload
    monkeypatch.setattr(video_exec, "_upload", lambda drv, x, *a: uploads.setdefault(ex.current, []).append(
        np.asarray(x).size) or upload(drv, x, *a))

    def after(idx, state):
        used[idx] = (arena.size - arena.free_bytes, bank.in_use("frames"), bank.in_use("ptrs"))
        out = state.objects[1].output_dict["non_cond_frame_outputs"].get(idx)      # frame 0: the prompted one
        slots[idx] = out and out["maskmem_features"].slot
    got = _track(predictor, frames, after)
    assert len(got) == len(reference[1]) == 11
    for a, b in zip(reference[1], got):
        np.testing.assert_array_equal(a, b)
    assert len(predictor.retries) == 1 and predictor.retries[0].startswith("frame 2: layer ")
    assert used[3][0] == used[10][0] == bank.nbytes + ex.kept_bytes(), used       # and the depthwise node's planes
    assert bank.nbytes == bank_bytes(qm.graph, cond_frames=0) and ex.kept_bytes() > 0
    assert used[7][1] < used[8][1] == bank.counts["frames"], used     # at most num_maskmem + 2 frames
    assert used[10][2] < bank.counts["ptrs"], used
    assert slots[9] == slots[1] and bank.counts["frames"] == 9, slots       # a slot used again, read by frame 10
    layer = {r: {name for name in spans if name.startswith(f"bank.{r}.") and name.endswith(".0")} for r in LAYER_RINGS}
    assert not any(set(reads) & names for names in layer.values())     # layer 0's bank rows never read by the host
    assert any(name.endswith(".1") for name in reads), reads           # the other layers' (their readers on the host)
    # a new frame's layer 0 values and keys STOREd into its slots by their nodes (on the overlay), not by the host
    assert not (set(writes) & (layer["values"] | layer["keys"])) and any(n.endswith(".1") for n in writes), writes
    # nor the pointer tokens' rows of a tracked frame: left in DDR by k_proj, the RoPE's RESCALE and v_proj, each
    # chain's a segment of its readers' inputs (not computed on the host and written in); the pointer tokens
    # themselves (the gather's, a host node's) written once a frame for both chains
    assert uploads and not (set(uploads) & {"ma.layers.0.cross.k_rope", "ma.layers.0.cross.v"}), uploads
    assert len(uploads["ma.layers.0.cross.k"]) == len(got) - 1 + len(predictor.retries), uploads   # once a run
    # a new frame's features STOREd into its frames slot by the memory encoder's last node (the vector engine's
    # add), not written by the host (its projections on the host read them there); the pointers (a host node's,
    # read by the gather, a host node) kept on the host: no DDR buffer, none read back
    assert not any(name.startswith("bank.frames.") for name in writes) and ex.records["mem.features"].cycles, writes
    assert not any(name.startswith("bank.ptrs") for name in spans)


def test_track_backend_pynq_equals_int8_host_and_keeps_frames_on_a_second_failure(video_case, monkeypatch,
                                                                                 tmp_path, capsys):
    from golden_model.quant.qfile import save_quantised
    from sw.cli import main
    qm, cfg, frames = video_case
    _mostly_host(monkeypatch)
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, f in enumerate(frames[:2]):
        Image.fromarray(f).save(clip / f"{i:05d}.png")
    qfile = save_quantised(qm, tmp_path / "v.safetensors")
    common = ["track", str(clip), "--point", "60,70", "--preset", "bench16", "--quantised", str(qfile)]
    assert main(common + ["--precision", "int8", "-o", str(tmp_path / "h"), "--logits-out", str(tmp_path / "hl")]) == 0
    assert main(common + ["--backend", "pynq", "-o", str(tmp_path / "o"), "--logits-out", str(tmp_path / "ol")]) == 0
    out = capsys.readouterr()
    for i in range(2):
        assert (tmp_path / "hl" / f"{i:05d}.npy").read_bytes() == (tmp_path / "ol" / f"{i:05d}.npy").read_bytes()
    assert "memory bank in DDR" in out.out and "memory attention" in out.out and "frame 1 (00001)" in out.err
    assert main(common + ["--backend", "sim", "--fault", "read_slverr:persistent", "--fault-frame", "1",
                          "-o", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "frame 1: the overlay failed twice, at layer " in err and "tracked 1 object over 1 frames" in err
    assert sorted(p.name for p in (tmp_path / "f").glob("*.png")) == ["00000.png"]



#: the batching case's overlay nodes: memory attention nodes of each batching kind (shared by the objects,
#: row-wise over all objects' rows, the value projection of pointer tokens, ROPE with the pointers' tail,
#: attention per group of equal memory lengths); the rest on the host
BATCHED = ("ma.layers.0.cross.q", "ma.layers.0.cross.k", "ma.layers.0.cross.v", "ma.layers.0.cross.k_rope",
           "ma.layers.0.cross.sdpa", "ma.layers.0.cross_res", "ma.layers.1.self.sdpa", "ma.layers.1.cross.sdpa",
           "ma.layers.1.norm3", "ma.layers.1.linear1", "ma.layers.0.cross.out", "ma.layers.1.cross.out",
           "ma.layers.1.cross_res",      # the out_projs with their residual adds fused (batched residuals)
           "ma.layers.0.cross.k_sum")    # the keys' chain read in place: its k_proj's pointer rows in DDR


def _objects_script(predictor, frames, after_frame=None, scale=1.0):
    """Objects 1 (click) and 2 (box) on frame 0, frames 0-2; object 3 added on frame 2 and a correction
    (negative click) for object 1 there, frames 2-4; object 2 dropped, frame 5; backward, frames 5-4. Every
    mask returned, in order. `scale`: the points' (a 128 px frame's) for frames of another size."""
    state = predictor.init_state(frames)
    out = [predictor.add_new_points_or_box(state, 0, 1, points=[[v * scale for v in CLICK]], labels=[1])[2],
           predictor.add_new_points_or_box(state, 0, 2, box=[v * scale for v in (10, 15, 50, 60)])[2]]

    def run(start, last, reverse=False):
        for idx, ids, logits in predictor.propagate_in_video(state, start, abs(last - start), reverse):
            out.append(logits)
            if after_frame:
                after_frame(idx, state)
    run(0, 2)
    out.append(predictor.add_new_points_or_box(state, 2, 3, points=[[100.0 * scale, 40.0 * scale]], labels=[1])[2])
    out.append(predictor.add_new_points_or_box(state, 2, 1, points=[[30.0 * scale, 90.0 * scale]], labels=[0])[2])
    run(2, 4)
    del state.objects[2]        # its outputs go, their bank slots with them
    run(5, 5)
    run(5, 4, reverse=True)
    assert state.image_encoder_calls == 6 + 1      # once per frame, and frame 4 again going back
    return out


def test_objects_batched_bit_exact_per_object_with_a_bounded_per_object_bank(video_case, monkeypatch):
    """3 objects (one added on frame 2, a correction, one dropped, then backward), the memory attention of a
    frame's objects batched: every mask equals the host int8 tracker's, bit for bit. Shared nodes run once
    a frame, row-wise nodes once over all objects, attention once per memory length (objects 1 and 3
    differ). Each object's bank entries hold slots of their own (disjoint DDR bytes), freed with the
    object; the arena stays as allocated for 3 objects whatever the frames or the object added later; a
    4th object is refused with the bank's size."""
    qm, cfg, frames = video_case
    ref = _objects_script(graph_video_predictor(qm.graph, VideoIntRunner(qm)), frames)
    _mostly_host(monkeypatch, BATCHED)
    ex = VideoGraphExecutor(qm, cfg, "sim")
    ex.driver.CACHED_PROGRAMS = 0            # the arena without the driver's program cache
    predictor = overlay_video_predictor(qm, ex, cond_frames=3, objects=3)
    calls, node_fn = {}, ex.node_fn

    def counted(node):
        calls.setdefault(node.name, 0)
        calls[node.name] += 1
        return node_fn(node)
    ex.node_fn = counted
    arena, bank = ex.driver.session.arena, predictor.tracker.bank
    used, per_frame, slots = {}, {}, {}

    def after(idx, state):
        used[idx] = arena.size - arena.free_bytes
        slots.setdefault(idx, bank.in_use("frames"))
        per_frame.setdefault(idx, (dict(calls), ex.frame_stats.batch_note()))      # the first pass's
        calls.clear()
        ex.frame_stats.reset()
        owned = {}                            # object -> the (ring, slot) its outputs hold
        for obj_id, obj in state.objects.items():
            for outs in obj.output_dict.values():
                for o in outs.values():
                    feats = o["maskmem_features"]
                    for e in (feats, o["obj_ptr"], *getattr(feats, "projections", {}).values()):
                        if isinstance(e, BankEntry):
                            owned.setdefault(obj_id, set()).add((e.ring, e.slot))
        ids = list(owned)
        assert all(not owned[a] & owned[b] for a in ids for b in ids if a != b), owned
        spans = sorted((b.addr, b.end) for b in bank.buffers.values())
        assert all(e <= a for (_, e), (a, _) in zip(spans, spans[1:]))       # rings disjoint in the arena
    got = _objects_script(predictor, frames, after)
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)
    assert used[0] == used[4] == used[5] == bank.nbytes, used          # nothing allocated per frame or object
    assert slots[5] < slots[4], slots                                  # object 2's slots went with it
    # frame 3: objects 1, 2, 3 tracked; 1 and 2 attend to equal memory lengths, 3 to a shorter one
    runs, note = per_frame[3]
    assert runs["ma.layers.0.cross.q"] == 1 and runs["ma.layers.1.linear1"] == 1
    assert runs["ma.layers.0.cross.sdpa"] == 2 and runs["ma.layers.1.self.sdpa"] == 1
    assert note == "3 objects (2 memory lengths)" and per_frame[5][1] == "2 objects (2 memory lengths)"
    state = predictor.init_state(frames[:2])
    for i in (1, 2, 3):
        predictor.add_new_points_or_box(state, 0, i, points=[CLICK], labels=[1])
    with pytest.raises(BankFull, match="made for 3 objects"):
        predictor.add_new_points_or_box(state, 1, 4, points=[CLICK], labels=[1])


def test_objects_batched_read_in_place_bit_exact_with_unequal_memory_lengths():
    """The objects script on micro with preset sim's own placement (the memory attention on the overlay, chained),
    every mask equal to the host int8 tracker's. A batch moves through the host no byte one object's run would
    not: every object's pointer rows read in place, the frame's queries and residual bound once per object, each
    object's output left in DDR for its decoder; objects whose memories differ in length (object 3 added on
    frame 2) attend in a call per length, each reading its objects' rows in place and writing its output into
    their rows of one buffer. From frame 2 the memory-attention nodes relay only a temporal slot's keys, projected
    through the host on its first use (frames 1-3), and from frame 4 nothing, nor does anything move outside a
    node (frames 0 and 1 relay what one object's run does: the prompted frame's encoding, ma.x0 once)."""
    qm, cfg, frames, _ = micro_video_case(6)
    scale = np.shape(frames[0])[0] / SIZE          # micro's 64 px frames
    ref = _objects_script(graph_video_predictor(qm.graph, VideoIntRunner(qm)), frames, scale=scale)
    ex = VideoGraphExecutor(qm, cfg, "sim", video_driver(cfg, "sim", qm.graph, cond_frames=3, objects=3))
    predictor = overlay_video_predictor(qm, ex, cond_frames=3, objects=3)
    seen = []

    def after(idx, state):
        fs = ex.frame_stats
        relayed = {name for name, (b, p, o) in fs.nodes.items() if b - p - o and ex.records[name].stage in (
            "memory_attention", "memory_encoder")}
        outside = sum(st.ddr_bytes for st in fs.stages.values()) - sum(b for b, _, _ in fs.nodes.values())
        seen.append((idx, fs.batch_note(), relayed, outside))
        device, engine = (sum(getattr(st, k) for st in fs.stages.values()) for k in ("device_s", "engine_s"))
        assert 0 < device <= engine         # the overlay's runs: part of the engine nodes' time
        fs.reset()
    got = _objects_script(predictor, frames, after, scale)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
    slot_keys = {n for c in ex.chains if c.ring == "slot_keys" for n in c.nodes}
    assert all(relayed <= slot_keys for idx, _, relayed, _ in seen if idx >= 2), seen      # (1: ma.x0, as one object)
    frame4 = next(x for x in seen if x[0] == 4)       # going forward
    assert frame4[1:] == ("3 objects (2 memory lengths)", set(), 0)


def micro_video_case(frames: int):
    """(quantised micro model (64 px) for video on preset sim, the preset, `frames` shifted frames of a seeded
    photo, a click near its middle): the scaled-down tracker the rtl and bank tests run."""
    cfg = preset("sim")
    model = random_model("micro", seed=0)
    size = model.image_size
    photo = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    graph = build_full_graph(model)
    stats = calibrate(graph, [photo], prompts_per_image=1)
    calibrate_video(graph, [photo], stats, frames_per_video=2)
    qm = quantize_video(graph, stats, key_tile=cfg.cols, preset=cfg.name)
    return qm, cfg, shifted_frames(photo, frames), [size * 0.45, size * 0.55]


def _steady_frames(qm, cfg, frames, clicks, backend="sim", wraps=2, cache=1):
    """The int8 tracker on the overlay (the preset's own placement) against the host int8 tracker's logits on
    every frame of a video long enough for the memory attention to meet each placement of the bank's slots
    `wraps` times once its memory is full, one object per click (several: their memory attentions batched): per
    frame (host <-> DDR bytes, its nodes': (bytes, programs', the host ops' own), the arena's use, the memory
    lengths, the programs relinked: Session.relinks); the ring's period (its slots not held by the prompted frames
    taken in turn, one per object a frame); the first frame of the full memory. `cache`: the frames whose features
    the predictor keeps (feature_cache_size)."""
    ref = [logits for _, _, logits in _clicked(graph_video_predictor(qm.graph, VideoIntRunner(qm)), frames, clicks)]
    k = len(clicks)
    ex = VideoGraphExecutor(qm, cfg, backend, video_driver(cfg, backend, qm.graph, cond_frames=k, objects=k))
    predictor = overlay_video_predictor(qm, ex, cond_frames=k, objects=k, feature_cache_size=cache)
    session = ex.driver.session
    arena, bank, seen, relinks = session.arena, predictor.tracker.bank, [], 0
    for idx, _, logits in _clicked(predictor, frames, clicks):
        np.testing.assert_array_equal(logits, ref[idx])
        fs = ex.frame_stats
        seen.append((sum(st.ddr_bytes for st in fs.stages.values()), tuple(map(sum, zip(*fs.nodes.values()))),
                     arena.size - arena.free_bytes, fs.batches, session.relinks - relinks))
        fs.reset()
        relinks = session.relinks
    assert len(seen) == len(frames)
    free = bank.counts["frames"] - k
    period = free // math.gcd(free, k)
    full = next(i for i, f in enumerate(seen) if f[3] == seen[-1][3])
    assert len(frames) >= full + wraps * period, (full, period)
    return seen, period, full


def _clicked(predictor, frames, clicks):
    state = predictor.init_state(frames)
    for i, click in enumerate(clicks):
        predictor.add_new_points_or_box(state, 0, i + 1, points=[click], labels=[1])
    return predictor.propagate_in_video(state)


#: micro's other clicks (objects 2 and 3)
MICRO_CLICKS = ([20.0, 20.0], [45.0, 15.0])


@pytest.mark.parametrize("backend, objects", [("sim", 1), pytest.param("pynq", 1, marks=pytest.mark.slow(seconds=60)),
                                              pytest.param("sim", 3, marks=pytest.mark.slow(seconds=60))])
def test_steady_frames_rewrite_no_descriptor_as_the_bank_wraps(backend, objects):
    """micro (64 px, 3 memory frames: 6 frame slots, 5 taken in turn) tracked 26 frames on preset sim (the sim
    backend, and pynq's library on the simulated device), each equal to the host int8 tracker's: once the memory
    is full (16 pointers) the memory attention's programs meet each placement of the ring's slots once, writing
    its descriptor list, and on the ring's next wrap write none: a frame moves the same bytes as the frame one
    period before, no program byte among them, the arena flat. 3 objects (their memory attentions batched; 16
    frame slots, 13 taken in turn, 3 a frame) 42 frames likewise: their decoders' reads of their parts of the
    batch's output (one program, a descriptor list per object) write none either."""
    if backend == "pynq":
        pytest.importorskip("pynq")
    qm, cfg, frames, click = micro_video_case(16 + 2 * (5 if objects == 1 else 13))
    seen, period, full = _steady_frames(qm, cfg, frames, [click, *MICRO_CLICKS][:objects], backend)
    assert (full, period) == (16, 5 if objects == 1 else 13)
    first, wrapped = seen[full:full + period], seen[full + period:]
    assert all(nodes[1] > 0 for _, nodes, *_ in first)          # a placement's list, written once
    assert [(total, nodes[1]) for total, nodes, *_ in wrapped] == [(seen[-1][0], 0)] * len(wrapped)
    assert all(total == nodes[0] for total, nodes, *_ in wrapped)      # nothing outside the nodes
    assert len({f[2] for f in seen[full + period - 1:]}) == 1


def test_steady_frames_relink_no_program_with_the_last_frames_features_kept():
    """micro tracked keeping two frames' features (feature_cache_size=2, as `sam2fpga track` and the overlay_track
    benchmark): frame t - 1's stay in DDR while frame t's are made, so a frame's activations sit where frame t - 2's
    did, two placements in turn; each program keeps a descriptor list for each (LoadedProgram.rebind), the bank's
    readers one for each pair of slot and activation placement (5 slots in turn: 10 pairs). Once each is met, a frame
    relinks no program and writes no descriptor; every frame equal to the host int8 tracker's."""
    qm, cfg, frames, click = micro_video_case(16 + 2 * 5 + 3)
    seen, period, full = _steady_frames(qm, cfg, frames, [click], cache=2)
    relinks = [f[4] for f in seen]
    assert (full, period) == (16, 5)
    assert all(r > 0 for r in relinks[1:4]), relinks                # the activations' two placements met
    assert relinks[full + 2 * period:] == [0] * 3, relinks
    assert [nodes[1] for _, nodes, *_ in seen[full + 2 * period:]] == [0] * 3


@pytest.mark.parametrize("objects, frames", [pytest.param(1, 34, marks=pytest.mark.slow(seconds=120)),
                                             pytest.param(3, 45, marks=pytest.mark.slow(seconds=300))])
def test_steady_frames_move_only_the_host_ops_own_bytes_on_bench16(video_case, objects, frames):
    """The issue's target on tiny 128 px, bench16's placement (the bench's case, docs/runtime.md): once the memory
    is full and the ring of 9 slots has wrapped once more, a frame moves the host ops' own bytes (the frame in, the
    logits out, the host nodes' tensors) and nothing else: no program byte, nothing relayed, nothing outside a
    node; every frame equal to the host int8 tracker's. 3 objects (their memory attentions batched; 25 slots
    taken in turn, 3 a frame) likewise."""
    qm, cfg, _ = video_case
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)      # video_case's
    seen, period, full = _steady_frames(qm, cfg, shifted_frames(photo, frames),
                                        [CLICK, [30.0, 30.0], [100.0, 40.0]][:objects], wraps=1)
    assert (full, period) == (16, 9 if objects == 1 else 25)
    for total, (nodes, programs, own), *_ in seen[full + period:]:
        assert (total, nodes, programs) == (own, own, 0)
    assert len({f[2] for f in seen[full + period - 1:]}) == 1


@pytest.mark.parametrize("extra, message", [
    (["--backend", "sim", "--precision", "float"], "drop --precision float"),
    (["--fault", "hang"], "--fault needs --backend"),
    (["--backend", "sim", "--fault", "hang", "--fault-frame", "5"], "--fault-frame 5: the video has 2 frames"),
    (["--backend", "rtl"], "invalid choice"),
])
def test_track_backend_usage_errors(tmp_path, capsys, extra, message):
    from sw.cli import main
    for i in range(2):
        Image.new("RGB", (32, 32)).save(tmp_path / f"{i}.png")
    with pytest.raises(SystemExit) as e:
        main(["track", str(tmp_path), "--point", "5,5", "-o", str(tmp_path / "o")] + extra)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_rope_of_a_256px_map_runs_on_the_kv260_vector_engine():
    """Memory attention's RoPE at 256 px (16 x 16 positions, d 256): its whole tables (32,768 pair slots) do
    not fit the engine's 8,192, its axial factors do; keys over 2 memory frames (rope_k_repeat) and 4
    excluded pointer tokens, bit for bit the integer interpreter's rope."""
    from types import SimpleNamespace

    from golden_model import intvec
    from golden_model.memory_attention import axial_rope
    from golden_model.quant.video import _rope_int, rope_arrays
    from sw.runtime.driver import Driver
    from sw.runtime.video_exec import _rope

    side, d = 16, 256
    tables = intvec.RopeParams.make(*axial_rope(d, side, side), 1.0, 1.0)
    node = SimpleNamespace(name="k_rope", attrs={"exclude": 4})
    cache: dict = {}
    runner = SimpleNamespace(params={"k_rope": rope_arrays(0.05, 0.04)}, run_dims={},
                             cached=lambda key, make: cache[key] if key in cache else cache.setdefault(key, make()))
    x = np.random.default_rng(3).integers(-128, 128, (1, 2 * side * side + 4, d), dtype=np.int8)
    args = [x, tables.cos, tables.sin]
    drv = Driver(preset("kv260"), "sim")
    got, runs = _rope(drv, node, args, runner)
    assert np.array_equal(got, _rope_int(node, args, runner)) and len(runs) == 2
