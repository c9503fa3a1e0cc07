"""`sam2fpga segment`: prompts parsed strictly, clear errors, overlay + logits written.

The plumbing tests swap the image encoder for a cheap deterministic stand-in
(the heads are the real golden ones on seeded weights); the end-to-end run with
the golden image encoder is the slow test at the bottom.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sw.cli import main
from sw.commands import segment


@pytest.fixture()
def photo_png(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    img[30:90, 40:110] = (220, 30, 30)
    path = tmp_path / "in.png"
    Image.fromarray(img).save(path)
    return path, img


class CheapEncoder:
    """Backbone outputs of the right shapes, derived from the input image (not a real encoder)."""

    def __call__(self, x):
        b = x.shape[0]
        rng = np.random.default_rng(int(abs(x).sum()) % 1000)
        fpn = [rng.standard_normal((b, 256, s, s)).astype(np.float32) for s in (256, 128, 64)]
        return {"vision_features": fpn[-1], "vision_pos_enc": [np.zeros_like(f) for f in fpn], "backbone_fpn": fpn}


@pytest.fixture()
def cheap_model(monkeypatch):
    from golden_model.model import SAM2Model
    built = []

    def build(name, checkpoint, seed):
        built.append((name, checkpoint, seed))
        return SAM2Model(name, seed=seed, image_encoder=CheapEncoder(), config={})
    monkeypatch.setattr(segment, "build_model", build)
    return built


@pytest.mark.parametrize("argv,needle", [
    (["--point", "10"], "point must be X,Y or X,Y,LABEL"),
    (["--point", "a,b"], "numbers separated by commas"),
    (["--point", "10,20,5"], "label must be 1"),
    (["--point", "nan,3"], "finite"),
    (["--box", "10,20,5,40"], "x0 < x1"),
    (["--box", "1,2,3"], "X0,Y0,X1,Y1"),
    ([], "needs a prompt"),
    (["--point", "500,20"], "outside the 160x120 image"),
    (["--point", "10,20", "--model", "huge"], "invalid choice"),
])
def test_bad_prompts_are_usage_errors(photo_png, tmp_path, capsys, argv, needle):
    path, _ = photo_png
    with pytest.raises(SystemExit) as e:
        main(["segment", str(path), "-o", str(tmp_path / "o.png"), *argv])
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_missing_image_is_an_error(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "nope.jpg"), "--point", "1,1", "-o", str(tmp_path / "o.png")]) == 1
    assert "image not found" in capsys.readouterr().err


def test_unreadable_image_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["segment", str(bad), "--point", "1,1", "-o", str(tmp_path / "o.png")]) == 1
    assert "cannot read image" in capsys.readouterr().err


def test_missing_checkpoint_is_an_error(photo_png, tmp_path, capsys):
    path, _ = photo_png
    assert main(["segment", str(path), "--point", "1,1", "--checkpoint", str(tmp_path / "no.pt"),
                 "-o", str(tmp_path / "o.png")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_overlay_and_logits_written(photo_png, tmp_path, capsys, cheap_model):
    path, img = photo_png
    out, logits_path = tmp_path / "out.png", tmp_path / "logits.npy"
    assert main(["segment", str(path), "--point", "70,60", "-o", str(out), "--logits-out", str(logits_path)]) == 0
    text = capsys.readouterr().out
    assert "RANDOM weights" in text and "highest predicted IoU" in text
    logits = np.load(logits_path)
    assert logits.shape == img.shape[:2] and logits.dtype == np.float32
    drawn = np.asarray(Image.open(out).convert("RGB"))
    assert drawn.shape == img.shape
    mask = logits > 0
    # away from the drawn prompt, masked pixels are tinted and the rest untouched
    far = np.ones(mask.shape, bool)
    far[50:71, 60:81] = False
    assert np.array_equal(drawn[~mask & far], img[~mask & far])
    if (mask & far).any():
        tint = np.round(0.5 * img[mask & far] + 0.5 * np.array(segment.MASK_COLOUR)).astype(np.uint8)
        assert np.abs(drawn[mask & far].astype(int) - tint).max() <= 1


def test_several_prompts_give_one_mask(photo_png, tmp_path, capsys, cheap_model):
    path, _ = photo_png
    assert main(["segment", str(path), "--point", "70,60", "--point", "10,10,0", "--box", "40,30,110,90",
                 "-o", str(tmp_path / "o.png")]) == 0
    assert "single mask" in capsys.readouterr().out


def test_choice_is_the_best_iou_candidate(photo_png, cheap_model):
    _, img = photo_png
    from golden_model.predictor import ImagePredictor
    model = segment.build_model("tiny", None, 0)
    logits, iou, best, n = segment.segment(img, [(70.0, 60.0, 1)], None, model)
    p = ImagePredictor(model)
    p.set_image(img)
    all_logits, ious, _ = p.predict(point_coords=[[70.0, 60.0]], point_labels=[1], return_logits=True)
    assert n == 3 and best == int(np.argmax(ious)) and iou == pytest.approx(float(ious.max()))
    np.testing.assert_array_equal(logits, all_logits[best])


def test_demo_segmentation_step_writes_overlay(tmp_path, capsys, cheap_model):
    """The demo's photo step (the requantiser steps are covered by tests/test_cli.py)."""
    pytest.importorskip("skimage")
    import argparse

    from sw.commands import demo
    demo._segment_photo(argparse.Namespace(out=tmp_path, checkpoint=None))
    out = capsys.readouterr().out
    assert "RANDOM weights" in out
    png = tmp_path / "segment_chelsea.png"
    assert np.asarray(Image.open(png)).shape == (300, 451, 3)
    assert cheap_model == [("tiny", None, 0)]
