"""A layer chain whose activations stay in DDR: linear -> attention -> linear -> conv -> depthwise.

    chain = Chain(session, ChainWeights.random(spec))     # programs compiled, bound, weights written once
    y = chain.run(x)                                       # per run: x in, y out, nothing else crosses

Every step is a program loaded into the session's arena; each reads the previous step's
output buffer in place (sw.runtime.layout has the layouts):
  x (planar) -> linear_in (1 x 1 conv, conv engine) -> t (token tiles = Q, K, V)
  -> attention (self-attention, attention engine) -> a (chunk-major tokens)
  -> relayout (transpose on the GEMM array) -> m0 (planar)
  -> linear_out (1 x 1 conv) -> m1 (planar) -> conv (K x K, conv engine) -> m2 (planar)
  -> depthwise (depthwise engine) -> y (planar)
Golden: golden_model.intconv / intattn on the same int8 tensors (`golden`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from golden_model import intattn, intconv
from golden_model.intops import quantize_multiplier
from sw.compile.attention import compile_attention
from sw.compile.conv import FmapLayout, compile_conv2d, compile_depthwise
from sw.compile.linear import CompileError
from sw.runtime.layout import TokenTileLayout, compile_chunks_to_planar
from sw.runtime.session import RunStats, Session


@dataclass(frozen=True)
class ChainSpec:
    channels_in: int = 16
    height: int = 16
    width: int = 16
    dim: int = 32            # attention width (Q = K = V channels, all heads)
    heads: int = 1
    channels_mid: int = 32   # linear_out's output
    channels_out: int = 16   # conv's output (= depthwise channels)
    kernel: int = 3          # conv kernel (padding kernel // 2)
    dw_kernel: int = 7


def _requant(rng, n, reduction, std=40.0):
    """Per-channel multiplier/shift mapping a sum of `reduction` int8 x int8 products to ~std."""
    m, s = quantize_multiplier(std / (math.sqrt(reduction) * 74.0 * 74.0))
    return rng.integers(-2000, 2000, n), np.full(n, m), np.full(n, s)


@dataclass
class ChainWeights:
    spec: ChainSpec
    layers: dict           # name -> (w, bias, multiplier, shift)
    quant: intattn.AttentionQuant

    @classmethod
    def random(cls, spec: ChainSpec, seed: int = 0) -> "ChainWeights":
        rng = np.random.default_rng(seed)

        def w(*shape):
            return rng.integers(-128, 128, shape).astype(np.int8)

        s = spec
        layers = {"linear_in": (w(s.dim, s.channels_in, 1, 1), *_requant(rng, s.dim, s.channels_in)),
                  "linear_out": (w(s.channels_mid, s.dim, 1, 1), *_requant(rng, s.channels_mid, s.dim)),
                  "conv": (w(s.channels_out, s.channels_mid, s.kernel, s.kernel),
                           *_requant(rng, s.channels_out, s.channels_mid * s.kernel ** 2)),
                  "depthwise": (w(s.channels_out, 1, s.dw_kernel, s.dw_kernel),
                                *_requant(rng, s.channels_out, s.dw_kernel ** 2))}
        scale = math.sqrt(3.0) / 73.9
        quant = intattn.AttentionQuant.from_scales(scale, scale, 0.02, 0.01, s.dim // s.heads)
        return cls(spec, layers, quant)


def golden(weights: ChainWeights, x: np.ndarray, key_tile: int) -> np.ndarray:
    """The chain on the host: golden_model's integer ops, layer by layer."""
    s, L = weights.spec, weights.layers
    t = intconv.conv2d(x, *L["linear_in"])
    heads = t.reshape(s.heads, s.dim // s.heads, -1).transpose(0, 2, 1)        # (head, token, d)
    a = np.stack([intattn.attention(q, q, q, weights.quant, key_tile) for q in heads])
    m0 = np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(s.dim, s.height, s.width)
    m1 = intconv.conv2d(m0, *L["linear_out"])
    m2 = intconv.conv2d(m1, *L["conv"], padding=s.kernel // 2)
    return intconv.depthwise_conv2d(m2, *L["depthwise"], padding=s.dw_kernel // 2)


class Chain:
    #: (step, program region -> chain buffer), in run order.
    WIRING = [("linear_in", {"in": "x", "out": "t"}),
              ("attention", {"Q": "t", "K": "t", "V": "t", "out": "a"}),
              ("relayout", {"in": "a", "out": "m0"}),
              ("linear_out", {"in": "m0", "out": "m1"}),
              ("conv", {"in": "m1", "out": "m2"}),
              ("depthwise", {"in": "m2", "out": "y"})]

    def __init__(self, session: Session, weights: ChainWeights, name: str = "chain"):
        self.session, self.weights, self.name = session, weights, name
        cfg, s, L = session.cfg, weights.spec, weights.layers
        C, d = cfg.cols, s.dim // s.heads
        if s.dim % s.heads or d % C or d % cfg.rows:
            raise CompileError(f"head dim {s.dim} / {s.heads} must be a multiple of the array's rows ({cfg.rows}) "
                               f"and cols ({C}): token tiles are whole scratchpad entries, stored rows stay in a head")
        self.x_layout = FmapLayout(s.channels_in, s.height, s.width, C)
        zeros = lambda c: np.zeros((c, s.height, s.width), np.int8)        # noqa: E731  (shapes only)
        tokens = np.zeros((s.heads, s.height * s.width, s.dim // s.heads), np.int8)
        self.programs = {
            "linear_in": compile_conv2d(cfg, zeros(s.channels_in), *L["linear_in"],
                                        out_layout=TokenTileLayout.heads_of(s.heads)),
            "attention": compile_attention(cfg, tokens, tokens, tokens, weights.quant, out_chunked=True,
                                           token_tiles=True),
            "relayout": compile_chunks_to_planar(cfg, s.dim, s.height, s.width, heads=s.heads),
            "linear_out": compile_conv2d(cfg, zeros(s.dim), *L["linear_out"]),
            "conv": compile_conv2d(cfg, zeros(s.channels_mid), *L["conv"], padding=s.kernel // 2),
            "depthwise": compile_depthwise(cfg, zeros(s.channels_out), *L["depthwise"], padding=s.dw_kernel // 2),
        }
        # Each chain buffer: as large as the largest region bound to it (a conv's input region also
        # covers the row spans its last tiles read past the map).
        sizes: dict[str, int] = {}
        for step, wiring in self.WIRING:
            for region, buf in wiring.items():
                sizes[buf] = max(sizes.get(buf, 0), self.programs[step].regions[region][1])
        self.buffers = {buf: f"{name}.{buf}" for buf in sizes}
        before = session.traffic.snapshot()
        session.arena.allocate_all({self.buffers[b]: n for b, n in sizes.items()})   # ArenaFull before any write
        for buf, n in sizes.items():                                     # zero margins, once
            session.backend.write(session.arena[self.buffers[buf]].addr, np.zeros(n, np.uint8))
        self.loaded = {step: session.load(self.programs[step], f"{name}.{step}",
                                          bind={r: self.buffers[b] for r, b in wiring.items()})
                       for step, wiring in self.WIRING}
        self.setup_traffic = session.traffic.since(before)
        roles = [(prog.ROLES.get(r), size) for prog in self.programs.values() for r, (_, size) in prog.regions.items()]
        self.setup_bytes = {"weights": sum(n for role, n in roles if role == "weight"),
                            "descriptors": sum(n for role, n in roles if role == "program"),
                            "zeroed buffers": sum(sizes.values())}
        assert sum(self.setup_bytes.values()) == self.setup_traffic.to_ddr, "setup wrote something unaccounted for"
        self.last_runs: list[RunStats] = []
        self.last_traffic = None

    def run(self, x: np.ndarray, frame: int | None = None) -> np.ndarray:
        """One pass: x (int8 channels_in x height x width) in, the depthwise output out. `frame`: named in
        the error when a step fails twice (sw.runtime.session.LoadedProgram.run)."""
        s = self.weights.spec
        x = np.asarray(x)
        if x.shape != (s.channels_in, s.height, s.width) or x.dtype != np.int8:
            raise ValueError(f"x must be int8 {(s.channels_in, s.height, s.width)}, got {x.dtype} {x.shape}")
        be, arena = self.session.backend, self.session.arena
        before = be.traffic.snapshot()
        be.write(arena[self.buffers["x"]].addr, self.x_layout.pack(x))
        self.last_runs = [self.loaded[step].run(frame) for step, _ in self.WIRING]
        out = self.programs["depthwise"].out_layout
        y = out.unpack(be.read(arena[self.buffers["y"]].addr, out.size))
        self.last_traffic = be.traffic.since(before)
        return y

    def golden(self, x: np.ndarray) -> np.ndarray:
        return golden(self.weights, x, self.session.cfg.cols)

    def free(self) -> None:
        for loaded in self.loaded.values():
            loaded.free()
        for buf in self.buffers.values():
            self.session.arena.free(buf)
