"""Golden model speed against the official PyTorch SAM 2 on this CPU, in the same run.

Each case builds the golden and the official computation on the same weights and input,
runs them alternately (so background load hits both alike) and reports the fastest of
`REPEATS` runs of each, their ratio, and the golden peak memory (NumPy allocations seen
by tracemalloc, measured in a separate untimed run). Add a case by appending to CASES
a function returning (golden_fn, official_fn, notes).
"""
from __future__ import annotations

import resource
import time
import tracemalloc
from dataclasses import dataclass
from typing import Callable

from benchmarks.common import report

REPEATS = 3


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[], tuple[Callable[[], object], Callable[[], object]]]


def image_encoder_case(model: str, size: int, batch: int = 1):
    """SAM2Base.forward_image (trunk + neck + conv_s0/conv_s1) on random weights."""
    def setup():
        import numpy as np
        import torch

        from golden_model.image_encoder import forward_image
        from tests.golden.oracle import golden_image_encoder, official_model

        official = official_model(model, seed=0)
        enc, hr = golden_image_encoder(official, model)
        img = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        timg = torch.from_numpy(img)

        def run_official():
            with torch.no_grad():
                return official.forward_image(timg)
        return (lambda: forward_image(enc, hr, img)), run_official
    return Case(f"image_encoder {model} {size}x{size} b{batch}", setup)


def video_case(model: str, part: str):
    """A steady-state video frame with a full memory bank (benchmarks/golden_video.py), or its memory attention."""
    from benchmarks.golden_video import PARTS, video_setup
    return Case(f"{model} {PARTS[part]}", lambda: video_setup(model, part)[:2])


# Other helpers: append cases here (e.g. one video frame of the tracker).
CASES: list[Case] = [
    image_encoder_case("tiny", 1024),
    image_encoder_case("small", 1024),
    video_case("tiny", "memory_attention"),
    video_case("tiny", "frame"),
]


def _best(fn, times: list[float]) -> None:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)


def measure(case: Case, repeats: int = REPEATS) -> dict:
    import torch
    golden, official = case.setup()
    golden(), official()                      # warm-up: caches, lazy init, allocator
    tg, to = [], []
    for _ in range(repeats):
        _best(golden, tg)
        _best(official, to)
    tracemalloc.start()
    golden()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"case": case.name, "golden_s": min(tg), "official_s": min(to), "ratio": min(tg) / min(to),
            "golden_peak_MB": peak / 2**20, "torch_threads": torch.get_num_threads(), "repeats": repeats}


def run(names: list[str] | None = None) -> None:
    rows = [measure(c) for c in CASES if names is None or any(n in c.name for n in names)]
    rows[-1]["process_maxrss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report("golden", rows, notes="Golden NumPy vs official PyTorch (CPU), best of "
           f"{REPEATS} alternating runs; ratio = golden/official (lower is better).")
