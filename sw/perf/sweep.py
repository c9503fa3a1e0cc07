"""Design-space sweep: array shapes and engine choices of a board's preset -> resources and frame times.

Per configuration (the board's preset with rows, cols and engines replaced): the DSP floor from the
structure (hw.flows.estimate.dsp_floor), optionally yosys's estimate (LUT, FF, DSP, BRAM; minutes per
configuration, cached per configuration under the output folder), and the profiled image embedding and
steady-state video frame (sw.perf.profile). A configuration is on the Pareto front when no other one
that fits is at least as fast with at most as many DSPs (and LUTs, when estimated).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

FRAME = "video frame (steady state, full bank)"
IMAGE = "image embedding"


@dataclass
class Point:
    cfg: object
    dsps: int                   # yosys's count when estimated, else the structural floor
    luts: int | None = None
    estimated: bool = False
    problems: list = field(default_factory=list)   # what does not fit (empty: it fits)
    image_s: float | None = None
    frame_s: float | None = None
    pareto: bool = False

    @property
    def fits(self) -> bool:
        return not self.problems

    def row(self) -> dict:
        c = self.cfg
        return {"rows": c.rows, "cols": c.cols, "engines": "+".join(c.engines), "dsps": self.dsps,
                "luts": self.luts, "dsps_from": "yosys" if self.estimated else "floor", "fits": self.fits,
                "problems": "; ".join(self.problems), "image_s": self.image_s, "frame_s": self.frame_s,
                "pareto": self.pareto}


def configs(base, rows, cols, engines=None) -> tuple[list, list[str]]:
    """The valid configurations of `base` over rows x cols (and engines), and why the others are not."""
    out, bad = [], []
    for r in rows:
        for c in cols:
            try:
                out.append(base.replace(name=f"{base.name}-{r}x{c}", rows=r, cols=c,
                                        engines=tuple(engines or base.engines),
                                        acc_depth=max(base.acc_depth, r)))
            except ValueError as e:
                bad.append(f"{r} x {c}: {e}")
    return out, bad


def cache_key(cfg, family: str) -> str:
    text = json.dumps({**cfg.summary(), "name": "", "family": family}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def estimate_cached(cfg, board, folder: Path) -> dict:
    """yosys's estimate of the overlay `cfg` for `board`'s family, from `folder`/cache when there."""
    from sw.outputs import write_text
    path = Path(folder) / "cache" / f"{cache_key(cfg, board.family)}.json"
    if path.exists():
        return json.loads(path.read_text())
    from hw.flows.estimate import estimate
    from hw.isa import VERILOG_NAME
    from hw.overlay import Overlay
    from hw.verilog import write_verilog
    work = path.with_suffix("")
    verilog = write_verilog(Overlay(cfg), VERILOG_NAME, work)
    res = estimate(verilog, VERILOG_NAME, board.family, work / "yosys").as_dict()
    write_text(path, json.dumps(res))
    return res


def measure(cfg, board, model: str, image_size, lanes: int, folder: Path, run_estimate: bool) -> Point:
    from hw.flows.estimate import Resources, dsp_floor, fits
    from sw.perf.profile import profile
    p = Point(cfg, dsp_floor(cfg))
    if run_estimate:
        res = estimate_cached(cfg, board, folder)
        p.dsps, p.luts, p.estimated = int(res["dsps"]), int(res["luts"] + res.get("lutram", 0)), True
        p.problems = fits(Resources(**res), board)
    elif p.dsps > board.dsps:
        p.problems = [f"DSP floor {p.dsps} > {board.dsps} on {board.part}"]
    prof = profile(model, cfg, image_size=image_size, video=True, assume_vector_lanes=lanes)
    t = prof.totals()
    p.image_s, p.frame_s = t[IMAGE]["seconds"], t[FRAME]["seconds"]
    return p


def mark_pareto(points: list[Point]) -> None:
    fit = [p for p in points if p.fits]
    for p in fit:
        p.pareto = not any(q is not p and q.frame_s <= p.frame_s and q.dsps <= p.dsps
                           and (p.luts is None or q.luts is None or q.luts <= p.luts)
                           and (q.frame_s, q.dsps, q.luts or 0) != (p.frame_s, p.dsps, p.luts or 0) for q in fit)


def chart(points: list[Point], path, title: str) -> Path:
    """Frame time against DSPs (and LUTs when estimated), the Pareto front joined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sw.outputs import atomic_file
    axes_of = [("dsps", "DSP blocks")] + ([("luts", "LUTs")] if all(p.luts is not None for p in points) else [])
    fig, axes = plt.subplots(1, len(axes_of), figsize=(6 * len(axes_of), 4.5), squeeze=False)
    for ax, (attr, label) in zip(axes[0], axes_of):
        for p in points:
            x = getattr(p, attr)
            ax.scatter([x], [p.frame_s], marker="o" if p.fits else "x", color="C0" if p.pareto else "C7")
            ax.annotate(f"{p.cfg.rows}x{p.cfg.cols}", (x, p.frame_s), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
        front = sorted((getattr(p, attr), p.frame_s) for p in points if p.pareto)
        if front:
            ax.plot(*zip(*front), color="C0", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("video frame (s)")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
