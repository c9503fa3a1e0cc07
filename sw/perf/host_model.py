"""The host's cost model: how long the board's CPU takes for a graph node, and the boards' DDR.

The one place these numbers live (the profile, the placement rule and the docs read them). Every
constant says where it comes from; none is measured on a board yet (the project has none). A board
measurement replaces them: `HostModel.load(path)` reads a JSON of the same fields
(`sam2fpga profile --host-model FILE`).

The model. The host runs its ops as NumPy on the ARM (the runtime's host code):
  * a node's time = the copies of its own bytes between DDR buffers and the CPU (in + out at
    `memcpy_gbs`), plus its element passes (`PASSES[op]` float32 passes of 8 bytes, read and write,
    per element, at `stream_gbs`), plus its multiply-accumulates at `gemm_gmacs` (NumPy float32 BLAS
    on all cores), plus `call_us` per NumPy call (`CALLS[op]`).
DDR: the PL reads and writes through one AXI HP port of `cfg.axi_data_bits` at the overlay's clock,
and the board's DDR delivers at most `ddr_gbs`; a program whose bytes take longer at the smaller of
the two than its MACs take at full array use is DDR-bound.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class HostModel:
    board: str
    cpu: str
    cores: int
    clock_ghz: float
    gemm_gmacs: float      # NumPy float32 matmul, all cores
    stream_gbs: float      # one core streaming a NumPy pass (read + write), bytes per second / 1e9
    memcpy_gbs: float      # DDR buffer <-> CPU copies (pynq.allocate buffers), bytes per second / 1e9
    call_us: float         # one NumPy call's fixed cost (dispatch, allocation), microseconds
    ddr_gbs: float         # the board's DDR peak, bytes per second / 1e9
    source: str = "model"  # "model" (the constants below) or the measurement file's name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path) -> "HostModel":
        """A board measurement: a JSON object of this class's fields (board and cpu optional)."""
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError as e:
            raise ValueError(f"{path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of host model fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown host model fields {unknown} (known: {sorted(known)})")
        numbers = [f.name for f in fields(cls) if f.type in ("int", "float")]
        bad = [k for k in numbers if k in data and (isinstance(data[k], bool) or not isinstance(data[k], (int, float))
                                                   or data[k] <= 0)]
        if bad:
            raise ValueError(f"{path}: {', '.join(bad)} must be positive numbers")
        base = HOSTS.get(data.get("board", ""), HOSTS["kv260"])
        try:
            return replace(base, **{**data, "source": str(path)})
        except TypeError as e:
            raise ValueError(f"{path}: {e}") from None


# Where the constants come from:
#  clocks   Zynq UltraScale+ data sheet DS925: APU (Cortex-A53) at 1,333 MHz in the -2 speed grade
#           (KV260's xck26-2LV, ZCU104's xczu7ev-2); 1.2 GHz (-1) to 1.5 GHz (-3) across grades.
#           Zynq-7000 DS187: Cortex-A9 at 667 MHz in the -1 grade; PYNQ-Z2's image runs it at 650 MHz.
#  gemm     A53: a 64-bit NEON datapath, 2 float32 FMAs per cycle per core (ARM Cortex-A53 TRM),
#           4 cores, 60 % of peak for OpenBLAS sgemm (assumed) -> 4 x 2 x 1.333 x 0.6 = 6.4 GMAC/s.
#           A9: 1 float32 MAC per cycle per core sustained in NEON quad ops (Cortex-A9 NEON MPE TRM),
#           2 cores, 60 % -> 0.78 GMAC/s.
#  stream   one core's NumPy pass: A53 about 2 GB/s (64-bit, 1.333 GHz, L2 streaming), A9 about
#           0.6 GB/s (assumed; the L2 controller PL310 and a 32-bit core bus).
#  memcpy   copies from and to the DDR buffers the overlay shares: A53 about 2.5 GB/s (coherent,
#           cached CMA buffers), A9 about 0.3 GB/s (PYNQ's buffers on Zynq-7000 are not cached).
#           Assumed from published PYNQ copy figures; replace by a measurement.
#  call     a NumPy ufunc call's fixed cost: about 1 us on x86 at 4 GHz; 5 us on an A53, 15 us on an A9.
#  DDR      KV260: 64-bit DDR4-2400, 19.2 GB/s (its data sheet DS986); ZCU104: 64-bit DDR4 on the PS,
#           19.2 GB/s (DDR4-2400, the same as KV260, assumed); PYNQ-Z2: 16-bit DDR3-1050, ~2.1 GB/s.
HOSTS: dict[str, HostModel] = {
    "kv260": HostModel("kv260", "Cortex-A53", 4, 1.333, 6.4, 2.0, 2.5, 5.0, 19.2),
    "zcu104": HostModel("zcu104", "Cortex-A53", 4, 1.333, 6.4, 2.0, 2.5, 5.0, 19.2),
    "pynq-z2": HostModel("pynq-z2", "Cortex-A9", 2, 0.650, 0.78, 0.6, 0.3, 15.0, 2.1),
}
#: presets without a board of their own (simulation, benchmarks, ECP5) are costed as this host
DEFAULT_HOST = "kv260"

# float32 passes per element of each host op as NumPy writes it (read + write 8 bytes each):
# layernorm: cast, mean, subtract, square, mean, rsqrt, scale, gain, bias, quantise (divide,
# round, clip, cast); add: two dequantises, add, quantise; gelu: dequantise, erf (about 6 passes),
# quantise; ...; layout ops copy once; mlp / linear / attention count their MACs and a quantise.
PASSES = {
    "layernorm": 14, "gelu": 12, "add": 8, "rescale": 5, "rope": 8, "maxpool2x2": 3, "upsample2x": 2,
    "quantize": 5, "dequantize": 2, "window_partition": 1, "window_unpartition": 1, "slice": 1,
    "linear": 6, "mask_product": 6, "conv": 6, "conv_transpose": 6, "depthwise": 6, "attention": 10,
    "mlp": 6, "prompt_encoder": 4,
}
#: NumPy calls per op (their fixed cost matters for the decoder's 8-token ops)
CALLS = {"layernorm": 14, "gelu": 12, "add": 8, "attention": 12, "mlp": 12, "prompt_encoder": 20}


def host_for(cfg) -> HostModel:
    """The host model of a preset's board (DEFAULT_HOST for presets without a Zynq board)."""
    return HOSTS.get(cfg.name, HOSTS.get(_board_key(cfg), HOSTS[DEFAULT_HOST]))


def _board_key(cfg) -> str:
    text = cfg.board.lower()
    return next((k for k in HOSTS if k.replace("-", "") in text.replace("-", "")), "")


def host_seconds(host: HostModel, op: str, elements: int, macs: int, bytes_in: int, bytes_out: int) -> float:
    """The host's time for one node: its copies, its element passes, its MACs and its calls."""
    copy = (bytes_in + bytes_out) / (host.memcpy_gbs * 1e9)
    passes = PASSES.get(op, 4) * elements * 8 / (host.stream_gbs * 1e9)
    compute = macs / (host.gemm_gmacs * 1e9)
    return copy + passes + compute + CALLS.get(op, 4) * host.call_us * 1e-6


def port_gbs(cfg) -> float:
    """One AXI HP port of the overlay: a beat per cycle at its clock (GB/s)."""
    return cfg.beat_bytes * cfg.clock_mhz * 1e-3


def ddr_gbs(cfg, host: HostModel) -> float:
    """What the overlay's DMA can move per second: the port or the board's DDR, the smaller."""
    return min(port_gbs(cfg), host.ddr_gbs)
