"""Long-video tracking holds up: memory flat after the bank fills, every frame written, resumable.

The soak runs `sam2fpga track` on 1,000 frames at a reduced input size (128 x 128: every block of
SAM 2.1 tiny runs, 8 x 8 memory features) on the float golden path; the int8 path does not exist yet.
Figures in docs/robustness.md.
"""
from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest

from tests.robust_helpers import small_model
from tests.soak_track import run_track, track_in_pieces, write_orbit_clip

#: Resident memory may move this much once the memory bank is full (frame SOAK_SETTLED on); keeping every
#: frame's output, as the official predictor does, adds ~25 KiB a frame here (~24 MiB over the soak).
RSS_TOLERANCE = 4 << 20
SOAK_FRAMES, SOAK_SIZE, SOAK_SETTLED = 1000, 128, 50
#: Resumption is checked on the first PIECES_FRAMES frames, stopped at PIECES_SPLIT: past the bank's
#: 16-frame reach, so the resumed piece starts from a full bank (frames 0..119 do not depend on later ones).
PIECES_FRAMES, PIECES_SPLIT = 120, 60
POINT = (48, 24)


def test_releasing_old_outputs_changes_nothing(tmp_path):
    """20 frames (past the 16-frame reach of memories and object pointers): logits and object scores
    bit-identical with and without release_old_outputs; the kept outputs stay bounded."""
    from golden_model.video import VideoPredictor
    frames = write_orbit_clip(tmp_path / "f", 20)
    model = small_model(64)
    runs = []
    for release in (False, True):
        predictor = VideoPredictor(model.tracker)
        state = predictor.init_state(frames)
        predictor.add_new_points(state, 0, 1, [list(POINT)], [1])
        got, kept = [], []
        for idx, _, logits in predictor.propagate_in_video(state):
            got.append((logits.copy(), predictor.object_score_logits(state, idx, 1)))
            if release:
                predictor.release_old_outputs(state, idx)
            kept.append(len(state.objects[1].output_dict["non_cond_frame_outputs"]))
        runs.append((got, kept))
    (plain, kept_all), (released, kept_few) = runs
    for (a, sa), (b, sb) in zip(plain, released):
        assert np.array_equal(a, b) and sa == sb
    assert kept_all[-1] == 19 and max(kept_few) == 16


@pytest.mark.slow(seconds=140)
def test_soak_1000_frames(tmp_path):
    frames = write_orbit_clip(tmp_path / "frames", SOAK_FRAMES)
    out, logits = tmp_path / "out", tmp_path / "logits"
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    code, err, samples = run_track(tmp_path / "frames", out, logits, SOAK_SIZE, POINT)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert code == 0, err[-2000:]

    # every frame's output written, complete
    assert sorted(p.stem for p in out.glob("*.png")) == [p.stem for p in frames]
    assert sorted(p.stem for p in logits.glob("*.npy")) == [p.stem for p in frames]
    scores = json.loads((out / "object_scores.json").read_text())["object_score_logits"]
    assert list(scores) == [p.stem for p in frames]
    assert not list(tmp_path.rglob("*.tmp"))

    # resident memory flat once the bank is full
    settled = [rss for _, done, rss in samples if done >= SOAK_SETTLED]
    assert len(settled) > 20, "too few samples after the bank filled"
    growth = max(settled) - settled[0]
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(f"\nsoak: {SOAK_FRAMES} frames at {SOAK_SIZE} x {SOAK_SIZE}: {wall:.0f} s wall, {cpu:.0f} s CPU "
          f"({1000 * cpu / SOAK_FRAMES:.0f} ms a frame); RSS {settled[0] / 2**20:.1f} MiB at frame {SOAK_SETTLED}, "
          f"max {max(settled) / 2**20:.1f} MiB after it (+{growth / 2**20:.2f} MiB, tolerance "
          f"{RSS_TOLERANCE / 2**20:.0f} MiB), {len(samples)} samples")
    assert growth <= RSS_TOLERANCE

    # the same result tracked in two pieces (stopped after frame 59, resumed at 60 on the same state)
    t1, cpu2 = time.monotonic(), time.process_time()
    pieces = track_in_pieces(frames[:PIECES_FRAMES], SOAK_SIZE, POINT, PIECES_SPLIT)
    assert list(pieces) == [p.stem for p in frames[:PIECES_FRAMES]]
    differ = [stem for stem, x in pieces.items() if not np.array_equal(x, np.load(logits / f"{stem}.npy"))]
    assert not differ, f"{len(differ)} frames differ, first {differ[0]}"
    print(f"soak: two pieces ({PIECES_SPLIT} + {PIECES_FRAMES - PIECES_SPLIT} frames) bit-identical to the one-piece "
          f"run ({time.monotonic() - t1:.0f} s wall, {time.process_time() - cpu2:.0f} s CPU)")
