"""The int8 SAM 2 image path on the overlay (`sam2fpga segment --backend`): a GraphPredictor whose
runner is a GraphExecutor, progress while it runs, and the per-stage figures afterwards.

    ex = OverlayRunner(qm, preset("kv260"), "sim", progress=lambda m: print(m, file=sys.stderr))
    predictor = GraphPredictor(qm.graph, ex)       # set_image / predict as on the host
    print(stage_summary(ex))

Bit for bit the host int8 reference's outputs (tests/test_segment_overlay.py): the executor runs every
node where sw.compile.graph.place puts it, engine nodes through the Driver on the backend.
"""
from __future__ import annotations

import re
import time
from collections import Counter

from sw.runtime.driver import Driver
from sw.runtime.graph_exec import GraphExecutor

#: What `segment` reports as a stage: the graph's stages it sums.
STAGE_GROUPS = {"image encoder": ("image_encoder",), "prompt + decoder": ("prompt_encoder", "mask_decoder")}
#: The DDR the sim / rtl backends give a segment session: tiny at 1024's live activations chained in DDR (an
#: MLP's 25 MB hidden tensor before and after its GELU, the residual) and the next program's own regions
#: need ~80 MB (in 64 MiB some were spilled to the host), its 211 programs with their weights ~123 MB: in 128 MiB
#: the arena dropped programs, and the next image loaded, linked and checked every one again.
OVERLAY_DDR_BYTES = 1 << 28
#: Progress is reported every this many nodes (and at the end of each run).
PROGRESS_EVERY = 50


class OverlayRunner(GraphExecutor):
    """A GraphExecutor that reports its progress through `progress(message)` while a run goes on;
    `program_store`: Driver's (a ProgramStore its programs are loaded from and stored in; None: compiled)."""

    def __init__(self, qm, cfg, backend: str = "sim", *, progress=None, ddr_bytes: int | None = None,
                 bitfile: str | None = None, program_store=None):
        driver = Driver(cfg, backend, ddr_bytes=ddr_bytes or OVERLAY_DDR_BYTES, bitfile=bitfile,
                        program_store=program_store)
        super().__init__(qm, cfg, backend, driver=driver)
        self.progress = progress

    def run(self, feeds: dict, stages=None, env: dict | None = None, observe=None) -> dict:
        if self.progress is None:
            return super().run(feeds, stages, env, observe)
        total = sum(stages is None or n.stage in stages for n in self.graph.nodes)
        label = " + ".join(stages) if stages else "graph"
        done, t0 = [0], time.perf_counter()

        def seen(node, out):
            done[0] += 1
            if done[0] % PROGRESS_EVERY == 0 or done[0] == total:
                self.progress(f"{label}: {done[0]}/{total} nodes, {time.perf_counter() - t0:.1f} s")
            if observe is not None:
                observe(node, out)
        return super().run(feeds, stages, env, seen)


def rtl_forecast(ex: GraphExecutor, stages=sum(STAGE_GROUPS.values(), ())) -> str:
    """How long the rtl backend takes for the engine nodes of `stages` (an image and a click by default): their
    cycles as the placement modelled them, at Verilator's rate here (sw.backends.rtl.CYCLES_PER_S)."""
    from sw.backends.rtl import CYCLES_PER_S
    cycles = sum(ex.placements[n.name].cycles for n in ex.graph.nodes if n.stage in stages)
    s = cycles / CYCLES_PER_S
    took = f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} minutes" if s < 7200 else f"{s / 3600:.1f} hours"
    return (f"rtl: about {cycles:,} overlay cycles (the placement's cycle model) at Verilator's ~{CYCLES_PER_S:,} "
            f"a second here: about {took}, after building the {ex.cfg.name} overlay's Verilator model. The sim "
            f"backend gives the same bits and cycles; a scaled-down model (`sam2fpga quantize --image-size 128`) "
            f"runs on rtl in minutes.")


def missing_engines(ex: GraphExecutor) -> list[str]:
    """`no <engine> engine: N nodes on the host` for each engine the preset lacks that the graph wanted."""
    counts = Counter(r.reason for r in ex.records.values()
                     if r.where == "host" and re.fullmatch(r"no \w+ engine", r.reason))
    return [f"{reason}: {n} nodes run on the host" for reason, n in sorted(counts.items())]


def stage_rows(ex: GraphExecutor) -> list[dict]:
    """One row per reported stage (STAGE_GROUPS) and their total: what `segment` prints and the
    benchmark writes. Times in ms; modelled = at the preset's clock (overlay) and on the board's CPU
    model (host nodes); wall = this process."""
    per_stage = ex.stage_totals()
    rows = []
    for name, stages in STAGE_GROUPS.items():
        parts = [per_stage[s] for s in stages if s in per_stage]
        if parts:
            rows.append({"stage": name, **{k: sum(p[k] for p in parts) for k in parts[0]}})
    if rows:
        rows.append({"stage": "total", **{k: sum(r[k] for r in rows) for k in rows[0] if k != "stage"}})
    return [{"stage": r["stage"], "overlay nodes": r["engine_nodes"], "host nodes": r["host_nodes"],
             "overlay cycles": r["cycles"], "overlay ms (model)": 1e3 * r["overlay_s"],
             "host ms (model)": 1e3 * r["host_model_s"], "modelled ms": 1e3 * (r["overlay_s"] + r["host_model_s"]),
             "host ops wall ms": 1e3 * r["host_wall_s"], "backend wall ms": 1e3 * r["engine_wall_s"],
             "host<->DDR bytes": r["ddr_bytes"], "of which programs + weights": r["program_bytes"]} for r in rows]


def stage_summary(ex: GraphExecutor) -> str:
    """stage_rows as a table, with where the figures come from."""
    cfg = ex.cfg
    rows = stage_rows(ex)
    lines = [f"{'stage':17s} {'overlay':>7s} {'host':>5s} {'overlay ms':>10s} {'host ms':>8s} {'modelled':>9s} "
             f"{'host wall':>9s} {'backend':>8s} {'host<->DDR':>13s}",
             f"{'':17s} {'nodes':>7s} {'nodes':>5s} {'(model)':>10s} {'(model)':>8s} {'ms':>9s} "
             f"{'ms':>9s} {'wall ms':>8s} {'bytes':>13s}"]
    for r in rows:
        lines.append(f"{r['stage']:17s} {r['overlay nodes']:7d} {r['host nodes']:5d} {r['overlay ms (model)']:10.3f} "
                     f"{r['host ms (model)']:8.1f} {r['modelled ms']:9.1f} {r['host ops wall ms']:9.1f} "
                     f"{r['backend wall ms']:8.0f} {r['host<->DDR bytes']:13,d}")
    lines.append(f"overlay ms: the engine nodes' cycles at {cfg.name}'s {cfg.clock_mhz:g} MHz; host ms (model): the "
                 f"host nodes on {cfg.name}'s CPU (sw.perf.host_model); host wall: the host nodes here; backend wall: "
                 "the engine nodes' runs here (compile, copies, backend); host<->DDR: programs and weights written per "
                 "call, the activations the host writes in or reads back (token rows stay in DDR between the GEMM "
                 "and vector nodes; what crosses and why: sw/runtime/graph_exec.py)")
    return "\n".join(lines)
