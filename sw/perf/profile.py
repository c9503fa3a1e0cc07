"""The whole-model profile: every node placed (sw.compile.graph), timed without data, summed per stage.

    prof = profile("tiny", preset("kv260"), video=True)
    print(prof.table()); prof.write("build/profile")

A stage's time is the sum of its nodes' times, one after the other: the overlay runs one program at
a time and the host waits for it (no overlap of host ops with overlay programs is modelled).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from hw.boards import BOARDS
from sw.compile.graph import Placement, place_all, vector_lanes
from sw.perf.host_model import HostModel, ddr_gbs, host_for, port_gbs
from sw.perf.layers import DECODER_STAGES, STAGES, batch_objects, image_layers, video_layers

#: the totals the profile reports: name -> the stages it sums
TOTALS = {
    "image embedding": ("image_encoder",),
    "prompt encoder + mask decoder": DECODER_STAGES,
    "memory encoder": ("memory_encoder",),
    "memory attention": ("memory_attention",),
    "video frame (steady state, full bank)": STAGES,
}
#: the stages a video frame runs once per tracked object (the image embedding is shared by all of them)
PER_OBJECT_STAGES = tuple(s for s in STAGES if s != "image_encoder")
#: object counts the video profile reports a frame's time for (issue: 1, 3 and 8)
DEFAULT_OBJECTS = (1, 3, 8)
#: the project's goals (KV260, tiny): docs/profile.md
GOALS_S = {"image embedding": 0.25, "video frame (steady state, full bank)": 0.75}


def part_floor_seconds(attention_macs: int, other_macs: int, dsps: int, macs_per_dsp: int, clock_mhz: float) -> float:
    """The least time any overlay of this design takes for these MACs on a part of `dsps` DSPs at `clock_mhz`: every
    DSP an array MAC at full use (none left for the softmax, the requantisers, the vector or depthwise engines),
    `macs_per_dsp` int8 MACs a DSP where the product packs (GEMM, convolution, the attention's Q K^T: half its MACs)
    and one for the attention's P V (the other half: 17-bit probabilities x int8 do not share a multiplier,
    docs/attention.md). P V rows in LUTs (cfg.attn_pv_lut_rows) do MACs beyond the DSPs, which this floor
    does not count: a DSP-only bound."""
    pv = attention_macs / 2
    return ((other_macs + pv) / macs_per_dsp + pv) / (dsps * clock_mhz * 1e6)


@dataclass
class Profile:
    model: str
    image_size: int
    cfg: object
    host: HostModel
    placements: list[Placement]
    video: bool
    lanes: int = 0
    wall_s: float = 0.0
    meta: dict = field(default_factory=dict)
    objects: tuple = DEFAULT_OBJECTS
    batched_attention_s: dict = field(default_factory=dict)   # objects -> their memory attention, batched

    def frame_seconds(self, objects: int, batched: bool = True) -> float:
        """A steady-state video frame tracking `objects` objects: one image embedding, the objects' memory
        attentions batched as the overlay runs them (sw.perf.layers.batch_objects: the frame's own nodes
        once, the rest once over all objects' rows), then each object's prompt encoder + mask decoder
        and memory encoder one after the other. `batched=False`, or an object count profile() did not
        place batched: every object's memory attention on its own too (the sequential upper bound)."""
        shared = sum(self.stage_time(("image_encoder",)).values())
        if not batched or objects not in self.batched_attention_s:
            return shared + objects * sum(self.stage_time(PER_OBJECT_STAGES).values())
        rest = tuple(s for s in PER_OBJECT_STAGES if s != "memory_attention")
        return shared + self.batched_attention_s[objects] + objects * sum(self.stage_time(rest).values())

    def stage_time(self, stages) -> dict[str, float]:
        """{engine or "host": seconds} over the nodes of `stages`."""
        out: dict[str, float] = {}
        for p in self.placements:
            if p.layer.stage in stages and p.where != "layout":
                out[p.where] = out.get(p.where, 0.0) + p.seconds
        return out

    def totals(self) -> dict[str, dict]:
        rows = {}
        for name, stages in TOTALS.items():
            if not self.video and any(s in ("memory_encoder", "memory_attention") for s in stages):
                continue
            ps = [p for p in self.placements if p.layer.stage in stages]
            by = self.stage_time(stages)
            attention = sum(p.macs for p in ps if p.layer.op == "attention")
            rows[name] = dict(seconds=sum(by.values()), by_engine=by, macs=sum(p.macs for p in ps),
                              attention_macs=attention,
                              ddr_bytes=sum(p.ddr_bytes for p in ps if p.where not in ("host", "layout")),
                              host_bytes=sum(p.ddr_bytes for p in ps if p.where == "host"),
                              overlay_cycles=sum(p.cycles for p in ps))
            part = BOARDS.get(self.cfg.name)          # (a board's preset: its part)
            if part is not None:
                rows[name]["part_floor_seconds"] = part_floor_seconds(
                    attention, rows[name]["macs"] - attention, part.dsps, part.macs_per_dsp, self.cfg.clock_mhz)
        return rows

    # ------------------------------------------------------------- output
    def header(self) -> str:
        c = self.cfg
        vec = f", vector engine {self.lanes} lanes" + ("" if "vector" in c.engines else " (assumed)") \
            if self.lanes else ", no vector engine"
        return (f"SAM 2.1 {self.model} at {self.image_size} on preset {c.name} ({c.board}): {c.rows} x {c.cols} array "
                f"at {c.clock_mhz:g} MHz, engines {', '.join(c.engines)}{vec}; host {self.host.cpu} x{self.host.cores} "
                f"at {self.host.clock_ghz:g} GHz ({self.host.source}); DDR {self.host.ddr_gbs:g} GB/s, "
                f"PL port {port_gbs(c):g} GB/s")

    def table(self, layers: bool = True) -> str:
        lines = [self.header()]
        if layers:
            lines.append(f"{'node':44s} {'on':9s} {'MACs':>14s} {'cycles':>12s} {'util':>6s} {'DDR bytes':>13s} "
                         f"{'bound':7s} {'ms':>9s}")
            for p in self.placements:
                if p.where == "layout":
                    continue
                util = f"{p.utilisation:6.1%}" if p.array_macs else "     -"
                lines.append(f"{p.layer.name:44s} {p.where:9s} {p.macs:14,d} {p.cycles:12,d} {util} "
                             f"{p.ddr_bytes:13,d} {p.bound:7s} {p.seconds * 1e3:9.3f}")
        lines.append("")
        lines.append(f"{'total':38s} {'seconds':>9s}  {'GMAC':>8s}  {'DDR MB':>8s}  by engine (s)")
        for name, t in self.totals().items():
            by = ", ".join(f"{k} {v:.4f}" for k, v in sorted(t["by_engine"].items(), key=lambda kv: -kv[1]))
            goal = GOALS_S.get(name) if self.has_goals() else None
            g = f"  (goal <= {goal} s; the part's floor {t['part_floor_seconds']:.3f} s)" if goal else ""
            lines.append(f"{name:38s} {t['seconds']:9.4f}  {t['macs'] / 1e9:8.2f}  {t['ddr_bytes'] / 1e6:8.1f}  "
                         f"{by}{g}")
        if self.video:
            per = ", ".join(f"{n} object{'s' if n > 1 else ''} {self.frame_seconds(n):.4f} s"
                            + (f" ({self.frame_seconds(n, False):.4f} one by one)" if n > 1 else "")
                            for n in self.objects)
            lines.append("video frame by tracked objects (image embedding shared, memory attention batched, "
                         f"decoder and memory encoder per object): {per}")
        return "\n".join(lines)

    def has_goals(self) -> bool:
        """The goals are stated for tiny at 1024 on KV260."""
        return self.cfg.name == "kv260" and self.model == "tiny" and self.image_size == 1024

    def to_dict(self) -> dict:
        c = self.cfg
        return {
            "model": self.model, "image_size": self.image_size, "preset": c.name, "board": c.board,
            "clock_mhz": c.clock_mhz, "array": [c.rows, c.cols], "engines": list(c.engines),
            "vector_lanes": self.lanes, "host": self.host.to_dict(), "port_gbs": port_gbs(c),
            "overlay_ddr_gbs": ddr_gbs(c, self.host), "video": self.video, "profile_wall_s": round(self.wall_s, 2),
            "totals": self.totals(),
            "frame_seconds_by_objects": {str(n): self.frame_seconds(n) for n in self.objects} if self.video else {},
            "frame_seconds_by_objects_one_by_one": {str(n): self.frame_seconds(n, False) for n in self.objects}
            if self.video else {},
            "layers": [dict(name=p.layer.name, op=p.layer.op, stage=p.layer.stage, on=p.where, reason=p.reason,
                            macs=p.macs, cycles=p.cycles, utilisation=round(p.utilisation, 4),
                            ddr_bytes=p.ddr_bytes, bound=p.bound, seconds=p.seconds, host_seconds=p.host_seconds)
                       for p in self.placements],
        }

    def chart(self, path) -> Path:
        """A PNG: per-stage time, stacked by engine and host."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sw.outputs import atomic_file
        stages = [s for s in STAGES if any(p.layer.stage == s for p in self.placements)]
        times = {s: self.stage_time((s,)) for s in stages}
        where = sorted({w for t in times.values() for w in t})
        fig, ax = plt.subplots(figsize=(8, 4.5))
        bottom = [0.0] * len(stages)
        for w in where:
            vals = [times[s].get(w, 0.0) for s in stages]
            ax.bar(stages, vals, bottom=bottom, label=w)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel("seconds")
        ax.set_title(f"SAM 2.1 {self.model} @ {self.image_size} on {self.cfg.name} "
                     f"({self.cfg.clock_mhz:g} MHz){' + vector' if self.lanes else ''}")
        ax.legend()
        plt.setp(ax.get_xticklabels(), rotation=15)
        fig.tight_layout()
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        return Path(path)

    def stem(self) -> str:
        vec = f"-vec{self.lanes}" if self.lanes and "vector" not in self.cfg.engines else ""
        return f"{self.model}-{self.image_size}-{self.cfg.name}{vec}{'-video' if self.video else ''}"

    def write(self, folder) -> tuple[Path, Path]:
        """JSON and PNG in `folder`, named after model, size, preset (and video)."""
        from sw.outputs import write_text
        folder = Path(folder)
        js = write_text(folder / f"{self.stem()}.json", json.dumps(self.to_dict(), indent=1))
        return js, self.chart(folder / f"{self.stem()}.png")


@lru_cache(maxsize=4)
def layers_for(model: str, image_size: int | None, video: bool) -> tuple:
    """The nodes by shape (built once per process: a sweep profiles the same graph many times)."""
    layers = image_layers(model, image_size)
    return tuple(layers + video_layers(model, image_size) if video else layers)


def profile(model: str, cfg, *, image_size: int | None = None, video: bool = False, host: HostModel | None = None,
            assume_vector_lanes: int = 0, objects: tuple = DEFAULT_OBJECTS) -> Profile:
    t0 = time.perf_counter()
    host = host or host_for(cfg)
    lanes = vector_lanes(cfg, assume_vector_lanes)
    layers = layers_for(model, image_size, video)
    placements = place_all(cfg, layers, host, lanes)
    batched = {}
    if video:
        attention = [x for x in layers if x.stage == "memory_attention"]
        for n in objects:
            batched[n] = sum(p.seconds for p in (placements if n == 1 else
                                                 place_all(cfg, batch_objects(attention, n), host, lanes))
                             if p.layer.stage == "memory_attention" and p.where != "layout")
    size = image_size or _model_image_size(model)
    return Profile(model, size, cfg, host, placements, video, lanes, time.perf_counter() - t0,
                   objects=tuple(objects), batched_attention_s=batched)


def _model_image_size(model: str) -> int:
    from golden_model.config import load_config
    return load_config(model).image_size
