"""`sam2fpga track`: bad input is a clear error; a short clip runs end to end on random weights."""
import json

import numpy as np
import pytest

from sw.cli import main
from tests.golden.video_helpers import write_moving_shape_clip


@pytest.fixture
def clip(tmp_path):
    d = tmp_path / "frames"
    write_moving_shape_clip(d, n_frames=3, size=(96, 64))
    return d


@pytest.mark.parametrize("argv_tail,code,message", [
    (["--point", "10"], 2, "X,Y or X,Y,LABEL"),
    (["--point", "10,10,5"], 2, "LABEL must be 1"),
    (["--point", "500,10"], 2, "outside the 96x64 frames"),
    (["--point", "10,10", "--frame", "3"], 2, "has 3 frames"),
    (["--point", "10,10", "--checkpoint", "/no/such.pt"], 1, "does not exist"),
    (["--point", "10,10", "--backend", "sim", "--bitfile", "o.bit"], 2, "--bitfile is for --backend pynq"),
    (["--point", "10,10", "--backend", "pynq", "--bitfile", "/no/such.bit"], 2, "/no/such.bit: no such file"),
])
def test_bad_arguments(clip, tmp_path, capsys, argv_tail, code, message):
    argv = ["track", str(clip), "-o", str(tmp_path / "out")] + argv_tail
    if code == 2:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    else:
        assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_bad_frames_are_clear_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["track", str(tmp_path / "missing"), "--point", "1,1", "-o", out]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["track", str(tmp_path / "empty"), "--point", "1,1", "-o", out]) == 1
    assert "no frames" in capsys.readouterr().err
    bad = tmp_path / "bad"
    write_moving_shape_clip(bad, n_frames=2, size=(32, 32))
    (bad / "00002.jpg").write_bytes(b"not a jpeg")
    assert main(["track", str(bad), "--point", "1,1", "-o", out]) == 1
    assert "cannot read frame" in capsys.readouterr().err
    (bad / "00002.jpg").unlink()
    from PIL import Image
    Image.new("RGB", (40, 32)).save(bad / "00002.png")
    assert main(["track", str(bad), "--point", "1,1", "-o", out]) == 1
    assert "40x32" in capsys.readouterr().err


@pytest.mark.slow
def test_track_runs_end_to_end_on_random_weights(clip, tmp_path, capsys):
    out, logits = tmp_path / "out", tmp_path / "logits"
    assert main(["track", str(clip), "--frame", "1", "--point", "40,30", "--point", "5,5,0",
                 "-o", str(out), "--logits-out", str(logits)]) == 0
    text = capsys.readouterr().out
    assert "RANDOM weights" in text and "tracked 1 object over 2 frames" in text
    assert sorted(p.name for p in out.glob("*.png")) == ["00001.png", "00002.png"]
    for stem in ("00001", "00002"):
        a = np.load(logits / f"{stem}.npy")
        assert a.shape == (64, 96) and a.dtype == np.float32 and np.isfinite(a).all()
    scores = json.loads((out / "object_scores.json").read_text())
    assert set(scores["present"]) == {"00001", "00002"}


@pytest.mark.slow
@pytest.mark.oracle
def test_track_logits_from_checkpoint_match_official(clip, tmp_path, capsys):
    """`track --checkpoint` (official-layout file, golden loader) writes the official predictor's
    video-resolution logits for every frame, within 1e-3 relative."""
    torch = pytest.importorskip("torch")
    from tests.golden.oracle import official_checkpoint, official_model
    ckpt = official_checkpoint("tiny", 0, str(tmp_path / "ckpt"))
    logits = tmp_path / "logits"
    assert main(["track", str(clip), "--point", "40,30", "--checkpoint", str(ckpt), "-o", str(tmp_path / "out"),
                 "--logits-out", str(logits)]) == 0
    assert "RANDOM" not in capsys.readouterr().out
    model = official_model("tiny", 0, video=True)
    with torch.inference_mode():
        state = model.init_state(str(clip))
        model.add_new_points_or_box(state, 0, 1, points=[[40, 30]], labels=[1])
        official = {f: m[0, 0].numpy() for f, _, m in model.propagate_in_video(state)}
    assert sorted(official) == [0, 1, 2]
    for f, ref in official.items():
        got = np.load(logits / f"{f:05d}.npy")
        assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max()), f"frame {f}"
