"""`sam2fpga demo`: the most complete path the project has, end to end.

Today: generate Verilog for the requantiser (the output stage every engine
shares), simulate it under cocotb/Verilator against its NumPy reference with
random stalls; then one quantised linear layer through the whole GEMM overlay
(compiler -> descriptors -> DDR) on the sim and rtl backends, checked bit-exact
against golden, with cycles and MAC utilisation; one attention call (a 64x64 query
map against two 64x64 memory frames, d 256) on the sim backend whole and on the rtl
backend as a tile of it, checked bit-exact against golden, with cycles and the error
against float attention; SAM 2's patch-embed convolution (7x7 stride 4, 3 -> 96
channels) on a tile of a real photo through the convolution engine, on the sim and
rtl backends, checked bit-exact against golden; a linear -> attention -> linear -> conv ->
depthwise chain whose activations stay in DDR on the sim and pynq backends (host <-> DDR bytes
per run: input and output only); an integer LayerNorm on the vector engine (sim and rtl); the
modelled kv260 profile of SAM 2.1 tiny (image embedding and a steady-state video frame, overlay vs
host); segment a real photo (scikit-image's cat) from one click on the NumPy golden SAM 2.1 tiny and
write the overlay PNG; and finally the same photo and click through int8 SAM 2 on the overlay (a
scaled-down tiny at 256 px on the bench16 preset, every engine, sim backend): bit for bit the host
integer reference, with the per-stage modelled times, and its PNG. Without
--checkpoint the model has seeded random weights, and the demo says so.
"""
from __future__ import annotations

import time
from pathlib import Path

from sw.errors import CommandError


def add_arguments(parser):
    parser.add_argument("--waves", action="store_true", help="dump waveforms (VCD) into build/sim/")
    parser.add_argument("-o", "--out", type=Path, default=Path("build/demo"),
                        help="where generated Verilog and the segmentation overlay go (default: build/demo)")
    parser.add_argument("--checkpoint", type=Path,
                        help="official SAM 2.1 tiny checkpoint for the segmentation step (default: random weights)")


def run(args) -> int:
    from sim.toolchain import ToolchainError
    from sw import outputs
    from sw.cli import CommandError

    outputs.check_output_dir(args.out, "-o")
    try:
        _requant_smoke(args)
        _gemm_layer(args)
        _attention_call(args)
        _patch_embed_tile(args)
        _chain_in_ddr()
        _vector_layernorm(args)
    except ToolchainError as e:
        raise CommandError(str(e)) from e
    _profile_kv260()
    _segment_photo(args)
    _segment_on_overlay(args)
    print("demo: OK")
    return 0


def _bit_exact_on(args, cfg, what: str, call, want):
    """call(driver) on the sim and rtl backends, each checked bit-exact against `want`: yields
    (backend, output, its RunStats, seconds)."""
    import numpy as np

    from sw.runtime.driver import Driver
    for backend in ("sim", "rtl"):
        t0 = time.monotonic()
        drv = Driver(cfg, backend, waves=args.waves or None)
        got = call(drv)
        if not np.array_equal(got, want):
            raise CommandError(f"{what} on {backend}: differs from golden in {int((got != want).sum())} outputs")
        yield backend, got, drv.last_run, time.monotonic() - t0


def _requant_smoke(args) -> None:
    from hw.requant import Requantizer
    from hw.verilog import write_verilog
    from sim.runner import run_bench

    print("[1/10] Amaranth -> Verilog: requantiser (int32 -> int8, fixed-point multiplier and shift)")
    path = write_verilog(Requantizer(), "requant", args.out)
    print(f"      wrote {path} ({len(path.read_text().splitlines())} lines)")
    print("[2/10] cocotb + Verilator: RTL vs golden_model.intops.requantize, random stalls on both streams")
    t0 = time.monotonic()
    result = run_bench(path, "requant", "requant_bench", name="demo-requant", waves=args.waves)
    print(f"      {result.passed} cocotb tests passed, 0 failed, bit-exact against golden "
          f"({time.monotonic() - t0:.1f} s incl. Verilator build)")
    if result.waves:
        print(f"      waveforms: {result.waves}")


def _gemm_layer(args) -> None:
    import numpy as np

    from golden_model.intops import gemm
    from hw.config import preset
    from sw.commands.sim import random_layer

    cfg = preset("sim")
    m, k, n = 24, 96, 40
    print(f"[3/10] GEMM overlay ({cfg.rows} x {cfg.cols} systolic array, preset {cfg.name}): quantised linear layer "
          f"{m} x {k} x {n}, int8 + per-channel requantisation + ReLU, operands in DDR")
    a, b, bias, mult, shift = random_layer(np.random.default_rng(0), m, k, n)
    want = gemm(a, b, bias, mult, shift, relu=True)
    for backend, _, r, dt in _bit_exact_on(args, cfg, "the linear layer", lambda drv: drv.linear(
            a, b, bias, mult, shift, relu=True), want):
        print(f"      {backend:<3}: bit-exact against golden; {r.cycles} cycles, MAC utilisation {r.utilisation:.1%}, "
              f"{r.descriptors} descriptors ({dt:.1f} s)")


#: The demo's attention call: a 64 x 64 query map against two 64 x 64 memory frames, head dim 256.
ATTN_QUERIES, ATTN_KEYS, ATTN_D = 64 * 64, 2 * 64 * 64, 256
#: The part of it Verilator runs inside the demo's time budget (the sim model runs it whole).
ATTN_RTL_QUERIES, ATTN_RTL_KEYS = 4, 1024


def _attention_call(args) -> None:
    import numpy as np

    from golden_model import intattn
    from hw.config import preset
    from sw.cli import CommandError
    from sw.commands.sim import attention_error, random_attention
    from sw.runtime.driver import Driver

    big, small = preset("bench16"), preset("sim")
    lq, lk, d = ATTN_QUERIES, ATTN_KEYS, ATTN_D
    print(f"[4/10] attention engine (integer online softmax, Q K^T on the GEMM array + P V array): "
          f"{lq} queries (64x64 map) x {lk} keys (2 memory frames), d {d}, int8 q/k/v in DDR")
    t0 = time.monotonic()
    q, k, v, quant, scales = random_attention(np.random.default_rng(0), 1, lq, lk, d)
    drv = Driver(big, "sim", ddr_bytes=1 << 27)
    got = drv.attention(q, k, v, quant)
    want = intattn.attention(q[0], k[0], v[0], quant, big.cols)[None]
    if not np.array_equal(got, want):
        raise CommandError(f"sim backend differs from golden in {int((got != want).sum())} outputs")
    err, floor = attention_error(got, q, k, v, scales)
    r = drv.last_run
    print(f"      sim: whole call on {big.name} ({big.rows} x {big.cols}): bit-exact against golden; {r.cycles:,} "
          f"cycles ({r.cycles / big.clock_mhz / 1e3:.0f} ms at {big.clock_mhz:g} MHz), MAC utilisation "
          f"{r.utilisation:.1%}, {len(drv.last_programs)} programs ({time.monotonic() - t0:.1f} s)")
    print(f"      relative L2 error against float attention: {err:.2%} (the int8 output grid alone: {floor:.2%}; "
          f"the engine's own: {np.sqrt(max(err ** 2 - floor ** 2, 0)):.2%})")
    # Verilator simulates ~10^4 cycles/s: the whole call (~10^8 cycles) would take hours, so the rtl
    # backend runs a tile of the same inputs on the small overlay the GEMM step built.
    tq, tk = ATTN_RTL_QUERIES, ATTN_RTL_KEYS
    tile = q[:, :tq], k[:, :tk], v[:, :tk]
    want = intattn.attention(*(x[0] for x in tile), quant, small.cols)[None]
    cycles = {}
    for backend in ("sim", "rtl"):
        t0 = time.monotonic()
        drv = Driver(small, backend, waves=args.waves or None)
        got = drv.attention(*tile, quant)
        if not np.array_equal(got, want):
            raise CommandError(f"{backend} backend differs from golden in {int((got != want).sum())} outputs")
        cycles[backend] = drv.last_run.cycles
        print(f"      {backend:<3}: tile of the same call, queries 0..{tq - 1} x keys 0..{tk - 1}, d {d}, on "
              f"{small.name} ({small.rows} x {small.cols}): bit-exact against golden; {drv.last_run.cycles:,} "
              f"cycles, MAC utilisation {drv.last_run.utilisation:.1%} ({time.monotonic() - t0:.1f} s)")
    print(f"      (rtl runs a tile: the whole call is ~10^8 cycles, hours under Verilator); "
          f"sim model vs rtl cycles: {cycles['sim'] / cycles['rtl'] - 1:+.1%}")
#: The patch-embed step's tile of the photo: 64 x 64 pixels around the cat's face (rows, columns).
PATCH_TILE = (140, 220, 64)


def _patch_embed_tile(args) -> None:
    import numpy as np

    from golden_model import intconv
    from hw.config import preset
    from sw.commands.sim import random_conv

    cfg = preset("sim")
    y0, x0, n = PATCH_TILE
    photo = _photo()
    # uint8 RGB -> int8 CHW (x - 128), the int8 image the quantised patch embed sees.
    x = np.ascontiguousarray((photo[y0:y0 + n, x0:x0 + n].astype(np.int16) - 128).astype(np.int8).transpose(2, 0, 1))
    _, wt, bias, mult, shift = random_conv(np.random.default_rng(0), 3, 1, 1, 96, 7)
    print(f"[5/10] convolution engine: SAM 2 patch embed (7x7 stride 4 pad 3, 3 -> 96 channels, seeded random "
          f"int8 weights) on a {n}x{n} tile of the photo, im2col on the fly from DDR")
    want = intconv.conv2d(x, wt, bias, mult, shift, stride=4, padding=3)
    for backend, got, r, dt in _bit_exact_on(args, cfg, "patch embed", lambda drv: drv.conv2d(
            x, wt, bias, mult, shift, stride=4, padding=3), want):
        print(f"      {backend:<3}: {'x'.join(map(str, got.shape))} bit-exact against golden on the {r.engine} "
              f"engine; {r.cycles} cycles, MAC utilisation {r.utilisation:.1%} ({dt:.1f} s)")


def _chain_in_ddr() -> None:
    import numpy as np

    from hw.config import preset
    from sw.cli import CommandError
    from sw.runtime.backend import open_backend
    from sw.runtime.chain import Chain, ChainSpec, ChainWeights
    from sw.runtime.session import Session

    cfg, spec = preset("bench16"), ChainSpec()
    print(f"[6/10] runtime: linear -> attention -> linear -> conv -> depthwise on {cfg.name}, activations kept in "
          f"DDR ({spec.channels_in} x {spec.height} x {spec.width} input; docs/runtime.md)")
    x = np.random.default_rng(1).integers(-128, 128, (spec.channels_in, spec.height, spec.width)).astype(np.int8)
    weights = ChainWeights.random(spec)
    for backend in ("sim", "pynq"):
        t0 = time.monotonic()
        session = Session(open_backend(backend, cfg))
        try:
            chain = Chain(session, weights)
            chain.run(x)                              # warm: the second run shows what crosses per run
            y = chain.run(x)
        finally:
            session.close()
        if not np.array_equal(y, chain.golden(x)):
            raise CommandError(f"the chain on {backend} differs from golden")
        t = chain.last_traffic
        print(f"      {backend:<4}: bit-exact against golden; once {chain.setup_traffic.to_ddr:,} bytes to DDR "
              f"(weights {chain.setup_bytes['weights']:,}), per run {t.to_ddr:,} in / {t.from_ddr:,} out; "
              f"{sum(r.cycles for r in chain.last_runs):,} cycles ({time.monotonic() - t0:.1f} s)")


def _vector_layernorm(args) -> None:
    import numpy as np

    from golden_model import intvec
    from hw.config import preset

    cfg = preset("sim")
    rng = np.random.default_rng(0)
    tokens, dim = 64, 96
    x = rng.integers(-128, 128, (tokens, dim), dtype=np.int8)
    p = intvec.LayerNormParams.make(rng.normal(1, 0.5, dim), rng.normal(0, 0.5, dim), 0.04, 0.02, 1e-6)
    print(f"[7/10] vector engine ({cfg.vec_lanes} lanes): integer LayerNorm over {tokens} tokens x {dim} channels "
          f"(Hiera stage 1's width), rows DMA'd from DDR and back")
    want = intvec.layernorm(x, p)
    for backend, _, r, dt in _bit_exact_on(args, cfg, "LayerNorm", lambda drv: drv.vector("layernorm", x, p), want):
        print(f"      {backend:<3}: bit-exact against golden_model.intvec; {r.cycles} cycles, "
              f"{tokens * dim / r.cycles:.2f} elements per cycle ({dt:.1f} s)")


def _profile_kv260() -> None:
    from hw.config import preset
    from sw.perf.profile import profile

    cfg = preset("kv260")
    print(f"[8/10] profile: SAM 2.1 tiny at 1024 on {cfg.name} ({cfg.rows} x {cfg.cols}, {cfg.clock_mhz:g} MHz), "
          "modelled (cycle model + host cost model; docs/profile.md)")
    t0 = time.monotonic()
    totals = profile("tiny", cfg, video=True).totals()
    for stage in ("image embedding", "video frame (steady state, full bank)"):
        t = totals[stage]
        host = t["by_engine"].get("host", 0.0)
        print(f"      {stage}: {t['seconds']:.2f} s ({t['seconds'] - host:.2f} s on the overlay, {host:.2f} s host ops)")
    print(f"      ({time.monotonic() - t0:.1f} s to profile; the element-wise ops on its "
          f"{cfg.vec_lanes}-lane vector engine)")


def _photo():
    from sw.cli import CommandError
    try:
        from skimage import data
    except ImportError as e:
        raise CommandError("the photo steps need scikit-image (pip install scikit-image, or install the "
                           "project's [test] extra)") from e
    return data.chelsea()


#: The demo photo and its click: scikit-image's `chelsea` (451x300), a point on the cat's face.
DEMO_POINT = (250.0, 170.0, 1)


def _segment_photo(args) -> None:
    import numpy as np

    from sw import outputs
    from sw.commands.segment import build_model, overlay, segment

    print("[9/10] golden SAM 2.1 tiny (NumPy): segment a photo from one click")
    image = _photo()
    model = build_model("tiny", args.checkpoint, seed=0)
    if args.checkpoint is None:
        print("      no --checkpoint: RANDOM weights (seed 0), so the mask shows the pipeline, "
              "not a real segmentation")
    t0 = time.monotonic()
    logits, iou, best, n = segment(image, [DEMO_POINT], None, model)
    mask = logits > 0
    path = outputs.save_png(args.out / "segment_chelsea.png", overlay(image, mask, [DEMO_POINT]))
    print(f"      {image.shape[1]}x{image.shape[0]} photo, click {DEMO_POINT[0]:g},{DEMO_POINT[1]:g}: "
          f"mask {best + 1} of {n} (predicted IoU {iou:.3f}), {100 * np.mean(mask):.1f}% of pixels "
          f"({time.monotonic() - t0:.1f} s)")
    print(f"      wrote {path}")


#: The overlay step's model: tiny scaled to 256 px (every block runs; a 1024 px run on the sim backend takes
#: minutes, docs/overlay-run.md), on the preset that carries every engine.
OVERLAY_DEMO_SIZE, OVERLAY_DEMO_PRESET = 256, "bench16"


def _segment_on_overlay(args) -> None:
    import argparse

    import numpy as np

    from golden_model.quant.builder import random_model
    from golden_model.quant.intinterp import IntRunner
    from golden_model.quant.predictor import GraphPredictor
    from hw.config import preset
    from sw import outputs
    from sw.commands.quantize import quantise_model
    from sw.commands.segment import overlay, segment
    from sw.runtime.overlay_segment import OverlayRunner, stage_summary
    from sw.runtime.program_store import store_from

    cfg = preset(OVERLAY_DEMO_PRESET)
    print(f"[10/10] int8 SAM 2 on the overlay: SAM 2.1 tiny at {OVERLAY_DEMO_SIZE} px (RANDOM weights, seed 0), "
          f"preset {cfg.name} ({cfg.rows} x {cfg.cols}, engines {', '.join(cfg.engines)}), sim backend")
    image = _photo()
    t0 = time.monotonic()
    qm = quantise_model(random_model("tiny", OVERLAY_DEMO_SIZE, seed=0),
                        argparse.Namespace(preset=cfg.name, calib=None, estimator="percentile"),
                        lambda m: print("      " + m))
    t1 = time.monotonic()
    want = segment(image, [DEMO_POINT], None, None, GraphPredictor(qm.graph, IntRunner(qm)))
    t2 = time.monotonic()
    ex = OverlayRunner(qm, cfg, "sim", program_store=store_from())     # the CLI's store (docs/runtime.md)
    try:
        got = segment(image, [DEMO_POINT], None, None, GraphPredictor(qm.graph, ex))
    finally:
        ex.driver.close()
    t3 = time.monotonic()
    if not np.array_equal(got[0], want[0]):
        raise CommandError(f"int8 SAM 2 on the overlay differs from the host int8 reference in "
                           f"{int((got[0] != want[0]).sum())} logits")
    on = sum(r.where not in ("host", "layout") for r in ex.records.values())
    print(f"      {on} of {len(ex.records)} nodes on the overlay's engines; logits bit-exact against the host int8 "
          f"reference (host {t2 - t1:.1f} s, sim backend {t3 - t2:.1f} s; quantised in {t1 - t0:.1f} s)")
    for line in stage_summary(ex).splitlines()[:-1]:
        print("      " + line)
    mask = got[0] > 0
    path = outputs.save_png(args.out / "segment_chelsea_overlay.png", overlay(image, mask, [DEMO_POINT]))
    print(f"      mask {got[2] + 1} of {got[3]} (predicted IoU {got[1]:.3f}), {100 * np.mean(mask):.1f}% of pixels; "
          f"wrote {path}")
