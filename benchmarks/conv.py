"""Convolution engine: RTL-simulated cycles and MAC utilisation of SAM 2's real convolutions.

Each layer runs on a tile (all of its channels, a band of output rows and columns) on the
16 x 16 overlay (preset bench16, 128-bit AXI), through the driver's own routing (sw/compile/routes.py):
the same call on the sim model and under Verilator, both checked bit for bit against
golden_model.intconv. The full layer's cycles are the tile's scaled by full MACs / tile MACs
(the schedule repeats per output tile, so this holds up to edge tiles; layers with short
reductions run several output rows per command, so their tiles span 64 output rows). Targets (issue 6):
MAC utilisation >= 80 % on the 3x3/s2 and 7x7/s4 layers; depthwise 7x7 at one output pixel
per cycle per channel lane (the depthwise engine's dw_lanes lanes; on the conv engine's route a
lane is an array row); the sim model's cycles within 5 % of the RTL's. The depthwise row also
gives the steady state: the same channels at half the height, and the extra cycles of the full
tile over those per pixel and lane. `ddr_bound` is the utilisation the AXI port allows at most
(mask_downsampler.0 is bandwidth-bound below the 80 % target on the Zynq presets' arrays). Resources:
yosys synth_xilinx of the same overlay.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import report

# name, kind, full (Cin, H, W), Cout, K, stride, padding, tile (Cin, H, W)
LAYERS = [
    ("patch_embed", "conv", (3, 1024, 1024), 96, 7, 4, 3, (3, 32, 128)),
    # Short reductions (9, 36): one command covers several output rows, so the tile spans 64 of them.
    ("mask_downsampler.0", "conv", (1, 1024, 1024), 4, 3, 2, 1, (1, 128, 128)),
    ("mask_downsampler.1", "conv", (4, 512, 512), 16, 3, 2, 1, (4, 128, 128)),
    ("mask_downsampler.2", "conv", (16, 256, 256), 64, 3, 2, 1, (16, 16, 64)),
    ("mask_downsampler.3", "conv", (64, 128, 128), 256, 3, 2, 1, (64, 16, 64)),
    ("mask_downsampler.4 1x1", "conv", (256, 64, 64), 256, 1, 1, 0, (256, 16, 16)),
    ("cxblock.dwconv", "depthwise", (256, 64, 64), 256, 7, 1, 3, (16, 64, 64)),     # tile: 16 of the channels
    ("fpn.lateral 96->256", "conv", (96, 256, 256), 256, 1, 1, 0, (96, 16, 16)),
    ("fpn.lateral 768->256", "conv", (768, 32, 32), 256, 1, 1, 0, (768, 8, 8)),
    ("conv_s0 256->32", "conv", (256, 256, 256), 32, 1, 1, 0, (256, 16, 16)),
    ("upscale.0 convT 256->64", "transposed", (256, 64, 64), 64, 2, 2, 0, (256, 16, 16)),
    ("upscale.1 convT 64->32", "transposed", (64, 128, 128), 32, 2, 2, 0, (64, 16, 16)),
]
TARGET_UTIL = 0.80


def macs(kind, shape, cout, k, stride, padding) -> int:
    from golden_model.intconv import out_size
    cin, h, w = shape
    if kind == "transposed":
        return cin * h * w * cout * k * k
    if kind == "depthwise":
        cout = cin
    ho, wo = out_size(h, k, stride, padding), out_size(w, k, stride, padding)
    return cout * ho * wo * (1 if kind == "depthwise" else cin) * k * k


def ddr_bound(cfg, kind, shape, cout, k, stride, padding) -> float:
    """The highest MAC utilisation DDR allows: AXI's read and write channels each move one beat a
    cycle, every input, weight and output byte crosses once (int8), so a layer takes at least
    max(MACs / (R x C), read bytes / beat, written bytes / beat) cycles. A layer with few MACs per
    byte (mask_downsampler.0: 9 per output byte) is bandwidth-bound on a large array whatever the
    dataflow. Per-channel parameters (9 bytes per channel) are left out."""
    from golden_model.intconv import out_size
    cin, h, w = shape
    if kind == "transposed":
        out_bytes, w_bytes = cout * h * stride * w * stride, cin * cout * k * k
    else:
        cout = cin if kind == "depthwise" else cout
        out_bytes = cout * out_size(h, k, stride, padding) * out_size(w, k, stride, padding)
        w_bytes = cout * (1 if kind == "depthwise" else cin) * k * k
    compute = macs(kind, shape, cout, k, stride, padding) / (cfg.rows * cfg.cols)
    return compute / max(compute, (cin * h * w + w_bytes) / cfg.beat_bytes, out_bytes / cfg.beat_bytes)


def lanes(cfg, engine) -> int:
    """Channel lanes of the route that ran a depthwise layer."""
    return cfg.dw_lanes if engine == "depthwise" else cfg.rows


def tile_case(i, kind, tile, cout, k):
    from golden_model import intconv
    from sw.commands.sim import random_conv
    cin, h, w = tile
    cout = cin if kind == "depthwise" else cout
    data = random_conv(np.random.default_rng(i), cin, h, w, cout, k,
                       depthwise=kind == "depthwise", transposed=kind == "transposed")
    op, golden = {"conv": ("conv2d", intconv.conv2d), "depthwise": ("depthwise_conv2d", intconv.depthwise_conv2d),
                  "transposed": ("conv_transpose2d", intconv.conv_transpose2d)}[kind]
    return data, op, golden


def run(synth: bool = True, preset_name: str = "bench16", model_presets: tuple[str, ...] = (),
        only: str = "", engines: tuple[str, ...] = ()) -> None:
    """RTL on `preset_name` (+ its sim model); `model_presets`: further overlays, sim model only;
    `only`: just the layers whose name contains it (report name suffixed with it); `engines`: build
    the overlay with only these (a smaller Verilator build; layers whose engine is missing fall back)."""
    from hw.config import preset
    from sw.runtime.driver import Driver

    cfg = preset(preset_name)
    if engines:
        cfg = cfg.replace(engines=tuple(engines))
    sim, rtl = Driver(cfg, "sim"), Driver(cfg, "rtl", timeout_cycles=20_000_000)
    rows = []
    t_all = time.monotonic()
    for i, (name, kind, full, cout, k, stride, padding, tile) in enumerate(LAYERS):
        if only not in name:
            continue
        (x, wt, bias, mult, shift), op, golden = tile_case(i, kind, tile, cout, k)
        kw = dict(stride=stride, padding=padding)
        want = golden(x, wt, bias, mult, shift, **kw)
        got_sim = getattr(sim, op)(x, wt, bias, mult, shift, **kw)
        s = sim.last_run
        t0 = time.monotonic()
        got_rtl = getattr(rtl, op)(x, wt, bias, mult, shift, **kw)
        r = rtl.last_run
        tile_macs = macs(kind, tile, cout, k, stride, padding)
        assert r.macs == tile_macs, (name, r.macs, tile_macs)
        full_macs = macs(kind, full, cout, k, stride, padding)
        row = {"layer": name, "k/s/p": f"{k}/{stride}/{padding}", "full": "x".join(map(str, full)) + f"->{cout}",
               "tile": "x".join(map(str, tile)), "route": r.engine, "rtl_cycles": r.cycles,
               "mac_util": r.utilisation, "ddr_bound": ddr_bound(cfg, kind, tile, cout, k, stride, padding),
               "sim_cycles": s.cycles, "sim_vs_rtl": s.cycles / r.cycles - 1,
               "full_cycles": round(r.cycles * full_macs / tile_macs),
               "full_ms@clk": r.cycles * full_macs / tile_macs / (cfg.clock_mhz * 1e3),
               "bit_exact": bool(np.array_equal(got_rtl, want) and np.array_equal(got_sim, want)),
               "rtl_wall_s": round(time.monotonic() - t0, 1)}
        if kind == "depthwise":
            nl = lanes(cfg, r.engine)
            row["px/cycle/lane"] = want.size / (r.cycles * nl)
            # Steady state: the same channels at half the height; extra pixels per lane / extra cycles.
            (x2, wt2, b2, m2, s2), _, _ = tile_case(i + 100, kind, (tile[0], tile[1] // 2, tile[2]), cout, k)
            got_half = getattr(rtl, op)(x2, wt2, b2, m2, s2, **kw)
            assert np.array_equal(got_half, golden(x2, wt2, b2, m2, s2, **kw))
            row["steady px/cycle/lane"] = (want.size - got_half.size) / ((r.cycles - rtl.last_run.cycles) * nl)
            row["lanes"] = f"{nl} ({r.engine})"
            row["target"] = "1 px/cycle/lane (steady state)"
            row["met"] = row["steady px/cycle/lane"] >= 0.99
        elif kind == "conv" and ((k, stride) in ((3, 2), (7, 4))):
            row["target"] = f"util >= {TARGET_UTIL:.0%}"
            row["met"] = r.utilisation >= TARGET_UTIL
            row["target_reachable"] = row["ddr_bound"] >= TARGET_UTIL
        row["sim_within_5%"] = abs(row["sim_vs_rtl"]) <= 0.05
        rows.append(row)
        print(f"  {name}: {r.cycles} cycles, util {r.utilisation:.1%}, sim {row['sim_vs_rtl']:+.1%}", flush=True)
    notes = (f"{cfg.name} overlay with engines {'+'.join(cfg.engines)} ({cfg.rows}x{cfg.cols}, {cfg.axi_data_bits}-bit AXI, "
             f"{cfg.clock_mhz:.0f} MHz), "
             "random int8 data, DDR = cocotbext-axi slave without stalls; cycles START..DONE of the tile, DMA "
             "included; full-layer cycles = tile cycles x full MACs / tile MACs. "
             f"Total wall incl. Verilator build: {time.monotonic() - t_all:.0f} s")
    if synth:
        from benchmarks.gemm import synth_resources
        t0 = time.monotonic()
        res = synth_resources(cfg)
        res["synth_wall_s"] = round(time.monotonic() - t0)
        rows.append({"layer": "yosys synth_xilinx -family xcup -flatten (whole overlay: gemm + attention + conv)",
                     **res})
    suffix = f"-{only.replace(' ', '_')}" if only else ""
    report(("conv" if preset_name == "bench16" else f"conv-{preset_name}") + suffix, rows, notes=notes)
    for name in model_presets:
        model_only(preset(name), only)


def model_only(cfg, only: str = "") -> None:
    """The sim model's cycles (within 5 % of the RTL's where measured) on another overlay."""
    from sw.runtime.driver import Driver
    drv = Driver(cfg, "sim")
    rows = []
    for i, (name, kind, full, cout, k, stride, padding, tile) in enumerate(LAYERS):
        if only not in name:
            continue
        (x, wt, bias, mult, shift), op, golden = tile_case(i, kind, tile, cout, k)
        kw = dict(stride=stride, padding=padding)
        got = getattr(drv, op)(x, wt, bias, mult, shift, **kw)
        r = drv.last_run
        full_macs = macs(kind, full, cout, k, stride, padding)
        row = {"layer": name, "k/s/p": f"{k}/{stride}/{padding}", "route": r.engine, "model_cycles": r.cycles,
               "mac_util": r.utilisation, "ddr_bound": ddr_bound(cfg, kind, tile, cout, k, stride, padding),
               "full_cycles": round(r.cycles * full_macs / r.macs),
               "full_ms@clk": r.cycles * full_macs / r.macs / (cfg.clock_mhz * 1e3),
               "bit_exact": bool(np.array_equal(got, golden(x, wt, bias, mult, shift, **kw)))}
        if kind == "depthwise":
            row["px/cycle/lane"] = got.size / (r.cycles * lanes(cfg, r.engine))
        rows.append(row)
    report(f"conv-model-{cfg.name}" + (f"-{only.replace(' ', '_')}" if only else ""), rows, notes=f"{cfg.name} overlay ({cfg.rows}x{cfg.cols}, {cfg.axi_data_bits}-bit "
           "AXI): SIM MODEL cycles (not RTL), same tiles and scaling as `conv`")


def ddr_bounds(presets=("sim", "pynq-z2", "bench16", "kv260", "zcu104")) -> None:
    """The DDR bound of every full layer on each overlay (docs/conv.md's table); no simulation."""
    from hw.config import preset
    rows = [{"layer": name, "k/s/p": f"{k}/{stride}/{padding}",
             **{p: ddr_bound(preset(p), kind, full, cout, k, stride, padding) for p in presets}}
            for name, kind, full, cout, k, stride, padding, _ in LAYERS if kind != "depthwise"]
    report("conv-ddr-bounds", rows, notes="highest MAC utilisation the AXI port allows per full layer "
           "(benchmarks.conv.ddr_bound), per preset")


if __name__ == "__main__":   # python -m benchmarks.conv [--no-synth] [--preset NAME] [--model PRESET ...]
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--no-synth", action="store_true")
    p.add_argument("--preset", default="bench16")
    p.add_argument("--model", nargs="*", default=[])
    p.add_argument("--only", default="", help="just the layers whose name contains this")
    p.add_argument("--engines", default="", help="comma-separated engines to build (default: the preset's)")
    p.add_argument("--ddr-bounds", action="store_true", help="only print each layer's DDR bound per preset")
    a = p.parse_args()
    if a.ddr_bounds:
        ddr_bounds()
        raise SystemExit(0)
    run(synth=not a.no_synth, preset_name=a.preset, model_presets=tuple(a.model), only=a.only,
        engines=tuple(e for e in a.engines.split(",") if e))
