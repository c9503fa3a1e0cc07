"""`sam2fpga track --prompts`: several objects, points / boxes / masks, corrections, --reverse and
--start-frame; every bad entry is a clear error before anything is computed or written."""
import json

import numpy as np
import pytest
from PIL import Image

from sw.cli import main
from sw.prompts import PromptError, parse_prompts, plan_tracking
from tests.golden.video_helpers import write_moving_shape_clip

W, H, N = 96, 64, 4


@pytest.fixture
def clip(tmp_path):
    d = tmp_path / "frames"
    write_moving_shape_clip(d, n_frames=N, size=(W, H))
    return d


def _mask_file(directory, size=(W, H), name="mask.png"):
    m = np.zeros((size[1], size[0]), np.uint8)
    m[30:50, 60:90] = 255
    Image.fromarray(m).save(directory / name)
    return name


def _prompts(tmp_path, objects):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"objects": objects}) if not isinstance(objects, str) else objects)
    return path


GOOD = {"1": [{"frame": 0, "points": [[20, 25], [5, 5]], "labels": [1, 0]},
              {"frame": 2, "points": [[40, 35]], "labels": [0]}],
        "2": [{"frame": 1, "box": [20, 15, 60, 50]}],
        "3": [{"frame": 0, "mask": "mask.png"}]}

BAD = [  # (prompts file content, words the error must contain)
    ('{"objects": {"1": [{"frame": 0, "points": [[1, 2]], "labels": [1]}]', "not valid JSON (line 1"),
    ('[1, 2]', "top level"),
    ({}, "at least one"),
    ({"cat": [{"frame": 0, "box": [1, 1, 5, 5]}]}, "object id 'cat'"),
    ({"1": [{"frame": 0, "box": [1, 1, 5, 5]}], "01": [{"frame": 0, "box": [1, 1, 5, 5]}]}, "same object"),
    ({"1": []}, "object 1: expected a non-empty list"),
    ({"1": [{"frame": 4, "points": [[1, 2]], "labels": [1]}]}, "object 1, entry 0: frame 4 does not exist"),
    ({"1": [{"frame": "0", "points": [[1, 2]], "labels": [1]}]}, "object 1, entry 0: \"frame\" must be an integer"),
    ({"1": [{"frame": True, "points": [[1, 2]], "labels": [1]}]}, "\"frame\" must be an integer"),
    ({"1": [{"frame": 0, "points": [[1, 2]], "labels": [1]}, {"frame": 0, "box": [1, 1, 5, 5]}]},
     "object 1, entry 1 (frame 0): object 1 already has entry 0 on frame 0"),
    ({"1": [{"frame": 0, "points": [[1, 2]]}]}, "points and labels go together"),
    ({"1": [{"frame": 0, "points": [[1, 2]], "labels": [1, 0]}]}, "1 points but 2 labels"),
    ({"1": [{"frame": 0, "points": [[1, 2]], "labels": [2]}]}, "\"labels\" must be a list of 1"),
    ({"1": [{"frame": 0, "points": [[1, "2"]], "labels": [1]}]}, "\"points\" must be a non-empty list"),
    ({"1": [{"frame": 0, "points": [[100, 2]], "labels": [1]}]}, "point [100, 2] lies outside the 96x64"),
    ({"1": [{"frame": 0, "box": [10, 10, 5, 20]}]}, "0 <= x0 < x1 <= 96"),
    ({"1": [{"frame": 0, "box": [1, 2, 3]}]}, "\"box\" must be [x0, y0, x1, y1]"),
    ({"1": [{"frame": 0}]}, "give points with labels, a box, or a mask"),
    ({"1": [{"frame": 0, "clicks": [[1, 2]]}]}, "unknown keys ['clicks']"),
    ({"1": [{"frame": 0, "mask": "mask.png", "box": [1, 1, 5, 5]}]}, "a mask entry takes no points"),
    ({"1": [{"frame": 0, "mask": "missing.png"}]}, "object 1, entry 0 (frame 0): cannot read mask"),
    ({"1": [{"frame": 0, "mask": "small.png"}]}, "mask small.png is 48x32, the frames are 96x64"),
    ({"1": [{"frame": 0, "box": [1, 1, 5, 5]}], "2": ["frame 0"]}, "object 2, entry 0: expected an object"),
]


@pytest.mark.parametrize("content,message", BAD, ids=[m for _, m in BAD])
def test_bad_prompts_are_clear_errors_and_write_nothing(clip, tmp_path, capsys, content, message):
    _mask_file(tmp_path)
    _mask_file(tmp_path, size=(W // 2, H // 2), name="small.png")
    out, logits = tmp_path / "out", tmp_path / "logits"
    argv = ["track", str(clip), "--prompts", str(_prompts(tmp_path, content)), "-o", str(out),
            "--logits-out", str(logits)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not logits.exists()


@pytest.mark.parametrize("extra,message", [
    (["--start-frame", "4"], "start frame 4 does not exist"),
    (["--start-frame", "3"], "object 1, entry 1 (frame 2): a correction on a frame tracking never reaches"),
    (["--reverse", "--start-frame", "0"], "reverse tracking from frame 0 tracks no frame"),
    (["--frame", "1"], "--frame goes with --point"),
])
def test_bad_tracking_arguments(clip, tmp_path, capsys, extra, message):
    _mask_file(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["track", str(clip), "--prompts", str(_prompts(tmp_path, GOOD)), "-o", str(out)] + extra)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_prompts_file(clip, tmp_path, capsys):
    assert main(["track", str(clip), "--prompts", str(tmp_path / "none.json"), "-o", str(tmp_path / "o")]) == 1
    assert "cannot read prompts file" in capsys.readouterr().err


def _parsed(tmp_path):
    _mask_file(tmp_path)
    return parse_prompts({"objects": GOOD}, (W, H), N, base_dir=tmp_path)


def test_plan_splits_first_prompts_from_corrections(tmp_path):
    prompts = _parsed(tmp_path)
    fwd = plan_tracking(prompts, N)
    assert [(p.obj_id, p.frame) for p in fwd.initial] == [(1, 0), (2, 1), (3, 0)]
    assert [(p.obj_id, p.frame) for p in fwd.corrections] == [(1, 2)]
    assert fwd.start == 0 and fwd.frames_out(N) == 4
    mask = next(p.mask for p in prompts if p.mask is not None)
    assert mask.shape == (H, W) and mask.sum() == 20 * 30
    # backward, an object's latest prompt starts its track; the default start is the official one
    rev = plan_tracking(prompts, N, reverse=True, start=3)
    assert [(p.obj_id, p.frame) for p in rev.initial] == [(1, 2), (2, 1), (3, 0)]
    assert [(p.obj_id, p.frame) for p in rev.corrections] == [(1, 0)]
    assert rev.frames_out(N) == 4
    with pytest.raises(PromptError, match="reverse tracking from frame 0"):   # official default start: 0
        plan_tracking(prompts, N, reverse=True)
    with pytest.raises(PromptError, match="frame 1 would leave frame 0 untracked"):
        plan_tracking(parse_prompts({"objects": {"1": [{"frame": 2, "box": [1, 1, 9, 9]},
                                                       {"frame": 1, "box": [1, 1, 9, 9]}]}}, (W, H), N),
                      N, reverse=True)


@pytest.fixture(scope="module")
def small_models(request):
    """Official and golden tiny at a 256 x 256 input (same code paths, 16x fewer pixels than 1024)."""
    torch = pytest.importorskip("torch")
    from tests.golden.oracle import official_model
    from tests.golden.video_helpers import golden_twin, one_torch_thread, promote_bf16_memory
    threads = one_torch_thread()
    next(threads)
    request.addfinalizer(lambda: next(threads, None))
    official = promote_bf16_memory(official_model("tiny", seed=0, video=True, image_size=256))
    official.fill_hole_area = 0
    with torch.no_grad():   # random weights: make objects present, so masks are not all -1024
        official.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 3.0
    return official, golden_twin(official, "tiny", 256)


def _official_cli_sequence(official, clip, tmp_path, reverse):
    """The official calls the CLI's plan stands for, written out: {(frame, obj_id): logits}."""
    import torch
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 0
    out = {}

    def keep(frame, ids, masks):
        for i, m in zip(ids, masks):
            out[(frame, i)] = m[0].numpy()
    with torch.inference_mode():
        s = official.init_state(str(clip))
        if not reverse:   # forward: each object's earliest prompt, track to frame 2, correct, resume
            official.add_new_points_or_box(s, 0, 1, points=[[20, 25], [5, 5]], labels=[1, 0])
            official.add_new_points_or_box(s, 1, 2, box=[20, 15, 60, 50])
            official.add_new_mask(s, 0, 3, mask)
            for f, ids, m in official.propagate_in_video(s, 0, 2):
                keep(f, ids, m)
            keep(*official.add_new_points_or_box(s, 2, 1, points=[[40, 35]], labels=[0]))
            for f, ids, m in official.propagate_in_video(s, 3):
                keep(f, ids, m)
        else:             # backward from 3: object 1's latest prompt (frame 2) starts it, frame 0 corrects
            official.add_new_points_or_box(s, 2, 1, points=[[40, 35]], labels=[0])
            official.add_new_points_or_box(s, 1, 2, box=[20, 15, 60, 50])
            official.add_new_mask(s, 0, 3, mask)
            for f, ids, m in official.propagate_in_video(s, 3, 3, reverse=True):
                keep(f, ids, m)
            keep(*official.add_new_points_or_box(s, 0, 1, points=[[20, 25], [5, 5]], labels=[1, 0]))
    return out


@pytest.mark.oracle
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_three_objects_with_correction_match_official(clip, tmp_path, capsys, monkeypatch, small_models, reverse):
    """The CLI's outputs (per-object logits files, overlays, scores) are the official predictor's
    for the same prompts, within 1e-3 relative; one overlay per frame, every object coloured."""
    from sw.commands import track
    official, golden = small_models
    monkeypatch.setattr(track, "_build_model", lambda args: golden)
    _mask_file(tmp_path)
    out, logits = tmp_path / "out", tmp_path / "logits"
    argv = ["track", str(clip), "--prompts", str(_prompts(tmp_path, GOOD)), "-o", str(out), "--logits-out",
            str(logits)] + (["--reverse", "--start-frame", "3"] if reverse else [])
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "tracked 3 objects over 4 frames" in text
    ref = _official_cli_sequence(official, clip, tmp_path, reverse)
    assert sorted(p.name for p in logits.iterdir()) == sorted(f"{f:05d}_{i}.npy" for f, i in ref)
    worst = 0.0
    for (f, i), r in ref.items():
        got = np.load(logits / f"{f:05d}_{i}.npy")
        assert got.shape == (H, W) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - r).max() / max(1.0, np.abs(r).max())))
    assert worst <= 1e-3, worst
    assert any(r.max() > 0 for r in ref.values()) and any(r.min() < 0 for r in ref.values())
    assert sorted(p.name for p in out.glob("*.png")) == [f"{f:05d}.png" for f in range(N)]
    scores = json.loads((out / "object_scores.json").read_text())
    assert set(scores["present"]["00002"]) == {"1", "2", "3"}
    # the mask object (3) is tinted in its own colour where its logits are positive, not elsewhere
    img = np.asarray(Image.open(out / "00000.png")).astype(int)
    frame = np.asarray(Image.open(clip / "00000.jpg")).astype(int)
    obj3 = ref[(0, 3)] > 0
    assert obj3.any() and (np.abs(img - frame).sum(axis=2)[obj3] > 0).all()
    print(f"{'reverse' if reverse else 'forward'}: CLI vs official worst relative error {worst:.2e}")


def test_short_form_still_writes_one_object(clip, tmp_path, capsys, monkeypatch, small_models):
    """--frame N --point X,Y: object 1, logits as <frame-stem>.npy; --start-frame and --reverse work too."""
    from sw.commands import track
    monkeypatch.setattr(track, "_build_model", lambda args: small_models[1])
    logits = tmp_path / "logits"
    assert main(["track", str(clip), "--frame", "2", "--point", "40,30", "-o", str(tmp_path / "out"),
                 "--logits-out", str(logits), "--reverse"]) == 0
    assert "tracked 1 object over 3 frames (00002.jpg .. 00000.jpg, backward)" in capsys.readouterr().out
    assert sorted(p.name for p in logits.iterdir()) == ["00000.npy", "00001.npy", "00002.npy"]
