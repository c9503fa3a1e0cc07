"""`sam2fpga sim gemm --m M --k K --n N`: one random quantised linear layer, checked against golden."""
from __future__ import annotations


def add_arguments(parser):
    from hw.config import PRESETS
    parser.add_argument("what", choices=["gemm"], help="what to simulate")
    parser.add_argument("--m", type=int, required=True, help="rows of activations")
    parser.add_argument("--k", type=int, required=True, help="inner dimension")
    parser.add_argument("--n", type=int, required=True, help="output channels")
    parser.add_argument("--preset", default="sim", choices=sorted(PRESETS), help="overlay configuration")
    parser.add_argument("--backend", default="sim", choices=["sim", "rtl"], help="functional model or Verilator")
    parser.add_argument("--waves", action="store_true", help="dump waveforms (rtl)")
    parser.add_argument("--relu", action="store_true")
    parser.add_argument("--int32", action="store_true", help="int32 output (bias added, not requantised)")
    parser.add_argument("--stall", type=float, default=0.0, help="rtl: random AXI backpressure probability")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import numpy as np

    from golden_model.intops import gemm
    from hw.config import preset
    from sim.toolchain import ToolchainError
    from sw.cli import CommandError, UsageError
    from sw.compiler import CompileError
    from sw.driver import AcceleratorError, Driver

    if min(args.m, args.k, args.n) < 1:
        raise UsageError("--m, --k and --n must be positive")
    cfg = preset(args.preset)
    a, b, bias, mult, shift = random_layer(np.random.default_rng(args.seed), args.m, args.k, args.n)
    drv = Driver(cfg, args.backend, stall=args.stall, waves=args.waves or None)
    try:
        got = drv.linear(a, b, bias, mult, shift, relu=args.relu, out_int32=args.int32)
    except (CompileError, AcceleratorError, ToolchainError) as e:
        raise CommandError(str(e)) from e
    want = gemm(a, b, bias, mult, shift, relu=args.relu, out_int32=args.int32)
    run = drv.last_run
    ok = np.array_equal(got, want)
    print(f"gemm {args.m} x {args.k} x {args.n} on {cfg.name} ({cfg.rows} x {cfg.cols}), backend {args.backend}: "
          f"{'bit-exact against golden' if ok else 'MISMATCH against golden'}")
    print(f"  cycles {run.cycles}, MAC utilisation {run.utilisation:.1%}, {run.descriptors} descriptors, "
          f"{run.wall_s:.2f} s wall ({run.cycles_per_s:,.0f} simulated cycles/s)")
    if not ok:
        bad = np.argwhere(got != want)
        raise CommandError(f"{len(bad)} outputs differ, first at {tuple(bad[0])}")
    return 0


def random_layer(rng, m, k, n):
    import numpy as np
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-2**16, 2**16, n)
    # Scales that keep outputs spread over int8 for this K.
    mult = rng.integers(1 << 29, 1 << 30, n)
    shift = np.full(n, 30 + max(1, int(np.ceil(np.log2(128 * 128 * np.sqrt(k) / 64)))))
    return a, b, bias, mult, shift
