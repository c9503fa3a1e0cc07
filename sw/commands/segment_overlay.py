"""`sam2fpga segment --backend`: the int8 model on the overlay (sw/runtime/overlay_segment.py), with
the backend's and the runtime's failures as one-line errors."""
from __future__ import annotations

import sys
from collections import Counter


def _log(message: str) -> None:
    print("segment: " + message, file=sys.stderr, flush=True)


def _overlay_errors():
    """What a run on the overlay can fail with that is the user's problem, not a bug: a program the
    compiler refuses, an arena too small (ArenaFull names the sizes), an accelerator fault after the
    retry, a missing simulator, no pynq."""
    from sw.commands.sim import _accelerator_errors
    from sw.runtime.arena import ArenaFull
    from sw.runtime.graph_exec import GraphExecError
    return (*_accelerator_errors(), ArenaFull, GraphExecError, ImportError)


def overlay_predictor(args, build_model):
    """(GraphPredictor on an OverlayRunner, the runner) for the model --quantised / quantised on the fly
    for --preset, on --backend."""
    from golden_model.quant.predictor import GraphPredictor
    from hw.config import preset
    from sw.cli import CommandError
    from sw.commands.quantize import int8_model
    from sw.commands.segment import program_store
    from sw.runtime.overlay_segment import OverlayRunner, rtl_forecast
    qm = int8_model(args, build_model, lambda m: print("segment: " + m))
    cfg = preset(args.preset)
    try:
        ex = OverlayRunner(qm, cfg, args.backend, progress=_log, program_store=program_store(args),
                           bitfile=None if args.bitfile is None else str(args.bitfile))
    except _overlay_errors() as e:
        raise CommandError(str(e)) from e
    on = Counter("host" if n.attrs.get("host") else ex.placements[n.name].where for n in qm.graph.nodes)
    print(f"segment: int8 SAM 2.1 {args.model} on the {cfg.name} overlay ({cfg.rows} x {cfg.cols} at "
          f"{cfg.clock_mhz:g} MHz, engines {', '.join(cfg.engines)}), backend {args.backend}: "
          + "nodes on " + ", ".join(f"{w} {n}" for w, n in sorted(on.items())) + " (`sam2fpga plan` says why)")
    if args.backend == "rtl":           # hours at full size: said before it starts
        _log(rtl_forecast(ex))
    return GraphPredictor(qm.graph, ex), ex


def segment_on_overlay(args, image, predictor, ex):
    """segment() on the overlay; prints where nodes went for want of an engine and the per-stage figures."""
    from sw.cli import CommandError
    from sw.commands.segment import segment
    from sw.runtime.overlay_segment import missing_engines, stage_summary
    try:
        result = segment(image, args.point, args.box, None, predictor)
    except _overlay_errors() as e:
        raise CommandError(f"on the {ex.cfg.name} overlay ({args.backend} backend, a DDR arena of "
                           f"{ex.driver.ddr_bytes:,} bytes): {e}") from e
    finally:
        ex.driver.close()
    for line in missing_engines(ex):
        print(f"segment: preset {ex.cfg.name} has {line} (the placement rule)")
    if args.nodes:
        print(ex.table())
    print(stage_summary(ex))
    if ex.driver.compiles.store is not None:
        print("segment: " + ex.driver.compiles.store.summary())
    return result
