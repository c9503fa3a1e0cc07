"""The rtl backend: the generated overlay Verilog under cocotb/Verilator, DDR = a cocotbext-axi AXI slave.

Programs (DDR images with descriptors) go to the bench as .npz files; one Verilator
build and one simulator run serve a whole batch of programs.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np


def overlay_verilog(cfg) -> Path:
    from hw.overlay import VERILOG_NAME, Overlay
    from hw.verilog import write_verilog
    from sim.runner import BUILD
    return write_verilog(Overlay(cfg), VERILOG_NAME, BUILD / "verilog" / f"overlay_{config_tag(cfg)}")


def config_tag(cfg) -> str:
    digest = hashlib.sha1(json.dumps(cfg.summary(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.name}_{digest}"


def run_images(cfg, jobs: list[dict], *, stall: float = 0.0, seed: int = 1, waves: bool | None = None,
               name: str | None = None) -> list[dict]:
    """Run each job {base, image (uint8), desc_count or runs[, timeout]} on the RTL; return the bench's results.
    runs: (first descriptor, count) pairs started one after another on the same DDR (cycles summed).

    Each result has: image (DDR after the run), status, error, cycles, desc_done, timed_out.
    """
    from hw.overlay import VERILOG_NAME
    from sim.runner import BUILD, run_bench
    verilog = overlay_verilog(cfg)
    name = name or f"overlay-{config_tag(cfg)}"
    lock_path = BUILD / "sim" / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # One build directory per configuration, shared by processes (pytest workers, CLI): take turns.
    with open(lock_path, "w") as lock, tempfile.TemporaryDirectory(prefix="sam2fpga-rtl-") as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = Path(tmp)
        for i, job in enumerate(jobs):
            np.savez(folder / f"prog_{i:03d}.npz", **{k: np.asarray(v) for k, v in job.items()})
        run_bench(verilog, VERILOG_NAME, "overlay_bench", name=name, waves=waves,
                  extra_env={"PROGRAM_DIR": str(folder), "BENCH_STALL": str(stall), "BENCH_SEED": str(seed)})
        out = []
        for i in range(len(jobs)):
            with np.load(folder / f"res_{i:03d}.npz") as r:
                out.append({k: (r[k] if r[k].ndim else r[k].item()) for k in r.files})
        return out
