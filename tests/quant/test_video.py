"""int8 video tracking: the float video graph is the golden float tracker; the integer tracker with its
int8 memory bank stays close to it (stated bounds); the quantised file carries the video part, loads
strictly, and `track --precision int8` uses it.

A scaled-down SAM 2 (128 px input: 8 x 8 memory tokens a frame, random weights) keeps the default run
short; the 12-frame case at 256 is slow-marked and the full-size figures come from
`python -m benchmarks.quant --video` (docs/quantisation.md)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from golden_model.quant.builder import build_graph, random_model
from golden_model.quant.calibset import CALIB_PHOTOS, skimage_photos
from golden_model.quant.qfile import QuantFileError, load_quantised, save_quantised
from golden_model.quant.quantize import calibrate, quantize
from golden_model.quant.video import (VideoIntRunner, build_full_graph, calibrate_video, graph_video_predictor,
                                      quantize_video, shifted_frames)
from golden_model.quant.video_accuracy import compare_tracks, shift_object_score
from sw.cli import main

FRAMES = 4


def _case(size: int, n_frames: int, calib_photos: int, calib_frames: int):
    pytest.importorskip("skimage")
    model = random_model("tiny", size, seed=0)
    photo = skimage_photos(["chelsea"])["chelsea"]
    click = [photo.shape[1] / 2, photo.shape[0] / 2]
    frames = shifted_frames(photo, n_frames)
    shift_object_score(model, frames[0], click)     # random weights: the object present on frame 0
    graph = build_full_graph(model)
    calib = list(skimage_photos(CALIB_PHOTOS[:calib_photos]).values())
    stats = calibrate(graph, calib, prompts_per_image=2)
    calibrate_video(graph, calib, stats, frames_per_video=calib_frames)
    return model, graph, quantize_video(graph, stats, key_tile=32), frames, click


@pytest.fixture(scope="module")
def case():
    return _case(128, FRAMES, calib_photos=2, calib_frames=3)


@pytest.fixture(scope="module")
def compared(case):
    model, graph, qm, frames, click = case
    return compare_tracks(qm, model, frames, click, graph)


def test_float_video_graph_is_the_golden_tracker(compared):
    """The graph's structure (official numerics: values projected before attention, RoPE after the
    projections, gamma folded into pwconv2) against golden_model.video, which is checked against the
    official predictor: same logits within float rounding (measured 6e-6 at 256)."""
    rows, _, _ = compared
    assert max(r["float_graph_err"] for r in rows) < 1e-3, rows


def test_int8_track_close_to_float(compared):
    """Stated bounds at 128 px on random weights, 4 frames (measured: IoU 0.953-0.990, the memory
    attention's output 23.6 dB and the bank's frames 23.0 dB over the track)."""
    rows, sqnr, _ = compared
    assert len(rows) == FRAMES
    assert all(0.02 < r["float_fg"] < 0.98 for r in rows[1:3]), "trivial case: masks empty or full"
    assert min(r["mask_iou"] for r in rows) >= 0.90, rows
    assert sqnr["ma.norm"] > 18 and sqnr["mem.features"] > 18, sqnr


def test_int8_mask_prompt_and_correction_close_to_float(case):
    """A mask prompt on frame 0 (taken as the output; its pointer from the mask branch), tracked, then a
    correction click on frame 2 (its tracked logits through the mask branch): the float graph's tracker
    is the golden one, int8 within stated bounds at 128 px (measured: IoU 1.0, 0.988 and 0.970 on frames
    0, 1 and 3, 0.931 on the corrected frame 2)."""
    model, graph, qm, frames, click = case
    mask = np.zeros(frames[0].shape[:2], bool)
    mask[100:200, 150:300] = True
    rows, _, _ = compare_tracks(qm, model, frames, click, graph, mask=mask, correction=(2, [click[0] + 30, click[1]]))
    assert max(r["float_graph_err"] for r in rows) < 1e-3, rows
    assert all(0.02 < r["float_fg"] < 0.98 for r in rows), "trivial case: masks empty or full"
    assert min(r["mask_iou"] for i, r in enumerate(rows) if i != 2) >= 0.90, rows
    assert rows[2]["mask_iou"] >= 0.85, rows


def test_bank_is_int8_and_the_file_round_trips(case, tmp_path):
    """The bank holds int8 frames and pointers; a saved and reloaded model tracks bit for bit alike
    (two runner instances: the integer track is deterministic)."""
    _, _, qm, frames, click = case
    back = load_quantised(save_quantised(qm, tmp_path / "v.safetensors"), model="tiny", preset="kv260")
    runs = []
    for m in (qm, back):
        p = graph_video_predictor(m.graph, VideoIntRunner(m))
        state = p.init_state(frames[:3])
        p.add_new_points_or_box(state, 0, 1, points=[click], labels=[1])
        runs.append([x.copy() for _, _, x in p.propagate_in_video(state)])
        out = state.objects[1].output_dict["non_cond_frame_outputs"][2]
        assert out["maskmem_features"].dtype == np.int8 and out["obj_ptr"].dtype == np.int8
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("key,change,message", [
    ("param/ma.layers.0.cross.k_rope/tail_multiplier", None, "ma.layers.0.cross.k_rope/tail_multiplier"),
    ("const/ma.maskmem_pos#slots", np.float32, "ma.maskmem_pos#slots: float32"),
    ("const/ma.rope_cos", np.float32, "ma.rope_cos: float32"),
])
def test_video_file_is_loaded_strictly(clip_and_file, tmp_path, key, change, message):
    from golden_model.checkpoint import load_safetensors_with_metadata, save_safetensors
    tensors, meta = load_safetensors_with_metadata(clip_and_file[1])
    if change is None:
        del tensors[key]
    else:
        tensors[key] = tensors[key].astype(change)
    save_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(QuantFileError, match="bad.safetensors") as e:
        load_quantised(tmp_path / "bad.safetensors")
    assert message in str(e.value)


# ---------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def clip_and_file(case, tmp_path_factory):
    _, _, qm, frames, _ = case
    d = tmp_path_factory.mktemp("vclip")
    (d / "frames").mkdir()
    for i, f in enumerate(frames[:3]):
        Image.fromarray(f).save(d / "frames" / f"{i:05d}.png")
    return d / "frames", save_quantised(qm, d / "v.safetensors")


def test_track_int8_from_file(clip_and_file, tmp_path, capsys):
    clip, qfile = clip_and_file
    logits = tmp_path / "logits"
    assert main(["track", str(clip), "--point", "225,150", "--precision", "int8", "--quantised", str(qfile),
                 "-o", str(tmp_path / "out"), "--logits-out", str(logits)]) == 0
    assert "int8" in capsys.readouterr().out
    out = [np.load(logits / f"{i:05d}.npy") for i in range(3)]
    assert all(o.shape == (300, 451) and o.dtype == np.float32 for o in out)   # chelsea's size, as float
    assert json.loads((tmp_path / "out" / "object_scores.json").read_text())["object_score_logits"]


def test_track_int8_quantises_on_the_fly(clip_and_file, monkeypatch, tmp_path, capsys):
    from sw.commands import segment
    clip, _ = clip_and_file
    monkeypatch.setattr(segment, "build_model", lambda name, ckpt, seed: random_model(name, 128, seed))
    assert main(["track", str(clip), "--point", "225,150", "--precision", "int8", "--calib", str(clip),
                 "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "quantising SAM 2.1 tiny on the fly" in out and "calibrated the video part" in out


def test_track_int8_refuses_a_file_for_another_preset(clip_and_file, tmp_path, capsys):
    clip, qfile = clip_and_file
    assert main(["track", str(clip), "--point", "225,150", "--precision", "int8", "--quantised", str(qfile),
                 "--preset", "sim", "-o", str(tmp_path / "out")]) == 1
    assert "preset 'kv260'" in capsys.readouterr().err


def test_track_int8_refuses_an_image_only_file(clip_and_file, tmp_path, capsys):
    clip, _ = clip_and_file
    graph = build_graph(random_model("tiny", 128, seed=0))
    photos = list(skimage_photos(CALIB_PHOTOS[:1]).values())
    qfile = save_quantised(quantize(graph, calibrate(graph, photos, prompts_per_image=1)), tmp_path / "img.safetensors")
    assert main(["track", str(clip), "--point", "225,150", "--precision", "int8", "--quantised", str(qfile),
                 "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "no video part" in err and "mem.features" in err and "ma.memory_pos" in err and "Traceback" not in err


def test_track_int8_usage_errors(clip_and_file, tmp_path, capsys):
    clip, _ = clip_and_file
    with pytest.raises(SystemExit) as e:
        main(["track", str(clip), "-o", str(tmp_path / "out"), "--point", "10,10", "--quantised", "x.safetensors"])
    assert e.value.code == 2 and "for --precision int8" in capsys.readouterr().err


def _mask_and_correction(tmp_path):
    """prompts.json: object 1 by a mask on frame 0, a correction click on frame 2; object 2 by a click."""
    m = np.zeros((300, 451), np.uint8)
    m[100:200, 150:300] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    (tmp_path / "p.json").write_text(json.dumps({"objects": {
        "1": [{"frame": 0, "mask": str(tmp_path / "m.png")}, {"frame": 2, "points": [[250, 150]], "labels": [1]}],
        "2": [{"frame": 0, "points": [[100, 100]], "labels": [1]}]}}))
    return tmp_path / "p.json"


def test_track_int8_mask_prompts_and_corrections(clip_and_file, tmp_path, capsys):
    """The CLI takes them in int8; a file written before the mask path existed is refused before any
    frame is tracked, naming what it lacks."""
    from tests.quant.old_files import without_mask_path
    clip, qfile = clip_and_file
    prompts = _mask_and_correction(tmp_path)
    assert main(["track", str(clip), "--prompts", str(prompts), "--precision", "int8", "--quantised", str(qfile),
                 "-o", str(tmp_path / "out"), "--logits-out", str(tmp_path / "logits")]) == 0
    assert "tracked 2 objects over 3 frames" in capsys.readouterr().out
    assert (np.load(tmp_path / "logits" / "00002_1.npy") > 0).any()
    old = save_quantised(without_mask_path(load_quantised(qfile)), tmp_path / "old.safetensors")
    assert main(["track", str(clip), "--prompts", str(prompts), "--precision", "int8", "--quantised", str(old),
                 "-o", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "no mask prompt path" in err and "pe.mask_q" in err and "mask_downsample.weight" in err
    assert "Traceback" not in err and not any((tmp_path / "out2").iterdir())   # before any frame


@pytest.mark.slow
def test_int8_track_12_frames_at_256():
    """The issue's video target at a reduced size: 12 frames, int8 bank, IoU >= 0.90 on every frame
    (full size: benchmarks/quant.py --video, docs/quantisation.md)."""
    model, graph, qm, frames, click = _case(256, 12, calib_photos=3, calib_frames=4)
    rows, _, _ = compare_tracks(qm, model, frames, click)
    assert min(r["mask_iou"] for r in rows) >= 0.90, rows


def test_fast_depthwise_is_intconv():
    """The video runner's depthwise (shifted multiply-adds) gives intconv's integers, extremes included."""
    from golden_model.intconv import conv2d_acc
    from golden_model.quant.video import depthwise_acc
    rng = np.random.default_rng(0)
    cases = [(rng.integers(-128, 128, (5, 9, 11)), rng.integers(-127, 128, (5, 1, 7, 7))),
             (np.full((3, 8, 8), -128), np.full((3, 1, 7, 7), -127)),
             (np.full((2, 7, 7), 127), np.full((2, 1, 3, 3), 127))]
    for x, w in cases:
        x, w = x.astype(np.int8), w.astype(np.int8)
        pad = w.shape[-1] // 2
        np.testing.assert_array_equal(depthwise_acc(x, w, pad), conv2d_acc(x, w, padding=pad, groups=x.shape[0]))
