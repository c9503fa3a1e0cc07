"""The bad-input table (issue 20): every case a new user hit, one parametrised test per command.

Each case gives the arguments, the exit code (2: usage, 1: error) and a phrase of the one-line
message. Every case must end without a traceback, leave the inputs untouched and, except the
ones about weights, be refused before any model is built (the build is replaced by a tripwire).
docs/robustness.md lists the same table.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sw.cli import main
from tests.golden.video_helpers import write_moving_shape_clip
from tests.robust_helpers import read_only_dir, small_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def w(tmp_path):
    """The files the cases point at."""
    from golden_model.checkpoint import save_safetensors
    rng = np.random.default_rng(0)
    ns = SimpleNamespace(tmp=tmp_path)
    ns.img = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(ns.img)
    ns.dir_png = tmp_path / "dir.png"
    ns.dir_png.mkdir()
    ns.dir_npy = tmp_path / "dir.npy"
    ns.dir_npy.mkdir()
    ns.dir_st = tmp_path / "dir.safetensors"
    ns.dir_st.mkdir()
    ns.file = tmp_path / "a_file"
    ns.file.write_text("x")
    ns.nan = tmp_path / "nan.safetensors"
    bad = rng.standard_normal((4, 4)).astype(np.float32)
    bad[1, 2] = np.nan
    save_safetensors(ns.nan, {"sam_mask_decoder.iou_token.weight": bad, "no_mem_embed": np.ones((1, 1, 256))})
    ns.truncated = tmp_path / "truncated.png"
    ns.truncated.write_bytes(ns.img.read_bytes()[:200])
    ns.float_img = tmp_path / "float.tif"
    Image.fromarray(rng.random((30, 40)).astype(np.float32)).save(ns.float_img)
    ns.frames = tmp_path / "frames"
    write_moving_shape_clip(ns.frames, n_frames=3, size=(96, 64))
    ns.corrupt_frames = tmp_path / "corrupt"
    write_moving_shape_clip(ns.corrupt_frames, n_frames=3, size=(96, 64))
    jpg = ns.corrupt_frames / "00001.jpg"
    jpg.write_bytes(jpg.read_bytes()[:400])         # a valid header, then nothing: only decoding finds it
    with read_only_dir(tmp_path / "readonly") as ns.ro:
        yield ns


def inf_pt(w) -> Path:
    """An official-layout .pt ({"model": state_dict}) with an infinite weight, saved by torch."""
    torch = pytest.importorskip("torch")
    path = w.tmp / "inf.pt"
    torch.save({"model": {"obj_ptr_proj.layers.0.bias": torch.tensor([1.0, float("inf")])}}, path)
    return path


def fingerprint(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and "readonly" not in p.parts}


def check(argv, code, needle, capsys):
    """Run the CLI in-process; the exit code, the phrase, one line for errors, no traceback."""
    if code == 2:
        with pytest.raises(SystemExit) as e:
            main(argv)
        got = e.value.code
    else:
        got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err
    assert needle in err.strip().splitlines()[-1], err
    if code == 1:
        assert len(err.strip().splitlines()) == 1, err


# (case id, arguments after the image (w -> list), exit code, phrase, the model may be built)
SEGMENT = [
    ("seed-negative", lambda w: ["--point", "5,5", "--seed", "-1", "-o", w.tmp / "o.png"], 2, "seed must be >= 0",
     False),
    ("point-negative", lambda w: ["--point", "-5,10", "-o", w.tmp / "o.png"], 2, "outside the 160x120 image", False),
    ("point-outside", lambda w: ["--point", "160,10", "-o", w.tmp / "o.png"], 2, "outside the 160x120 image", False),
    ("box-negative", lambda w: ["--box", "-5,0,50,50", "-o", w.tmp / "o.png"], 2, "does not lie on the 160x120",
     False),
    ("box-outside", lambda w: ["--box", "10,10,50,121", "-o", w.tmp / "o.png"], 2, "does not lie on the 160x120",
     False),
    ("out-is-input", lambda w: ["--point", "5,5", "-o", w.img], 2, "would be overwritten", False),
    ("out-is-directory", lambda w: ["--point", "5,5", "-o", w.dir_png], 1, "is a directory", False),
    ("out-read-only", lambda w: ["--point", "5,5", "-o", w.ro / "o.png"], 1, "cannot write in", False),
    ("out-under-read-only", lambda w: ["--point", "5,5", "-o", w.ro / "sub" / "o.png"], 1, "cannot write in", False),
    ("logits-is-directory", lambda w: ["--point", "5,5", "-o", w.tmp / "o.png", "--logits-out", w.dir_npy], 1,
     "is a directory", False),
    ("logits-read-only", lambda w: ["--point", "5,5", "-o", w.tmp / "o.png", "--logits-out", w.ro / "l.npy"], 1,
     "cannot write in", False),
    ("image-truncated", lambda w: ["--point", "5,5", "-o", w.tmp / "o.png", "--image", w.truncated], 1,
     "cannot read image", False),
    ("image-float", lambda w: ["--point", "5,5", "-o", w.tmp / "o.png", "--image", w.float_img], 1,
     "floating-point", False),
    ("image-over-pixel-limit", lambda w: ["--point", "5,5", "-o", w.tmp / "o.png", "--pixel-limit", 1000], 1,
     "160x120 = 19,200 pixels, over Pillow's limit of 1,000", False),
    ("checkpoint-nan", lambda w: ["--point", "5,5", "-o", w.tmp / "o.png", "--checkpoint", w.nan], 1,
     "'sam_mask_decoder.iou_token.weight' [4, 4] holds 1 non-finite", True),
    ("checkpoint-inf-pt", lambda w: ["--point", "5,5", "-o", w.tmp / "o.png", "--checkpoint", inf_pt(w)], 1,
     "'obj_ptr_proj.layers.0.bias' [2] holds 1 non-finite value(s) (first: inf)", True),
]


def _split_test_options(tail):
    """The table's pseudo-options --image (another input: image or frames folder) and --pixel-limit
    (Pillow's limit for the case) set up the case; the rest goes to the CLI."""
    opts, rest, it = {}, [], iter(tail)
    for a in it:
        if a in ("--image", "--pixel-limit"):
            opts[a] = next(it)
        else:
            rest.append(str(a))
    return opts, rest


def run_image_case(w, capsys, monkeypatch, command, model_builder, default_input, tail, code, needle, builds):
    """One row of the SEGMENT or TRACK table through `sam2fpga COMMAND INPUT ...`."""
    if not builds:
        monkeypatch.setattr(model_builder, _tripwire)
    opts, rest = _split_test_options(tail(w))
    if "--pixel-limit" in opts:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", opts["--pixel-limit"])
    before = fingerprint(w.tmp)
    check([command, str(opts.get("--image", default_input)), *rest], code, needle, capsys)
    assert fingerprint(w.tmp) == before


def _tripwire(*a, **k):
    raise AssertionError("a model was built for an input that should have been refused first")


@pytest.mark.parametrize("case,tail,code,needle,builds", SEGMENT, ids=[c[0] for c in SEGMENT])
def test_segment_bad_input(w, capsys, monkeypatch, case, tail, code, needle, builds):
    run_image_case(w, capsys, monkeypatch, "segment", "sw.commands.segment.build_model", w.img, tail, code, needle,
                   builds)
    assert not (w.tmp / "o.png").exists()


TRACK = [
    ("seed-negative", lambda w: ["--point", "5,5", "--seed", "-1", "-o", w.tmp / "out"], 2, "seed must be >= 0", False),
    ("point-negative", lambda w: ["--point", "-5,10", "-o", w.tmp / "out"], 2, "outside the 96x64 frames", False),
    ("out-is-frames", lambda w: ["--point", "5,5", "-o", w.frames], 2, "would be overwritten", False),
    ("out-is-file", lambda w: ["--point", "5,5", "-o", w.file], 1, "is not a folder", False),
    ("out-read-only", lambda w: ["--point", "5,5", "-o", w.ro], 1, "cannot write in", False),
    ("out-under-read-only", lambda w: ["--point", "5,5", "-o", w.ro / "out"], 1, "cannot write in", False),
    ("logits-read-only", lambda w: ["--point", "5,5", "-o", w.tmp / "out", "--logits-out", w.ro / "l"], 1,
     "cannot write in", False),
    ("frame-corrupt", lambda w: ["--point", "5,5", "-o", w.tmp / "out", "--image", w.corrupt_frames], 1,
     "cannot read frame", False),
    ("frame-over-pixel-limit", lambda w: ["--point", "5,5", "-o", w.tmp / "out", "--pixel-limit", 1000], 1,
     "96x64 = 6,144 pixels, over Pillow's limit", False),
    ("checkpoint-nan", lambda w: ["--point", "5,5", "-o", w.tmp / "out", "--checkpoint", w.nan], 1,
     "holds 1 non-finite value(s) (first: nan)", True),
]


@pytest.mark.parametrize("case,tail,code,needle,builds", TRACK, ids=[c[0] for c in TRACK])
def test_track_bad_input(w, capsys, monkeypatch, case, tail, code, needle, builds):
    run_image_case(w, capsys, monkeypatch, "track", "sw.commands.track._build_model", w.frames, tail, code, needle,
                   builds)


CONVERT = [
    ("parent-missing", lambda w: [w.nan, w.tmp / "missing" / "x.safetensors"], 1, "does not exist"),
    ("dst-is-directory", lambda w: [w.nan, w.dir_st], 1, "is a directory"),
    ("dst-read-only", lambda w: [w.nan, w.ro / "x.safetensors"], 1, "cannot write in"),
    ("dst-is-src", lambda w: [w.nan, w.nan], 2, "same file"),
    ("dst-exists", lambda w: [w.img, w.nan], 1, "exists (use --force"),
    ("weights-nan", lambda w: [w.nan, w.tmp / "x.safetensors"], 1, "'sam_mask_decoder.iou_token.weight'"),
    ("weights-inf-pt", lambda w: [inf_pt(w), w.tmp / "x.safetensors"], 1, "'obj_ptr_proj.layers.0.bias'"),
]


@pytest.mark.parametrize("case,args,code,needle", CONVERT, ids=[c[0] for c in CONVERT])
def test_convert_bad_input(w, capsys, case, args, code, needle):
    args = [str(a) for a in args(w)]
    before = fingerprint(w.tmp)
    check(["convert", *args], code, needle, capsys)
    assert fingerprint(w.tmp) == before
    assert not (w.tmp / "x.safetensors").exists()


OUTPUT_FOLDERS = [   # commands whose -o is a folder: refused before generating anything
    ("generate-read-only", lambda w: ["generate", "-o", w.ro], 1, "cannot write in"),
    ("generate-under-read-only", lambda w: ["generate", "-o", w.ro / "v"], 1, "cannot write in"),
    ("generate-onto-file", lambda w: ["generate", "-o", w.file], 1, "is not a folder"),
    ("build-read-only", lambda w: ["build", "--board", "kv260", "--skip-estimate", "-o", w.ro], 1, "cannot write in"),
    ("demo-read-only", lambda w: ["demo", "-o", w.ro], 1, "cannot write in"),
]


@pytest.mark.parametrize("case,args,code,needle", OUTPUT_FOLDERS, ids=[c[0] for c in OUTPUT_FOLDERS])
def test_output_folder_bad_input(w, capsys, case, args, code, needle):
    t0 = time.monotonic()
    check([str(a) for a in args(w)], code, needle, capsys)
    assert time.monotonic() - t0 < 5, "refused only after generating"


SIM = [
    ("gemm-huge-m", ["gemm", "--m", "1000000000", "--k", "16", "--n", "16"], 1, "29.8 GiB of DDR"),
    ("gemm-over-ddr", ["gemm", "--m", "1000000", "--k", "64", "--n", "64"], 1, "122.1 MiB of DDR"),
    ("gemm-negative", ["gemm", "--m", "-5", "--k", "16", "--n", "16"], 2, "must be positive"),
    ("attention-huge", ["attention", "--q", "1000000", "--kv", "32768", "--d", "64"], 1, "the golden reference needs"),
    ("attention-head-dim", ["attention", "--q", "16", "--kv", "32768", "--d", "1024", "--preset", "bench16"], 2,
     "--d 1024 outside"),
    ("conv-huge", ["conv", "--in", "3x100000x100000", "--out", "96", "--k", "7", "--stride", "4"], 1, "GiB of DDR"),
    ("conv-transposed-huge", ["conv", "--in", "256x4096x4096", "--out", "64", "--k", "2", "--stride", "2",
                              "--transposed"], 1, "GiB of DDR"),
    ("seed-negative", ["gemm", "--m", "4", "--k", "4", "--n", "4", "--seed", "-1"], 2, "seed must be >= 0"),
]


@pytest.mark.parametrize("case,args,code,needle", SIM, ids=[c[0] for c in SIM])
def test_sim_bad_input(capsys, case, args, code, needle):
    t0 = time.monotonic()
    check(["sim", *args], code, needle, capsys)
    assert time.monotonic() - t0 < 2, "sizes must be refused before anything is allocated or compiled"


def test_sim_huge_sizes_refused_fast_from_the_shell():
    """The issue's two commands, as a user types them: < 2 s each, start-up included."""
    for sizes in (["--m", "1000000000", "--k", "16", "--n", "16"], ["--m", "1000000", "--k", "64", "--n", "64"]):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "sw.cli", "sim", "gemm", *sizes], cwd=REPO,
                              capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert time.monotonic() - t0 < 2
        assert proc.returncode == 1 and "of DDR" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------- failures during a run

def test_os_error_anywhere_is_one_line(monkeypatch, capsys):
    import errno

    from sw.commands import toolchain

    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "out/overlay.png")
    monkeypatch.setattr(toolchain, "run", disk_full)
    assert main(["toolchain"]) == 1
    assert capsys.readouterr().err == "sam2fpga toolchain: error: out/overlay.png: No space left on device\n"
    monkeypatch.setattr(toolchain, "run", lambda args: (_ for _ in ()).throw(MemoryError()))
    assert main(["toolchain"]) == 1
    assert "out of memory" in capsys.readouterr().err


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    import sw.cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(sw.cli, "build_parser", interrupted)
    assert main(["segment", "x.png"]) == 130
    assert capsys.readouterr().err == "sam2fpga: interrupted\n"


def test_ctrl_c_wrapped_by_a_library_is_one_line(monkeypatch, capsys):
    """numpy turns a Ctrl-C during its import into an ImportError (raised from the KeyboardInterrupt)."""
    from sw.commands import toolchain

    def interrupted_import(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("numpy.core.multiarray failed to import") from e
    monkeypatch.setattr(toolchain, "run", interrupted_import)
    assert main(["toolchain"]) == 130
    assert capsys.readouterr().err == "sam2fpga toolchain: interrupted\n"
    monkeypatch.setattr(toolchain, "run", lambda args: (_ for _ in ()).throw(ImportError("no module x")))
    with pytest.raises(ImportError):      # a real bug still shows its traceback
        main(["toolchain"])


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test, as in a new process (a test worker's may have been changed)."""
    import signal
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_a_library_swallowed_still_ends_the_command(monkeypatch, capsys, tmp_path, python_sigint):
    """A library's bare `except:` eats the KeyboardInterrupt: the command still ends as interrupted (130, one
    line), the file it then writes is not committed, and Python's own SIGINT handler is back afterwards."""
    import os
    import signal

    from sw import outputs
    from sw.commands import toolchain
    out = tmp_path / "out.txt"

    def swallowing(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except:  # noqa: E722  (what the library does)
            pass
        outputs.write_text(out, "half a result")
        return 0
    monkeypatch.setattr(toolchain, "run", swallowing)
    assert main(["toolchain"]) == 130
    assert capsys.readouterr().err == "sam2fpga toolchain: interrupted\n"
    assert not out.exists() and not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(toolchain, "run", lambda args: outputs.write_text(out, "whole") and 0)
    assert main(["toolchain"]) == 0 and out.read_text() == "whole"      # the next command starts afresh


def test_ctrl_c_python_cannot_raise_is_one_line_too(monkeypatch, capsys, tmp_path, python_sigint):
    """Ctrl-C landing in a __del__ (or an import's weakref callback): CPython cannot raise it there and would print
    "Exception ignored" and run on; the command ends as interrupted at its first output, one line on stderr."""
    import os
    import signal

    from sw import outputs
    from sw.commands import toolchain
    out = tmp_path / "out.txt"

    class Dying:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**6):      # the handler runs in here
                pass

    def run(args):
        Dying()
        outputs.write_text(out, "half a result")
        return 0
    monkeypatch.setattr(toolchain, "run", run)
    unraisable = []                     # what CPython would print as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    assert main(["toolchain"]) == 130
    assert capsys.readouterr().err == "sam2fpga toolchain: interrupted\n"
    assert not out.exists() and unraisable == [] and sys.unraisablehook == unraisable.append


def test_ctrl_c_from_the_shell_is_one_line(w, tmp_path):
    """SIGINT at several moments of a segment run's start-up (imports, argument checks, model build),
    counted from the moment `-X importtime` shows sw.cli importing its last module (before that only
    Python's own start-up runs); the importtime lines are left out of the check."""
    import signal
    for delay in (0.0, 0.4, 1.5):
        log = tmp_path / f"stderr-{delay}.txt"
        with open(log, "w") as err:
            # (SIGINT's default action in the child, as a shell gives its foreground job: not whatever this
            # worker process inherited)
            proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "sw.cli", "segment", str(w.img),
                                     "--point", "5,5", "-o", str(w.tmp / "o.png")], cwd=REPO,
                                    env={"PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=err,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            deadline = time.monotonic() + 30
            while "sw.errors" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        lines = [line for line in log.read_text().splitlines() if not line.startswith("import time:")]
        # 130, or killed by SIGINT after printing the line (the shell shows 130 for both): CPython ends
        # that way when the interrupt landed in code a C extension ran through PyRun_String during its
        # import (numpy.random._common does), even though main() caught the KeyboardInterrupt
        assert proc.returncode in (130, -signal.SIGINT), (delay, lines)
        assert lines in (["sam2fpga segment: interrupted"], ["sam2fpga: interrupted"]), (delay, lines)
    assert not (w.tmp / "o.png").exists()


def test_output_failure_keeps_the_old_overlay(w, capsys, monkeypatch):
    """The disk fills up (or Ctrl-C comes) while segment writes: the old -o and --logits-out stay intact."""
    import errno

    from sw import outputs
    from tests.test_segment_cli import CheapEncoder
    from golden_model.model import SAM2Model
    monkeypatch.setattr("sw.commands.segment.build_model",
                        lambda name, ckpt, seed: SAM2Model(name, seed=seed, image_encoder=CheapEncoder(), config={}))
    out, logits = w.tmp / "o.png", w.tmp / "l.npy"
    argv = ["segment", str(w.img), "--point", "50,40", "-o", str(out), "--logits-out", str(logits)]
    assert main(argv) == 0
    old = out.read_bytes(), logits.read_bytes()
    capsys.readouterr()
    for error, code in ((OSError(errno.ENOSPC, "No space left on device"), 1), (KeyboardInterrupt(), 130)):
        def fail(fd, error=error):
            raise error
        monkeypatch.setattr(outputs.os, "fsync", fail)
        assert main(argv[:-2] + ["--point", "60,40", *argv[-2:]]) == code
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert (out.read_bytes(), logits.read_bytes()) == old
        assert not [p for p in w.tmp.iterdir() if p.name.endswith(".tmp")]


def test_frame_corrupted_mid_run_reports_the_frames_done(w, capsys, monkeypatch):
    """A frame that decoded at the start but breaks while tracking: exit 1, the error and the summary
    of the frames done in one line, their overlays and object scores written."""
    import json

    from sw.commands import track
    frames = w.tmp / "clip"
    write_moving_shape_clip(frames, n_frames=5, size=(48, 32))
    monkeypatch.setattr(track, "_build_model", lambda args: small_model(64))
    real_overlay = track.overlay

    def overlay_then_break_frame_3(path, logits):
        if path.name == "00001.jpg":
            (frames / "00003.jpg").write_bytes(b"\xff\xd8 broken")
        return real_overlay(path, logits)
    monkeypatch.setattr(track, "overlay", overlay_then_break_frame_3)
    out = w.tmp / "out"
    assert main(["track", str(frames), "--point", "20,15", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    bar = ("frame/s]", "s/frame]")                # tqdm's rate: frames a second, or seconds a frame when slow
    lines = [line for line in err.replace("\r", "\n").splitlines() if line and not line.rstrip().endswith(bar)]
    assert len(lines) == 1, err                   # the progress bar, then one line
    assert "cannot read frame" in err and "00003.jpg" in err and "tracked 1 object over 3 frames (00000.jpg .. 00002.jpg)" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert list(json.loads((out / "object_scores.json").read_text())["present"]) == ["00000", "00001", "00002"]


# ---------------------------------------------------------------- 16-bit images

def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from golden_model.transforms import rgb8
    from golden_model.video import load_frame
    from sw.commands.segment import load_rgb
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)   # 0 .. 64491
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    want = np.round(ramp / 257.0).astype(np.uint8)
    got = load_rgb(tmp_path / "g16.png")
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3)
    assert np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)
    assert (got == 255).mean() < 0.01            # Image.convert("RGB") made 99.6 % of it white
    Image.fromarray(want).save(tmp_path / "g8.png")
    assert np.array_equal(load_frame(tmp_path / "g16.png", 64)[0], load_frame(tmp_path / "g8.png", 64)[0])
    assert np.array_equal(rgb8(Image.open(tmp_path / "g8.png")), np.repeat(want[..., None], 3, 2))
    with pytest.raises(ValueError, match="floating-point"):
        rgb8(Image.fromarray(np.zeros((2, 2), np.float32)))
