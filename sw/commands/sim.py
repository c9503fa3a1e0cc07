"""`sam2fpga sim gemm|conv`: one random quantised layer on the overlay, checked against golden bit for bit.

  sim gemm --m M --k K --n N
  sim conv --in CxHxW --out C --k K --stride S [--padding P] [--depthwise | --transposed]
"""
from __future__ import annotations


def add_arguments(parser):
    from hw.config import PRESETS
    parser.add_argument("what", choices=["gemm", "conv"], help="what to simulate")
    gemm = parser.add_argument_group("gemm")
    gemm.add_argument("--m", type=int, help="rows of activations")
    gemm.add_argument("--n", type=int, help="output channels")
    parser.add_argument("--k", type=int, help="gemm: inner dimension; conv: kernel size K (K x K)")
    conv = parser.add_argument_group("conv")
    conv.add_argument("--in", dest="in_shape", metavar="CxHxW", help="input feature map, e.g. 3x64x64")
    conv.add_argument("--out", type=int, help="output channels (depthwise: must equal C)")
    conv.add_argument("--stride", type=int, default=1)
    conv.add_argument("--padding", type=int, default=None,
                      help="zero padding (default: (K-1)//2; transposed: 0)")
    kind = conv.add_mutually_exclusive_group()
    kind.add_argument("--depthwise", action="store_true", help="one K x K filter per channel")
    kind.add_argument("--transposed", action="store_true", help="transposed convolution (kernel == stride)")
    parser.add_argument("--preset", default="sim", choices=sorted(PRESETS), help="overlay configuration")
    parser.add_argument("--backend", default="sim", choices=["sim", "rtl"], help="functional model or Verilator")
    parser.add_argument("--waves", action="store_true", help="dump waveforms (rtl)")
    parser.add_argument("--relu", action="store_true")
    parser.add_argument("--int32", action="store_true", help="int32 output (bias added, not requantised)")
    parser.add_argument("--stall", type=float, default=0.0, help="rtl: random AXI backpressure probability")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from sw.cli import UsageError
    if args.what == "gemm":
        if args.m is None or args.k is None or args.n is None:
            raise UsageError("sim gemm needs --m, --k and --n")
        if min(args.m, args.k, args.n) < 1:
            raise UsageError("--m, --k and --n must be positive")
        return _run_gemm(args)
    return _run_conv(args)


def _run_layer(args, cfg, title, call, want, show_route=False):
    """Run `call(driver)` on the chosen backend, compare with `want()` (golden, computed after the run so
    that a layer the overlay refuses fails fast), print cycles and utilisation."""
    import numpy as np

    from sim.toolchain import ToolchainError
    from sw.cli import CommandError
    from sw.compiler import CompileError
    from sw.conv import ConvError
    from sw.driver import AcceleratorError, Driver

    drv = Driver(cfg, args.backend, stall=args.stall, waves=args.waves or None)
    try:
        got = call(drv)
    except (CompileError, ConvError, AcceleratorError, ToolchainError) as e:
        raise CommandError(str(e)) from e
    want = want()
    run = drv.last_run
    ok = got.shape == want.shape and np.array_equal(got, want)
    print(f"{title} on {cfg.name} ({cfg.rows} x {cfg.cols}), backend {args.backend}: "
          f"{'bit-exact against golden' if ok else 'MISMATCH against golden'}")
    if show_route:
        print(f"  route: {run.engine} ({ROUTES.get(run.engine, '')})")
    print(f"  cycles {run.cycles}, MAC utilisation {run.utilisation:.1%} ({run.macs:,} MACs), "
          f"{run.descriptors} descriptors, {run.wall_s:.2f} s wall ({run.cycles_per_s:,.0f} simulated cycles/s)")
    if not ok:
        bad = np.argwhere(got != want) if got.shape == want.shape else []
        where = f", first at {tuple(bad[0])}" if len(bad) else f" (shape {got.shape}, want {want.shape})"
        raise CommandError(f"{len(bad)} outputs differ{where}")
    return 0


def _run_gemm(args) -> int:
    import numpy as np

    from golden_model.intops import gemm
    from hw.config import preset

    cfg = preset(args.preset)
    a, b, bias, mult, shift = random_layer(np.random.default_rng(args.seed), args.m, args.k, args.n)
    return _run_layer(args, cfg, f"gemm {args.m} x {args.k} x {args.n}", lambda drv: drv.linear(
        a, b, bias, mult, shift, relu=args.relu, out_int32=args.int32),
        lambda: gemm(a, b, bias, mult, shift, relu=args.relu, out_int32=args.int32))


ROUTES = {"conv": "convolution engine: on-the-fly im2col into the systolic array",
          "gemm": "GEMM engine, no im2col (sw/conv.py)", "gemm-im2col": "GEMM engine on host-built im2col rows"}


def parse_chw(text: str) -> tuple[int, int, int]:
    """'3x64x64' -> (3, 64, 64)."""
    from sw.cli import UsageError
    parts = (text or "").lower().split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--in {text!r}: expected CxHxW, e.g. 3x64x64") from None
    if min(c, h, w) < 1:
        raise UsageError(f"--in {text!r}: channels, height and width must be positive")
    return c, h, w


def _run_conv(args) -> int:
    import numpy as np

    from golden_model import intconv
    from hw.config import preset
    from sw.cli import UsageError

    if args.in_shape is None or args.out is None or args.k is None:
        raise UsageError("sim conv needs --in CxHxW, --out C and --k K")
    if args.m is not None or args.n is not None:
        raise UsageError("--m and --n are for sim gemm")
    cin, h, w = parse_chw(args.in_shape)
    k, stride, cout = args.k, args.stride, args.out
    if k < 1 or stride < 1 or cout < 1:
        raise UsageError("--k, --stride and --out must be positive")
    padding = args.padding if args.padding is not None else (0 if args.transposed else (k - 1) // 2)
    if padding < 0:
        raise UsageError("--padding must be >= 0")
    if args.depthwise and cout != cin:
        raise UsageError(f"--depthwise: --out {cout} must equal the {cin} input channels")
    if args.transposed and (k != stride or padding):
        raise UsageError(f"--transposed runs kernel == stride without padding (SAM 2's 2x2/s2); "
                         f"got --k {k} --stride {stride} --padding {padding}")
    if not args.transposed and min(intconv.out_size(h, k, stride, padding),
                                   intconv.out_size(w, k, stride, padding)) < 1:
        raise UsageError(f"a {k}x{k} kernel with padding {padding} does not fit a {h}x{w} input")
    x, wt, bias, mult, shift = random_conv(np.random.default_rng(args.seed), cin, h, w, cout, k,
                                           depthwise=args.depthwise, transposed=args.transposed)
    kw = dict(stride=stride, padding=padding, relu=args.relu, out_int32=args.int32)
    kind, golden, op = {(True, False): ("depthwise", intconv.depthwise_conv2d, "depthwise_conv2d"),
                        (False, True): ("transposed", intconv.conv_transpose2d, "conv_transpose2d"),
                        (False, False): ("conv", intconv.conv2d, "conv2d")}[args.depthwise, args.transposed]
    if args.transposed:
        ho, wo = h * k, w * k
    else:
        ho, wo = intconv.out_size(h, k, stride, padding), intconv.out_size(w, k, stride, padding)
    title = f"{kind} {k}x{k}/s{stride} pad {padding}: {cin}x{h}x{w} -> {cout}x{ho}x{wo}"
    return _run_layer(args, preset(args.preset), title,
                      lambda drv: getattr(drv, op)(x, wt, bias, mult, shift, **kw),
                      lambda: golden(x, wt, bias, mult, shift, **kw), show_route=True)


def random_conv(rng, cin, h, w, cout, k, *, depthwise=False, transposed=False):
    """Random int8 input and weights and per-channel requantisation that spreads outputs over int8."""
    import numpy as np
    x = rng.integers(-128, 128, (cin, h, w)).astype(np.int8)
    shape = (cin, cout, k, k) if transposed else (cout, 1 if depthwise else cin, k, k)
    wt = rng.integers(-128, 128, shape).astype(np.int8)
    red = k * k * (1 if depthwise or transposed else cin) if not transposed else cin
    bias = rng.integers(-2**16, 2**16, cout)
    mult = rng.integers(1 << 29, 1 << 30, cout)
    shift = np.full(cout, 30 + max(1, int(np.ceil(np.log2(128 * 128 * np.sqrt(red) / 64)))))
    return x, wt, bias, mult, shift


def random_layer(rng, m, k, n):
    import numpy as np
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-2**16, 2**16, n)
    # Scales that keep outputs spread over int8 for this K.
    mult = rng.integers(1 << 29, 1 << 30, n)
    shift = np.full(n, 30 + max(1, int(np.ceil(np.log2(128 * 128 * np.sqrt(k) / 64)))))
    return a, b, bias, mult, shift
