"""`sam2fpga sim gemm|conv|attention ...`: one random quantised layer on the overlay, checked against golden.

  sim gemm --m M --k K --n N            one linear layer (int8 GEMM + requantisation)
  sim conv --in CxHxW --out C --k K --stride S [--padding P] [--depthwise | --transposed]
  sim attention --q Q --kv KV --d D     one attention (int8 q, k, v; online softmax), per head
  sim chain [--backend sim|rtl|pynq]    linear -> attention -> linear -> conv -> depthwise kept in DDR
  sim vector --op OP --rows R --dim D   one element-wise op (LayerNorm, GELU, add, RoPE, max-pool, upsample)

--fault KIND[:persistent] injects an AXI fault (sw/backends/faults.py) into the simulated device: the
runtime resets the overlay and retries once (printed as "recovered"); a persistent one ends in one
error line naming the program (docs/robustness.md).
"""
from __future__ import annotations

from sw import inputs


def add_arguments(parser):
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    g = sub.add_parser("gemm", help="one quantised linear layer", description="one quantised linear layer")
    g.add_argument("--m", type=int, required=True, help="rows of activations")
    g.add_argument("--k", type=int, required=True, help="inner dimension")
    g.add_argument("--n", type=int, required=True, help="output channels")
    g.add_argument("--relu", action="store_true")
    g.add_argument("--int32", action="store_true", help="int32 output (bias added, not requantised)")
    g.add_argument("--lut", choices=sorted(STORE_TABLES),
                   help="a table fused into the GEMM store after the requantiser (presets with store_lut: sim, "
                        "bench16; docs/vector.md)")
    g.add_argument("--add", action="store_true",
                   help="a residual add (a random int8 M x N residual at another scale) fused into the GEMM store "
                        "after the requantiser (and the table) (presets with store_add: sim, bench16; docs/vector.md)")
    _common(g)
    g.set_defaults(_run=run_gemm)
    c = sub.add_parser("conv", help="one quantised convolution", description="one quantised convolution")
    c.add_argument("--in", dest="in_shape", metavar="CxHxW", required=True, help="input feature map, e.g. 3x64x64")
    c.add_argument("--out", type=int, required=True, help="output channels (depthwise: must equal C)")
    c.add_argument("--k", type=int, required=True, help="kernel size K (K x K)")
    c.add_argument("--stride", type=int, default=1)
    c.add_argument("--padding", type=int, default=None, help="zero padding (default: (K-1)//2; transposed: 0)")
    kind = c.add_mutually_exclusive_group()
    kind.add_argument("--depthwise", action="store_true", help="one K x K filter per channel")
    kind.add_argument("--transposed", action="store_true", help="transposed convolution (kernel == stride)")
    c.add_argument("--relu", action="store_true")
    c.add_argument("--int32", action="store_true", help="int32 output (bias added, not requantised)")
    _common(c)
    c.set_defaults(_run=run_conv)
    a = sub.add_parser("attention", help="one softmax attention (integer online softmax)",
                       description="one softmax attention softmax(q k^T / sqrt(d)) v on random int8 data")
    a.add_argument("--q", type=int, required=True, help="queries per head")
    a.add_argument("--kv", type=int, required=True, help="keys (= values) per head")
    a.add_argument("--d", type=int, required=True, help="head dim")
    a.add_argument("--heads", type=int, default=1, help="heads (independent attentions in one program)")
    a.add_argument("--logit-std", type=float, default=3.0, help="standard deviation of the random logits")
    _common(a)
    a.set_defaults(_run=run_attention)
    ch = sub.add_parser("chain", help="a layer chain whose activations stay in DDR (docs/runtime.md)",
                        description="linear -> attention -> linear -> conv -> depthwise as programs over one "
                        "session's DDR arena, checked against golden; prints cycles and host <-> DDR bytes")
    ch.add_argument("--size", metavar="HxW", help="feature map size (W a multiple of the array's cols; "
                    "default 16 x the larger of 16 and the cols)")
    ch.add_argument("--runs", type=int, default=2, help="runs on new inputs (weights stay in DDR)")
    ch.add_argument("--heads", type=int, default=1, help="attention heads (32 channels split among them)")
    from hw.config import PRESETS
    ch.add_argument("--preset", default="bench16", choices=sorted(PRESETS),
                    help="overlay configuration (with every engine; cols a multiple of rows)")
    ch.add_argument("--backend", default="sim", choices=["sim", "rtl", "pynq"],
                    help="functional model, Verilator, or pynq (the simulated device without a board)")
    ch.add_argument("--sim-mode", default="fast", choices=["fast", "checked"],
                    help="sim: whole layers in NumPy (fast) or descriptor by descriptor (checked); same bits and cycles")
    ch.add_argument("--stall", type=float, default=0.0, help="rtl: random AXI backpressure probability")
    ch.add_argument("--waves", action="store_true", help="dump waveforms (rtl)")
    ch.add_argument("--seed", type=int, default=0)
    _fault_options(ch)
    ch.set_defaults(_run=run_chain)
    v = sub.add_parser("vector", help="one element-wise op on the vector engine",
                       description="one int8 element-wise op (golden_model.intvec) on random data on the vector "
                       "engine, checked against golden; prints cycles and elements per cycle")
    v.add_argument("--op", required=True, choices=VECTOR_OPS)
    v.add_argument("--rows", type=int, required=True,
                   help="rows of D elements (maxpool, upsample: image rows of --width pixels)")
    v.add_argument("--dim", type=int, required=True, help="elements per row (maxpool, upsample: channels)")
    v.add_argument("--width", type=int, default=None, help="maxpool, upsample: pixels per image row (default: --rows)")
    _common(v)
    v.set_defaults(_run=run_vector)


def _common(p):
    from hw.config import PRESETS
    p.add_argument("--preset", default="sim", choices=sorted(PRESETS), help="overlay configuration")
    p.add_argument("--backend", default="sim", choices=["sim", "rtl"], help="functional model or Verilator")
    p.add_argument("--sim-mode", default="fast", choices=["fast", "checked"],
                   help="sim: whole layers in NumPy (fast) or descriptor by descriptor (checked); same bits and cycles")
    p.add_argument("--waves", action="store_true", help="dump waveforms (rtl)")
    p.add_argument("--stall", type=float, default=0.0, help="rtl: random AXI backpressure probability")
    p.add_argument("--seed", type=inputs.seed, default=0)
    _fault_options(p)


def _fault_options(p):
    from sw.backends.faults import KINDS
    p.add_argument("--fault", metavar="KIND[:persistent]", type=_fault,
                   help=f"inject an AXI fault into the next run (sim, pynq): {', '.join(KINDS)}; "
                   ":persistent strikes every run")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a run counts as hung")


def _fault(text):
    import argparse

    from sw.backends.faults import parse
    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _inject(args, backend) -> None:
    """Arm --fault on the opened backend (a simulated device only)."""
    from sw.cli import UsageError
    if args.fault is not None:
        if args.backend == "rtl":
            raise UsageError("--fault needs --backend sim or pynq (the rtl bench injects faults at a given beat: "
                             "tests/test_overlay.py)")
        backend.inject_fault(args.fault)


def report_recoveries(session) -> None:
    for note in session.recoveries:
        print(f"  recovered: {note}")


def run(args) -> int:
    from sw.cli import UsageError
    if not 0.0 <= args.stall < 1.0:
        raise UsageError("--stall must be in [0, 1)")
    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")
    return args._run(args)


VECTOR_OPS = ("layernorm", "gelu", "add", "rope", "maxpool", "upsample")

#: The DDR the sim and rtl backends give one layer (the Driver's buffer starts at Driver.BUFFER_BASE in it).
SIM_DDR_BYTES = 1 << 26


def _driver(args, cfg):
    from sw.runtime.driver import Driver
    drv = Driver(cfg, args.backend, stall=args.stall, waves=args.waves or None, ddr_bytes=SIM_DDR_BYTES,
                 sim_mode=args.sim_mode, timeout_s=args.timeout)
    if args.fault is not None:
        _inject(args, drv.device)
    return drv


# ---------------------------------------------------------------- sizes, checked before anything is allocated
# Lower bounds from the shapes alone: a layer the overlay's DDR or this machine's memory cannot hold is
# refused in milliseconds, instead of after minutes of compiling (or in a MemoryError traceback).

def gemm_bytes(m: int, k: int, n: int, out_int32: bool) -> tuple[int, int]:
    """(DDR, host) bytes: A, B and the output in one program; host: the float64 golden GEMM."""
    return m * k + k * n + m * n * (4 if out_int32 else 1), 8 * (m * k + k * n + 2 * m * n)


def conv_bytes(cin: int, h: int, w: int, cout: int, k: int, ho: int, wo: int, *, depthwise: bool,
               transposed: bool, out_int32: bool) -> tuple[int, int]:
    """(DDR, host) bytes of one convolution: weights, output and the input (or its im2col rows, when a
    stride skips pixels); host: the golden's im2col and accumulators (int64)."""
    out = cout * ho * wo * (4 if out_int32 else 1)
    if transposed:
        return cin * h * w + cin * cout * k * k + out, 8 * (cin * h * w + 2 * cout * ho * wo)
    per_out = k * k if depthwise else cin * k * k
    rows = ho * wo * (cin * k * k)
    ddr = min(cin * h * w, rows) + cout * per_out + out
    return ddr, 8 * (rows + 2 * cout * ho * wo)


def attention_bytes(q: int, kv: int, d: int, rows: int) -> tuple[int, int]:
    """(DDR, host) bytes: a program holds at least one head's K and V and one query tile; host: the float64
    reference attention's score and probability matrices (one head at a time)."""
    return 2 * kv * d + min(q, rows) * d, 3 * 8 * q * kv


def available_memory() -> int | None:
    """Bytes of RAM available to a new allocation (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(what: str, ddr: int, host: int) -> None:
    from sw.cli import CommandError
    from sw.runtime.driver import Driver
    room = SIM_DDR_BYTES - Driver.BUFFER_BASE
    if ddr > room:
        raise CommandError(f"{what} needs at least {_size(ddr)} of DDR for its operands and result, more than "
                           f"the {_size(room)} a layer gets on the simulated board: choose smaller sizes")
    free = available_memory()
    if free is not None and host > free:
        raise CommandError(f"{what}: the golden reference needs about {_size(host)} of memory, this machine has "
                           f"{_size(free)} available: choose smaller sizes")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def _accelerator_errors():
    from sim.toolchain import ToolchainError
    from sw.compile.linear import CompileError
    from sw.compile.routes import ConvError
    from sw.runtime.driver import AcceleratorError
    return CompileError, ConvError, AcceleratorError, ToolchainError


def _run_layer(args, cfg, title, call, want, show_route=False):
    """Run `call(driver)` on the chosen backend, compare with `want()` (golden, computed after the run so
    that a layer the overlay refuses fails fast), print cycles and utilisation."""
    import numpy as np

    from sw.cli import CommandError

    drv = _driver(args, cfg)
    try:
        got = call(drv)
    except _accelerator_errors() as e:
        raise CommandError(str(e)) from e
    want = want()
    run = drv.last_run
    ok = got.shape == want.shape and np.array_equal(got, want)
    print(f"{title} on {cfg.name} ({cfg.rows} x {cfg.cols}), backend {args.backend}: "
          f"{'bit-exact against golden' if ok else 'MISMATCH against golden'}")
    if show_route:
        print(f"  route: {run.engine} ({ROUTES.get(run.engine, '')})")
    if run.engine == "depthwise":
        print(f"  {want.size / (run.cycles * cfg.dw_lanes):.3f} output pixels per cycle per lane "
              f"({cfg.dw_lanes} lanes, {want.shape[0]} channels)")
    print(f"  cycles {run.cycles}, MAC utilisation {run.utilisation:.1%} ({run.macs:,} MACs), "
          f"{run.descriptors} descriptors, {run.wall_s:.2f} s wall ({run.cycles_per_s:,.0f} simulated cycles/s)")
    report_recoveries(drv.session)
    if not ok:
        raise_difference(got, want)
    return 0


def raise_difference(got, want):
    """The CommandError for a result that differs from golden: how many outputs, and the first."""
    import numpy as np

    from sw.cli import CommandError
    bad = np.argwhere(got != want) if got.shape == want.shape else []
    where = f", first at {tuple(bad[0])}" if len(bad) else f" (shape {got.shape}, want {want.shape})"
    raise CommandError(f"{len(bad)} outputs differ{where}")


#: `sim gemm --lut`: the tables (golden_model.intvec.LutParams), for random_layer's outputs (int8 at ~0.05).
STORE_TABLES = {"gelu": lambda P: P.gelu(0.05, 0.02), "sigmoid": lambda P: P.sigmoid(0.05, 1 / 127)}


def run_gemm(args) -> int:
    import numpy as np

    from golden_model import intvec
    from golden_model.intops import gemm
    from hw.config import preset
    from sw.cli import UsageError

    if min(args.m, args.k, args.n) < 1:
        raise UsageError("--m, --k and --n must be positive")
    check_fits(f"gemm {args.m} x {args.k} x {args.n}", *gemm_bytes(args.m, args.k, args.n, args.int32))
    cfg = preset(args.preset)
    table = STORE_TABLES[args.lut](intvec.LutParams) if args.lut else None
    if table is not None and ("store_lut" not in cfg.engines or args.int32):
        with_table = ", ".join(n for n, _ in presets_with("store_lut"))
        raise UsageError(f"--lut needs int8 output and a preset with the store table ({with_table})")
    if args.add and ("store_add" not in cfg.engines or args.int32):
        with_add = ", ".join(n for n, _ in presets_with("store_add"))
        raise UsageError(f"--add needs int8 output and a preset with the store's residual add ({with_add})")
    rng = np.random.default_rng(args.seed)
    a, b, bias, mult, shift = random_layer(rng, args.m, args.k, args.n)
    # The residual: int8 at scale 0.08 added to the layer's output (~0.05), the sum at 0.1 (a Hiera block's)
    residual = rng.integers(-128, 128, (args.m, args.n)).astype(np.int8) if args.add else None
    add = intvec.AddParams.make(0.05, 0.08, 0.1) if args.add else None
    fused = [f"{args.lut}"] * (table is not None) + ["residual add"] * args.add
    title = f"gemm {args.m} x {args.k} x {args.n}" + (f" + {' + '.join(fused)} (fused in the store)" if fused else "")

    def golden():
        if args.add:
            return intvec.linear_add(a, b, bias, mult, shift, residual, add, relu=args.relu, table=table)
        if table is not None:
            return intvec.linear_lut(a, b, bias, mult, shift, table, relu=args.relu)
        return gemm(a, b, bias, mult, shift, relu=args.relu, out_int32=args.int32)
    return _run_layer(args, cfg, title, lambda drv: drv.linear(
        a, b, bias, mult, shift, relu=args.relu, out_int32=args.int32, lut=table, residual=residual, add=add), golden)


def run_attention(args) -> int:
    import numpy as np

    from golden_model import intattn
    from hw.config import preset
    from sw.cli import CommandError, UsageError
    cfg = preset(args.preset)
    if "attention" not in cfg.engines:
        with_attn = [n for n, c in _presets().items() if "attention" in c.engines]
        raise UsageError(f"preset {cfg.name!r} has no attention engine; use one of {', '.join(with_attn)}")
    max_d = min(cfg.attn_max_dim, intattn.MAX_HEAD_DIM)
    if min(args.q, args.kv, args.heads) < 1:
        raise UsageError("--q, --kv and --heads must be positive")
    if not 1 <= args.d <= max_d:
        raise UsageError(f"--d {args.d} outside 1..{max_d} (the {cfg.name} engine's largest head dim)")
    if args.kv > intattn.MAX_KEYS:
        raise UsageError(f"--kv {args.kv} exceeds {intattn.MAX_KEYS} keys (the running sum's width)")
    if not (args.logit_std > 0 and np.isfinite(args.logit_std)):
        raise UsageError("--logit-std must be positive")
    ddr, host = attention_bytes(args.q, args.kv, args.d, cfg.rows)
    check_fits(f"attention {args.q} queries x {args.kv} keys, d {args.d}", ddr, host)
    case = random_attention(np.random.default_rng(args.seed), args.heads, args.q, args.kv, args.d, args.logit_std)
    q, k, v, quant, scales = case
    drv = _driver(args, cfg)
    try:
        got = drv.attention(q, k, v, quant)
    except _accelerator_errors() as e:
        raise CommandError(str(e)) from e
    want = np.stack([intattn.attention(q[h], k[h], v[h], quant, cfg.cols) for h in range(args.heads)])
    err, floor = attention_error(got, q, k, v, scales)
    run, progs = drv.last_run, drv.last_programs
    ok = np.array_equal(got, want)
    print(f"attention {args.heads} head(s) x {args.q} queries x {args.kv} keys, d {args.d} on {cfg.name} "
          f"({cfg.rows} x {cfg.cols}), backend {args.backend}: "
          f"{'bit-exact against golden' if ok else 'MISMATCH against golden'}")
    print(f"  cycles {run.cycles}, MAC utilisation {run.utilisation:.1%} (Q K^T + P V, {run.array_macs} MACs/cycle), "
          f"{run.descriptors} descriptors in {len(progs)} program(s), {run.wall_s:.2f} s wall ({run.cycles_per_s:,.0f} simulated cycles/s)")
    print(f"  DDR bytes moved {sum(p.ddr_bytes for p in progs):,} (K and V {sum(p.kv_bytes for p in progs):,}; "
          f"minimum for K and V {sum(p.kv_min_bytes for p in progs):,}: each read once per group of "
          f"{progs[0].slots} resident query tile(s) of {cfg.rows} rows)")
    print(f"  relative L2 error against float attention on the same int8 inputs: {err:.3%} "
          f"(int8 output grid alone: {floor:.3%})")
    report_recoveries(drv.session)
    if not ok:
        bad = np.argwhere(got != want)
        raise CommandError(f"{len(bad)} outputs differ, first at {tuple(bad[0])}")
    return 0


ROUTES = {"conv": "convolution engine: on-the-fly im2col into the systolic array",
          "depthwise": "depthwise engine: line buffers, K x K MACs per channel lane",
          "gemm": "GEMM engine, no im2col (sw/compile/routes.py)", "gemm-im2col": "GEMM engine on host-built im2col rows"}


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


def run_conv(args) -> int:
    import numpy as np

    from golden_model import intconv
    from hw.config import preset
    from sw.cli import UsageError

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
    kind, golden, op = {(True, False): ("depthwise", intconv.depthwise_conv2d, "depthwise_conv2d"),
                        (False, True): ("transposed", intconv.conv_transpose2d, "conv_transpose2d"),
                        (False, False): ("conv", intconv.conv2d, "conv2d")}[args.depthwise, args.transposed]
    if args.transposed:
        ho, wo = h * k, w * k
    else:
        ho, wo = intconv.out_size(h, k, stride, padding), intconv.out_size(w, k, stride, padding)
    title = f"{kind} {k}x{k}/s{stride} pad {padding}: {cin}x{h}x{w} -> {cout}x{ho}x{wo}"
    check_fits(title, *conv_bytes(cin, h, w, cout, k, ho, wo, depthwise=args.depthwise,
                                  transposed=args.transposed, out_int32=args.int32))
    x, wt, bias, mult, shift = random_conv(np.random.default_rng(args.seed), cin, h, w, cout, k,
                                           depthwise=args.depthwise, transposed=args.transposed)
    kw = dict(stride=stride, padding=padding, relu=args.relu, out_int32=args.int32)
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


def _presets():
    from hw.config import PRESETS
    return PRESETS


def random_layer(rng, m, k, n):
    import numpy as np
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-2**16, 2**16, n)
    # Scales that keep outputs spread over int8 for this K.
    mult = rng.integers(1 << 29, 1 << 30, n)
    shift = np.full(n, 30 + max(1, int(np.ceil(np.log2(128 * 128 * np.sqrt(k) / 64)))))
    return a, b, bias, mult, shift


INT8_STD = 73.9       # standard deviation of uniform int8


def random_attention(rng, heads, lq, lk, d, logit_std=3.0):
    """Random int8 q, k, v (heads, L, d) whose logits q k^T / sqrt(d) have std `logit_std`;
    the AttentionQuant with the output scale calibrated on the float result; the scales."""
    import math

    import numpy as np

    from golden_model import intattn
    q, k, v = (rng.integers(-128, 128, (heads, n, d)).astype(np.int8) for n in (lq, lk, lk))
    s = math.sqrt(logit_std) / INT8_STD
    sv = 0.02
    ref = np.stack([intattn.attention_float(q[h], k[h], v[h], s, s, sv) for h in range(heads)])
    so = intattn.output_scale_for(ref)
    quant = intattn.AttentionQuant.from_scales(s, s, sv, so, d)
    return q, k, v, quant, dict(q=s, k=s, v=sv, out=so, ref=ref)


def attention_error(got, q, k, v, scales) -> tuple[float, float]:
    """Relative L2 of the int8 output against float attention, and of the float result rounded
    to the same int8 grid (the part no engine can avoid)."""
    import numpy as np
    ref, so = scales["ref"], scales["out"]
    norm = float(np.linalg.norm(ref))
    err = float(np.linalg.norm(got.astype(np.float64) * so - ref)) / norm
    floor = float(np.linalg.norm(np.clip(np.round(ref / so), -128, 127) * so - ref)) / norm
    return err, floor



def run_chain(args) -> int:
    import dataclasses

    import numpy as np

    from hw.config import preset
    from sw.cli import CommandError, UsageError
    from sw.runtime.arena import ArenaFull
    from sw.runtime.backend import open_backend
    from sw.runtime.chain import Chain, ChainSpec, ChainWeights
    from sw.runtime.session import Session

    cfg = preset(args.preset)
    try:
        h, w = (int(v) for v in args.size.lower().split("x")) if args.size else (16, max(16, cfg.cols))
    except ValueError:
        raise UsageError(f"--size {args.size!r} is not HxW") from None
    if min(h, w, args.runs, args.heads) < 1:
        raise UsageError("--size, --runs and --heads must be positive")
    missing = [e for e in ("attention", "conv", "depthwise") if e not in cfg.engines]
    if missing:
        raise UsageError(f"preset {cfg.name!r} has no {', '.join(missing)} engine (the chain needs all)")
    spec = dataclasses.replace(ChainSpec(), height=h, width=w, heads=args.heads)
    session = Session(open_backend(args.backend, cfg, stall=args.stall, waves=args.waves or None,
                                   timeout_s=args.timeout, sim_mode=args.sim_mode))
    try:
        _inject(args, session.backend)
        chain = Chain(session, ChainWeights.random(spec, args.seed))
        rng = np.random.default_rng(args.seed + 1)
        mode = f" ({args.sim_mode})" if args.backend == "sim" else ""
        print(f"chain {' -> '.join(step for step, _ in Chain.WIRING)} on {cfg.name} ({cfg.rows} x {cfg.cols}), "
              f"backend {args.backend}{mode}, map {spec.channels_in} x {h} x {w}, {spec.heads} head(s)")
        print(f"  once per session: {chain.setup_traffic.to_ddr:,} bytes to DDR ("
              + ", ".join(f"{k} {v:,}" for k, v in chain.setup_bytes.items()) + ")")
        for r in range(args.runs):
            x = rng.integers(-128, 128, (spec.channels_in, h, w)).astype(np.int8)
            y = chain.run(x, frame=r)
            ok = np.array_equal(y, chain.golden(x))
            t = chain.last_traffic
            print(f"  run {r}: {'bit-exact against golden' if ok else 'MISMATCH against golden'}; "
                  f"{t.to_ddr:,} bytes to DDR, {t.from_ddr:,} from DDR (input and output maps with their margins); "
                  "cycles " + ", ".join(f"{step} {run.cycles:,}" for (step, _), run in zip(Chain.WIRING, chain.last_runs)))
            report_recoveries(session)
            session.recoveries.clear()
            if not ok:
                raise CommandError("the chain's output differs from golden")
    except (ArenaFull, *_accelerator_errors()) as e:
        raise CommandError(str(e)) from e
    finally:
        session.close()
    return 0


def vector_case(op: str, rows: int, dim: int, width: int, rng, lanes: int):
    """Random data and parameters for one vector op: (sw.compile.vector op, x, params, keyword arguments,
    golden result)."""
    import numpy as np

    from golden_model import intvec
    from golden_model.memory_attention import axial_rope
    from hw.vector.params import ROPE_DEPTH, beats

    if op in ("maxpool", "upsample"):
        x = rng.integers(-128, 128, (rows, width, dim), dtype=np.int8)
        return op, x, None, {}, (intvec.maxpool2x2(x) if op == "maxpool" else intvec.upsample_nearest2x(x))
    x = rng.integers(-128, 128, (rows, dim), dtype=np.int8)
    if op == "layernorm":
        p = intvec.LayerNormParams.make(rng.normal(1.0, 0.3, dim), rng.normal(0.0, 0.3, dim), 0.05, 0.03, 1e-6)
        return op, x, p, {}, intvec.layernorm(x, p)
    if op == "gelu":
        p = intvec.LutParams.gelu(0.05, 0.03)
        return "lut", x, p, {}, intvec.lut(x, p)
    if op == "add":
        b = rng.integers(-128, 128, (rows, dim), dtype=np.int8)
        p = intvec.AddParams.make(0.05, 0.04, 0.07)
        return op, x, p, {"b": b}, intvec.add(x, b, p)
    # rope: SAM 2's axial tables over a map of rows tokens (end_x the divisor of rows nearest its square root),
    # on chip in the axial form where it fits, else whole; other sizes: random angles, whole.
    from sw.cli import UsageError
    if dim % 2:
        raise UsageError("--op rope: --dim must be even (channel pairs)")
    end_x = max(e for e in range(1, int(rows ** 0.5) + 1) if rows % e == 0)
    pb = lanes // 2
    if dim % 4 == 0 and (dim // 4) % pb == 0 and (rows // end_x + end_x) * dim // 4 <= ROPE_DEPTH:
        cos, sin = axial_rope(dim, end_x, rows // end_x)
        kw = {"end_x": end_x}
    elif rows * beats(dim // 2, pb) * pb <= ROPE_DEPTH:
        ang = rng.uniform(-np.pi, np.pi, (rows, dim // 2))
        cos, sin, kw = np.cos(ang), np.sin(ang), {}
    else:
        raise UsageError(f"--op rope: the tables for {rows} positions of {dim} do not fit the engine's {ROPE_DEPTH} "
                         "pair slots (SAM 2's axial tables need --dim a multiple of 2 x lanes)")
    p = intvec.RopeParams.make(cos, sin, 0.05, 0.05)
    return op, x, p, kw, intvec.rope(x, p)


def run_vector(args) -> int:
    import numpy as np

    from hw import isa
    from hw.config import preset
    from hw.vector.params import MAX_DIM
    from sw.backends.sim_vector import stream_cycles
    from sw.backends.sim_vector import bounds
    from sw.cli import CommandError, UsageError
    from sw.compile.vector import elements

    cfg = preset(args.preset)
    if "vector" not in cfg.engines:
        have = ", ".join(n for n, c in presets_with("vector"))
        raise UsageError(f"preset {cfg.name!r} has no vector engine (presets with one: {have})")
    width = args.rows if args.width is None else args.width
    if args.rows < 1 or width < 1 or not 1 <= args.dim <= MAX_DIM:
        raise UsageError(f"--rows and --width must be positive and --dim in 1..{MAX_DIM}")
    if args.op == "maxpool" and (args.rows < 2 or width < 2):
        raise UsageError("--op maxpool needs at least 2 x 2 pixels")
    n = args.rows * (width if args.op in ("maxpool", "upsample") else 1) * args.dim
    check_fits(f"vector {args.op}", n * (6 if args.op == "upsample" else 3), 40 * n)
    op, x, p, kw, want = vector_case(args.op, args.rows, args.dim, width, np.random.default_rng(args.seed),
                                     cfg.vec_lanes)
    drv = _driver(args, cfg)
    try:
        got = drv.vector(op, x, p, **kw)
    except _accelerator_errors() as e:
        raise CommandError(str(e)) from e
    run, prog = drv.last_run, drv.last_programs[0]
    ok = got.shape == want.shape and np.array_equal(got, want)
    shape = "x".join(map(str, x.shape))
    print(f"vector {args.op} {shape} on {cfg.name} ({cfg.vec_lanes} lanes, {cfg.beat_bytes}-byte AXI beat), "
          f"backend {args.backend}: {'bit-exact against golden' if ok else 'MISMATCH against golden'}")
    # The op's steady-state bounds: the engine's lanes, and the DDR port (a beat per cycle each way).
    vec = [d for d in prog.descriptors if d["opcode"] == isa.OPCODES["VECTOR"]]
    els = elements(prog)
    stream = sum(stream_cycles(cfg, d) for d in vec)
    engine, ddr = bounds(cfg, prog.op["op"], args.dim)
    print(f"  cycles {run.cycles} ({len(prog.descriptors)} descriptors), {els / run.cycles:.2f} elements per cycle; "
          f"steady state {els / stream:.2f} (cycle model; engine bound {engine:.2f}, DDR bound {ddr:.2f}); "
          f"{run.wall_s:.2f} s wall")
    report_recoveries(drv.session)
    if not ok:
        raise_difference(got, want)
    return 0


def presets_with(engine: str):
    from hw.config import PRESETS
    return [(n, c) for n, c in PRESETS.items() if engine in c.engines]
