"""The overlay's configuration: one object drives the generated hardware and the host compiler.

Plain Python (no Amaranth import), so the host (sw/) on the board's ARM can use it.
Presets name the target boards (KV260, ZCU104, PYNQ-Z2; ULX3S for the open ECP5 flow) plus small
ones for fast simulation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from golden_model.intattn import MAX_HEAD_DIM

ENGINES = ("gemm", "attention", "conv", "depthwise", "vector", "store_lut", "store_add", "load_t")
#                 engines the overlay knows of (conv: hw/conv, on the GEMM array; depthwise: hw/conv/depthwise.py, its own datapath; vector: hw/vector,
#                 element-wise ops; store_lut: a 256 x int8 table per requantiser lane of the GEMM store, GELU fused;
#                 store_add: the residual add in the GEMM store, after the requantiser; load_t: the GEMM load
#                 unit's transposing LOAD, token rows into A / B / V entries)
VEC_LANES = (2, 4, 8, 16, 32)             # vector engine lane counts (even powers of two: RoPE pairs; hw.vector.params)
ATTN_SLOT_BITS = 4                        # = the width of the descriptor's `slot` field (hw.isa checks it)


@dataclass(frozen=True)
class OverlayConfig:
    """Everything that shapes the overlay.

    rows x cols   : the systolic array (R x C), 2..32 each way.
    a_depth       : entries of the input scratchpad (one entry = R int8, one k of an R-row block).
    b_depth       : entries of the weight scratchpad (one entry = C int8, one k of a C-column block).
    acc_depth     : rows of the accumulator scratchpad (one row = C int32).
    param_depth   : entries of the per-channel parameter scratchpad (one entry = C channels).
    axi_data_bits : AXI4 master data width to DDR (64: Zynq-7000 HP, 128: UltraScale+ HP).
    axi_addr_bits : AXI4 master address width.
    engines       : engines present in the overlay.
    attn_max_dim  : attention engine: the largest head dim (its O and V memories), a multiple of cols.
    attn_q_slots  : attention engine: query tiles of R rows whose softmax state (m, l, O) it holds at once
                    (each K/V tile fetched from DDR serves all of them), 1..16.
    attn_norm_lanes : attention engine: lanes the normaliser (O / l) computes per cycle, a divisor of
                    cols (0: all cols); fewer share multipliers (3 per lane) at cols / attn_norm_lanes
                    cycles per C outputs, once per query tile. Also the O memories' banks per query row (one
                    int40 lane each, attn_q_slots x attn_max_dim / lanes deep: hw/attention/engine.py).
    attn_o_uram   : attention engine: the O memories in UltraRAM (UltraScale+ parts) instead of block RAM.
    scratch_uram  : the GEMM engine's A and B scratchpads in UltraRAM (UltraScale+ parts) instead of block RAM
                    (hw/gemm/engine.py operand_memory).
    pv_preadd     : attention engine: the P V array's PEs pick their p bank in the DSP's pre-adder (DSP48E1/E2)
                    instead of a multiplexer in the fabric; False for ECP5, whose multipliers have none
                    (hw/attention/pv_array.py).
    attn_pv_lut_rows : attention engine: the P V array's last k rows (0..rows) multiply-add in the fabric
                    (LUTs and a product register) instead of DSPs: rows x cols MACs a cycle on fewer DSPs, the
                    last row's results a cycle later (hw/attention/pv_array.py; bitstreams/README.md: LUTs a MAC).
    clock_mhz     : target clock (for reports and the board flow).
    dw_lanes      : depthwise engine: channel lanes (each K x K multipliers, one output pixel per cycle).
    dw_row_bytes  : depthwise engine: the longest feature-map row (pitch, bytes) its line buffers hold.
    dw_channels   : depthwise engine: channels whose coefficients it holds (the most one command runs).
    dsp_packing   : the GEMM array's PE pairs share one multiplier, two int8 MACs per DSP block
                    (golden_model/dsp_packing.py; cols even). Same results and timing, half the DSPs.
    vec_lanes     : vector engine: int8 lanes (elements per cycle), one of VEC_LANES, = the AXI beat bytes.
    """
    name: str
    rows: int
    cols: int
    a_depth: int
    b_depth: int
    acc_depth: int
    param_depth: int
    axi_data_bits: int = 128
    axi_addr_bits: int = 32
    engines: tuple[str, ...] = ("gemm", "conv")
    clock_mhz: float = 200.0
    board: str = ""
    attn_max_dim: int = 256
    dw_lanes: int = 2
    dw_row_bytes: int = 256
    dw_channels: int = 256
    attn_q_slots: int = 1
    attn_norm_lanes: int = 0
    dsp_packing: bool = False
    vec_lanes: int = 8
    attn_o_uram: bool = False
    scratch_uram: bool = False
    pv_preadd: bool = True
    attn_pv_lut_rows: int = 0

    @property
    def norm_lanes(self) -> int:
        """The attention normaliser's multipliers (lanes per cycle)."""
        return self.attn_norm_lanes or self.cols

    def __post_init__(self):
        errors = []
        for k in ("rows", "cols"):
            if not 2 <= getattr(self, k) <= 32:
                errors.append(f"{k}={getattr(self, k)} outside 2..32")
        for k in ("a_depth", "b_depth", "acc_depth", "param_depth"):
            v = getattr(self, k)
            if v < 2 or v & (v - 1):
                errors.append(f"{k}={v} must be a power of two >= 2")
        if self.axi_data_bits not in (64, 128):
            errors.append(f"axi_data_bits={self.axi_data_bits} must be 64 or 128")
        if self.axi_addr_bits != 32:
            errors.append(f"axi_addr_bits={self.axi_addr_bits}: descriptors carry 32-bit DDR addresses (use 32)")
        if self.acc_depth < self.rows:
            errors.append(f"acc_depth={self.acc_depth} smaller than one tile ({self.rows} rows)")
        for e in self.engines:
            if e not in ENGINES:
                errors.append(f"unknown engine {e!r} (known: {', '.join(ENGINES)})")
        if "attention" in self.engines:
            if self.cols & (self.cols - 1):
                errors.append(f"attention engine: cols={self.cols} must be a power of two")
            if self.attn_max_dim < self.cols or self.attn_max_dim % self.cols:
                errors.append(f"attn_max_dim={self.attn_max_dim} must be a positive multiple of cols={self.cols}")
            if self.attn_max_dim > MAX_HEAD_DIM:
                # The softmax reads scores as int24, exact only for d <= MAX_HEAD_DIM (golden_model.intattn).
                errors.append(f"attn_max_dim={self.attn_max_dim} exceeds the attention spec's MAX_HEAD_DIM={MAX_HEAD_DIM}")
        beat = self.axi_data_bits // 8
        if "depthwise" in self.engines:
            if self.dw_lanes not in (1, 2, 4, 8, 16):
                errors.append(f"dw_lanes={self.dw_lanes} must be a power of two, 1..16")
            rb = self.dw_row_bytes // beat if self.axi_data_bits in (64, 128) else 0
            if self.dw_row_bytes % beat or rb < 4 or rb & (rb - 1):
                errors.append(f"dw_row_bytes={self.dw_row_bytes} must be a power-of-two number (>= 4) of AXI beats")
            if not self.dw_lanes <= self.dw_channels < 1 << 11:
                errors.append(f"dw_channels={self.dw_channels} outside dw_lanes..2047")
        if "attention" in self.engines:
            if self.attn_norm_lanes < 0 or (self.attn_norm_lanes and self.cols % self.attn_norm_lanes):
                errors.append(f"attn_norm_lanes={self.attn_norm_lanes} must divide cols={self.cols} (0: all)")
            if not 0 <= self.attn_pv_lut_rows <= self.rows:
                errors.append(f"attn_pv_lut_rows={self.attn_pv_lut_rows} outside 0..rows={self.rows}")
            if not 1 <= self.attn_q_slots <= 1 << ATTN_SLOT_BITS:
                errors.append(f"attn_q_slots={self.attn_q_slots} outside 1..{1 << ATTN_SLOT_BITS}")
        if "vector" in self.engines and (self.vec_lanes not in VEC_LANES or self.vec_lanes != beat):
            # hw/vector/unit.py passes AXI beats to the engine unchanged: a lane per byte of the beat
            errors.append(f"vec_lanes={self.vec_lanes} must be one of {VEC_LANES} and equal the {beat}-byte AXI beat")
        if self.dsp_packing and self.cols % 2:
            errors.append(f"dsp_packing pairs the array's columns: cols={self.cols} must be even")
        if "gemm" not in self.engines:
            errors.append("the gemm engine is required (the others plug into its DMA and scratchpads)")
        # Output rows are stored as whole AXI beats: C int8 must fill at least one beat exactly.
        if self.cols % beat and beat % self.cols:
            errors.append(f"cols={self.cols} must divide or be a multiple of the AXI beat ({beat} bytes)")
        if self.rows % beat and beat % self.rows:
            errors.append(f"rows={self.rows} must divide or be a multiple of the AXI beat ({beat} bytes)")
        if self.cols < beat:
            errors.append(f"cols={self.cols} int8 outputs per row must fill an AXI beat ({beat} bytes)")
        if errors:
            raise ValueError(f"overlay config {self.name!r}: " + "; ".join(errors))

    @property
    def beat_bytes(self) -> int:
        return self.axi_data_bits // 8

    @property
    def macs(self) -> int:
        return self.rows * self.cols

    @property
    def requant_lanes(self) -> int:
        """Requantisers of the GEMM store: one AXI beat of int8 results per cycle, as fast as the
        store writes (a row of C int8 is C / beat_bytes beats)."""
        return min(self.cols, self.beat_bytes)

    def replace(self, **changes) -> "OverlayConfig":
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, OverlayConfig] = {
    # Small enough that a whole layer simulates in seconds under Verilator.
    "sim": OverlayConfig("sim", rows=4, cols=8, a_depth=4096, b_depth=4096, acc_depth=64,
                         param_depth=16, axi_data_bits=64, clock_mhz=100.0, board="(simulation)",
                         engines=("gemm", "attention", "conv", "depthwise", "vector", "store_lut",
                                  "store_add", "load_t"), dw_lanes=2,
                         dw_row_bytes=128,
                         attn_q_slots=2, vec_lanes=8),
    # The open ECP5 flow (ULX3S-85F), two presets on the smallest array a 64-bit AXI port allows (2 x 8),
    # small memories. `ulx3s`: GEMM + attention, the normaliser on one multiplier. `ulx3s-gemm`: GEMM +
    # convolution, what the test suite places and routes. Together they put every array engine through
    # place and route; all three in one design (30.5k LUT4, 95 MULT18X18D) do not route on the 85F (router2
    # stalls at 170-720 overused wires on static placements, three seeds; 7.2k on HeAP's), and the
    # depthwise engine's 49 multipliers per lane do not fit beside attention. Fmax and the runs:
    # bitstreams/README.md.
    "ulx3s": OverlayConfig("ulx3s", rows=2, cols=8, a_depth=1024, b_depth=1024, acc_depth=64,
                           param_depth=16, axi_data_bits=64, clock_mhz=50.0, board="ULX3S-85F LFE5U-85F",
                           engines=("gemm", "attention"), attn_max_dim=64, attn_norm_lanes=1, pv_preadd=False),
    "ulx3s-gemm": OverlayConfig("ulx3s-gemm", rows=2, cols=8, a_depth=1024, b_depth=1024, acc_depth=64,
                                param_depth=16, axi_data_bits=64, clock_mhz=50.0, board="ULX3S-85F LFE5U-85F",
                                engines=("gemm", "conv"), attn_max_dim=64, attn_norm_lanes=1, pv_preadd=False),
    # The Zynq boards: two int8 MACs per DSP in the GEMM array (dsp_packing; DSP48E2 and DSP48E1 alike),
    # the attention engine's own P V array at one 17 x 8-bit MAC per DSP (its products do not pack), a
    # requantiser per byte of the AXI beat. Resource estimates per preset and why these sizes:
    # bitstreams/README.md.
    # Zynq-7000 (220 DSP48E1, 64-bit HP): GEMM + attention + convolution on 8 x 8 (64 int8 MACs in 32 DSPs,
    # 64 P V MACs in 64). 8 x 16 with attention needs 224+ DSPs (its P V array alone 128). The depthwise
    # engine (53 DSPs a lane) is left out: SAM 2's depthwise 7 x 7 layers run on the convolution engine
    # (IM2COL's depthwise mode, on the GEMM array); so is the vector engine (8 lanes: ~45 DSPs beside the
    # 170 the estimate maps): the element-wise ops run on the ARM.
    "pynq-z2": OverlayConfig("pynq-z2", rows=8, cols=8, a_depth=2048, b_depth=2048, acc_depth=256,
                             param_depth=64, axi_data_bits=64, clock_mhz=150.0, board="PYNQ-Z2 xc7z020",
                             engines=("gemm", "attention", "conv", "load_t"), attn_q_slots=4, attn_norm_lanes=1,
                             dsp_packing=True),
    # Zynq UltraScale+ (128-bit HP), every engine, the vector engine with a lane per byte of the 16-byte beat.
    # kv260: 16 x 32 (512 int8 MACs in 256 DSPs, 512 P V MACs in 512); 32 x 32 with attention needs 1,024 DSPs
    # for its P V array alone, past 85 % of the xck26's 1,248, and P V rows in LUTs (164 LUTs a MAC) would
    # need more LUTs than it has. zcu104: 32 x 32 (1,024 int8 MACs in 512 DSPs, 1,024 P V MACs: 19 rows in
    # 608 DSPs, the last 13 in LUTs, attn_pv_lut_rows), 2,048 MACs a cycle: all 32 rows in DSPs map 1,840 of
    # the xczu7ev's 1,728 (85 %: 1,468). The attention engine's O memories in UltraRAM (attn_o_uram; a bank per
    # normaliser lane, one URAM288 each: 2 x 16 rows on kv260 (768 x 40 bits), 2 x 32 rows on zcu104 (1,024 x
    # 40): 32 and 64 of the parts' 64 and 96). kv260 also keeps its GEMM A and B scratchpads in UltraRAM
    # (scratch_uram: 6 URAM288), which leaves block RAM room for a 4,096-entry A and 6 query slots (attention
    # steady state 100 %, 83.7 % with 4). Both have one depthwise lane (53 DSPs a lane; DSPs are what bind: the
    # depthwise 7 x 7 layers are 4.8 ms of a 2.33 s modelled kv260 steady frame at two lanes, 8.3 ms at one:
    # `sam2fpga profile --preset kv260 --video`). Both fit within 85 % of every resource: `sam2fpga build
    # --board kv260|zcu104` (figures in bitstreams/README.md).
    # Estimates (yosys, per engine): bitstreams/README.md.
    "kv260": OverlayConfig("kv260", rows=16, cols=32, a_depth=4096, b_depth=2048, acc_depth=512,
                           param_depth=128, axi_data_bits=128, clock_mhz=300.0, board="KV260 xck26",
                           engines=("gemm", "attention", "conv", "depthwise", "vector", "load_t"), dw_lanes=1,
                           dw_row_bytes=256, attn_q_slots=6, attn_norm_lanes=2, dsp_packing=True, vec_lanes=16,
                           attn_o_uram=True, scratch_uram=True),
    "zcu104": OverlayConfig("zcu104", rows=32, cols=32, a_depth=4096, b_depth=4096, acc_depth=1024,
                            param_depth=256, axi_data_bits=128, clock_mhz=300.0, board="ZCU104 xczu7ev",
                            engines=("gemm", "attention", "conv", "depthwise", "vector", "load_t"), dw_lanes=1,
                            dw_row_bytes=256, attn_q_slots=8, attn_norm_lanes=2, dsp_packing=True, vec_lanes=16,
                            attn_o_uram=True, attn_pv_lut_rows=13),
    # The 16 x 16 overlay the benchmarks measure (utilisation, resources).
    "bench16": OverlayConfig("bench16", rows=16, cols=16, a_depth=2048, b_depth=2048, acc_depth=256,
                             param_depth=64, axi_data_bits=128, clock_mhz=200.0, board="(benchmark)",
                             engines=("gemm", "attention", "conv", "depthwise", "vector", "store_lut",
                                      "store_add", "load_t"), dw_lanes=4,
                             dw_row_bytes=256, attn_q_slots=4, dsp_packing=True, vec_lanes=16),
}


def preset(name: str) -> OverlayConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
