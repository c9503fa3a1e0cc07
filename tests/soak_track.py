"""Soak run of `sam2fpga track`: a long clip through the real command in a fresh process, its resident
memory sampled from outside while it runs. Used by tests/test_soak_track.py; runnable alone for figures:

    PYTHONPATH=. python -m tests.soak_track --frames 1000 --image-size 128
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: The child: the real CLI, with the model built at a reduced input size (tests/robust_helpers.small_model).
CHILD = """
import sys
from tests.robust_helpers import small_model
from sw.commands import track
size, keep_all = int(sys.argv[1]), sys.argv[2] == "keep-all"
track._build_model = lambda args: small_model(size)
if keep_all:   # the official predictor's behaviour: every frame's output kept (for comparison only)
    from golden_model.video import VideoPredictor
    VideoPredictor.release_old_outputs = lambda *a, **k: 0
from sw.cli import main
sys.exit(main(sys.argv[3:]))
"""


def write_orbit_clip(folder: Path, n: int, size=(64, 48)) -> list[Path]:
    """`n` PNG frames: a textured background and a bright ellipse circling it (always in view)."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for t in range(n):
        a = 2 * np.pi * t / 60
        cx, cy = w / 2 + w / 4 * np.cos(a), h / 2 + h / 4 * np.sin(a)
        img = base.copy()
        img[((xx - cx) / (w / 6)) ** 2 + ((yy - cy) / (h / 6)) ** 2 <= 1] = (230, 200, 40)
        paths.append(folder / f"{t:05d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_track(frames: Path, out: Path, logits: Path, image_size: int, point, period_s: float = 0.2,
              keep_all: bool = False):
    """Run the CLI on `frames`; returns (exit code, stderr, [(seconds, frames written, RSS bytes)]).
    keep_all: without releasing old outputs (the official predictor's behaviour), for comparison."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, str(image_size), "keep-all" if keep_all else "release", "track", str(frames), "--point", f"{point[0]},{point[1]}",
           "-o", str(out), "--logits-out", str(logits)]
    t0 = time.monotonic()
    samples = []
    # stderr (the progress bar) goes to a file: a pipe nobody reads fills up and blocks the child
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log, text=True)
        while proc.poll() is None:
            rss = rss_bytes(proc.pid)
            done = sum(1 for e in os.scandir(logits) if e.name.endswith(".npy")) if logits.is_dir() else 0
            if rss is not None:
                samples.append((time.monotonic() - t0, done, rss))
            time.sleep(period_s)
        log.seek(0)
        err = log.read()
    return proc.returncode, err, samples


def track_in_pieces(frames: list[Path], image_size: int, point, split: int) -> dict[str, np.ndarray]:
    """The same tracking through the predictor API, stopped after frame `split - 1` and resumed at
    `split` on the same state: {frame stem: logits}."""
    from golden_model.video import VideoPredictor
    from tests.robust_helpers import small_model
    predictor = VideoPredictor(small_model(image_size).tracker)
    state = predictor.init_state(frames)
    predictor.add_new_points(state, 0, 1, [list(point)], [1])
    got = {}
    for start, count in ((0, split - 1), (split, len(frames))):
        for idx, _, logits in predictor.propagate_in_video(state, start_frame_idx=start,
                                                           max_frame_num_to_track=count):
            got[frames[idx].stem] = logits[0, 0].astype(np.float32)
            predictor.release_old_outputs(state, idx)
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--keep-all", action="store_true", help="keep every frame's output, as the official predictor")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_orbit_clip(tmp / "frames", args.frames)
        code, err, samples = run_track(tmp / "frames", tmp / "out", tmp / "logits", args.image_size, (48, 24),
                                        keep_all=args.keep_all)
        print(f"exit {code}; {err.strip().splitlines()[-1] if code else ''}")
        for t, done, rss in samples[:: max(1, len(samples) // 40)]:
            print(f"{t:7.1f} s  {done:5d} frames  RSS {rss / 2**20:7.1f} MiB")
    return code


if __name__ == "__main__":
    sys.exit(main())
