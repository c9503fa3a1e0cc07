"""`sam2fpga quantize` and `sam2fpga segment --precision int8`: files written and read, clear errors.

A scaled-down SAM 2 (128 px input, random weights) keeps these fast; the full-size accuracy is
benchmarks/quant.py (docs/quantisation.md)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sw.cli import main
from sw.commands import segment

SIZE = ["--image-size", "128"]


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(2):
        img = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
        img[20:60, 30:80] = (200, 40 * i, 30)
        Image.fromarray(img).save(d / f"c{i}.png")
    return d


@pytest.fixture(scope="module")
def qfile(calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny.int8.safetensors"
    assert main(["quantize", "--model", "tiny", *SIZE, "--calib", str(calib_dir), "-o", str(out)]) == 0
    return out


@pytest.fixture()
def photo(tmp_path):
    img = (np.random.default_rng(1).random((100, 140, 3)) * 255).astype(np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(img).save(path)
    return path


def test_quantize_writes_a_loadable_file(qfile):
    from golden_model.quant.qfile import load_quantised
    qm = load_quantised(qfile, model="tiny", preset="kv260")
    assert qm.graph.image_size == 128 and qm.key_tile == 32


def test_segment_int8_from_file(qfile, photo, tmp_path, capsys):
    logits = tmp_path / "l.npy"
    rc = main(["segment", str(photo), "--point", "70,50", "--precision", "int8", "--quantised", str(qfile),
               "-o", str(tmp_path / "o.png"), "--logits-out", str(logits)])
    assert rc == 0
    out = np.load(logits)
    assert out.shape == (100, 140) and out.dtype == np.float32
    assert "int8" in capsys.readouterr().out


def test_segment_int8_quantises_on_the_fly(monkeypatch, calib_dir, photo, tmp_path, capsys):
    from golden_model.quant.builder import random_model
    monkeypatch.setattr(segment, "build_model", lambda name, ckpt, seed: random_model(name, 128, seed))
    rc = main(["segment", str(photo), "--point", "70,50", "--precision", "int8", "--calib", str(calib_dir),
               "-o", str(tmp_path / "o.png")])
    assert rc == 0
    assert "quantising SAM 2.1 tiny on the fly" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--preset", "sim"], "preset 'kv260'"),
    (["--model", "small"], "for model 'tiny', not 'small'"),
])
def test_segment_refuses_a_file_for_another_preset_or_model(qfile, photo, tmp_path, capsys, extra, needle):
    rc = main(["segment", str(photo), "--point", "70,50", "--precision", "int8", "--quantised", str(qfile),
               *extra, "-o", str(tmp_path / "o.png")])
    assert rc == 1
    assert needle in capsys.readouterr().err


def test_segment_bad_quantised_file(photo, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 4)
    rc = main(["segment", str(photo), "--point", "70,50", "--precision", "int8", "--quantised", str(bad),
               "-o", str(tmp_path / "o.png")])
    assert rc == 1 and "not a readable" in capsys.readouterr().err


def test_quantised_and_checkpoint_together_is_a_usage_error(qfile, photo, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", str(photo), "--point", "70,50", "--precision", "int8", "--quantised", str(qfile),
              "--checkpoint", str(qfile), "-o", str(tmp_path / "o.png")])
    assert e.value.code == 2 and "drop --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("make, needle", [
    (lambda d: d, "holds no images"),
    (lambda d: d / "missing", "not found"),
    (lambda d: (d / "x.png").write_bytes(b"nope") and None or d / "x.png", "cannot read calibration image"),
])
def test_bad_calibration_paths(tmp_path, capsys, make, needle):
    rc = main(["quantize", *SIZE, "--calib", str(make(tmp_path)), "-o", str(tmp_path / "q.safetensors")])
    assert rc == 1 and needle in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["-o", "x.bin"], "must name a .safetensors"),
    (["--preset", "nope", "-o", "x.safetensors"], "unknown preset"),
    (["--image-size", "100", "-o", "x.safetensors"], "multiple of 128"),
])
def test_quantize_usage_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(["quantize", *argv])
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_quantised_file_needs_int8(qfile, photo, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", str(photo), "--point", "70,50", "--quantised", str(qfile), "-o", str(tmp_path / "o.png")])
    assert e.value.code == 2 and "--precision int8" in capsys.readouterr().err
