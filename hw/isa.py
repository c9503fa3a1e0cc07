"""The overlay's host interface, defined once: register map, descriptor format, DDR layouts.

Plain Python (no Amaranth): the hardware (hw/overlay.py), the host compiler and
driver (sw/) and docs/overlay.md all read these tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from golden_model.intvec import ADD_MULT_BITS, ADD_SHIFT_MAX, LUT_SIZE
from hw.config import ATTN_SLOT_BITS
from hw.vector import params as VP

#: The overlay IP's Vivado VLNV: the board flow packages the IP under it and the
#: pynq backend's driver binds to it (pynq.DefaultIP.bindto).
IP_VLNV = "sam2-fpga.org:sam2fpga:overlay:1.0"
#: The overlay's instance name in the board design (pynq.Overlay exposes it as an attribute).
IP_INSTANCE = "sam2fpga_overlay_0"
#: The overlay's top-level Verilog module (hw/overlay.py emits it; the flows and the rtl backend use it).
VERILOG_NAME = "sam2fpga_overlay"

#: Pipeline depth the sim backend's cycle model shares with the hardware: registers
#: the systolic array adds beyond its skew (edge input register; each multiplier's input,
#: product and output registers).
ARRAY_EXTRA_LATENCY = 4


def array_tile_gap(rows: int) -> int:
    """Fewest cycles between two tiles' last steps on an R-row array (hw/gemm/array.py): a column's
    R shadow registers drain in R cycles, row 0 last, and the next tile's row 0 may land the cycle after."""
    return 2 * rows - 1

#: Descriptors the fetcher may hold ahead of the dispatcher. Deep enough that a fetch queued in DDR
#: behind a LOAD's 256-beat burst does not starve the dispatcher (attention: 2 descriptors per ~256 cycles).
DESC_FIFO_DEPTH = 8

# ---------------------------------------------------------------- registers (AXI4-Lite, 32-bit)


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str          # "rw", "ro", "w1s" (write 1 to set), "w1c" (write 1 to clear)
    doc: str


REGISTERS = [
    Register("CONTROL", 0x00, "w1s", "bit0 START: run DESC_COUNT descriptors from DESC_ADDR; "
             "bit1 RESET: soft-reset the command processor, engines and counters (self-clearing; a START in the "
             "same write is ignored)"),
    Register("STATUS", 0x04, "w1c", "bit0 BUSY (ro; after an error, until the AXI transfers in flight have "
             "ended: soft-reset only once it is 0); bit1 DONE (sticky, write 1 to clear); bit2 ERROR (ro, = ERROR != 0)"),
    Register("ERROR", 0x08, "ro", "sticky until RESET: bit0 BAD_OPCODE; bit1 AXI_READ_ERROR (RRESP != OKAY on a "
             "data read); bit2 AXI_WRITE_ERROR (BRESP != OKAY); bit3 DESC_FETCH_ERROR (RRESP != OKAY on a "
             "descriptor fetch); bits 9:8 AXI_RESP: the first error response (2 SLVERR, 3 DECERR)"),
    Register("IRQ_ENABLE", 0x0C, "rw", "bit0: raise `irq` while STATUS.DONE or STATUS.ERROR"),
    Register("DESC_ADDR", 0x10, "rw", "DDR byte address of the first descriptor (32-byte aligned)"),
    Register("DESC_COUNT", 0x14, "rw", "number of descriptors to run"),
    Register("DESC_DONE", 0x18, "ro", "descriptors dispatched so far in this run"),
    Register("CYCLES", 0x1C, "ro", "clock cycles from START to DONE (or now, while busy)"),
    Register("LOADS_DONE", 0x20, "ro", "LOAD descriptors completed in this run"),
    Register("COMPUTES_DONE", 0x24, "ro", "COMPUTE descriptors completed in this run"),
    Register("STORES_DONE", 0x28, "ro", "STORE descriptors completed in this run"),
    Register("CONFIG", 0x2C, "ro", "bits 7:0 rows R; 15:8 cols C; 23:16 AXI data bytes; 31:24 ISA_VERSION"),
    Register("ERROR_DESC", 0x30, "ro", "DESC_DONE when ERROR was first set (BAD_OPCODE: the bad descriptor's index)"),
    Register("ATTENTIONS_DONE", 0x34, "ro", "ATTENTION descriptors completed in this run"),
]
REG = {r.name: r.offset for r in REGISTERS}
CONTROL_START, CONTROL_RESET = 1 << 0, 1 << 1
STATUS_BUSY, STATUS_DONE, STATUS_ERROR = 1 << 0, 1 << 1, 1 << 2
ERROR_BAD_OPCODE, ERROR_AXI_READ, ERROR_AXI_WRITE, ERROR_DESC_FETCH = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ERROR_NAMES = {ERROR_BAD_OPCODE: "bad opcode", ERROR_AXI_READ: "AXI read error response",
               ERROR_AXI_WRITE: "AXI write error response", ERROR_DESC_FETCH: "descriptor fetch error response"}
#: ERROR bits 9:8 (AXI_RESP): the first AXI error response's code (AXI RRESP/BRESP values).
ERROR_RESP_SHIFT, ERROR_RESP_BITS = 8, 2
AXI_RESP = {"OKAY": 0, "EXOKAY": 1, "SLVERR": 2, "DECERR": 3}
ERROR_FLAGS = (1 << ERROR_RESP_SHIFT) - 1      # the error bits (ERROR & ERROR_FLAGS), without AXI_RESP


def error_resp(error: int) -> str:
    """The AXI_RESP field of an ERROR value by name ("" when no AXI error response was seen)."""
    code = error >> ERROR_RESP_SHIFT & ((1 << ERROR_RESP_BITS) - 1)
    return next(k for k, v in AXI_RESP.items() if v == code) if code else ""
ISA_VERSION = 1
CSR_ADDR_BITS = 8


def config_word(cfg) -> int:
    """The CONFIG register's value for an overlay configuration (the RTL and the sim model both read it here)."""
    return cfg.rows | cfg.cols << 8 | (cfg.axi_data_bits // 8) << 16 | ISA_VERSION << 24

# ---------------------------------------------------------------- descriptors (32 bytes each)

# Opcodes and LOAD targets are declared per engine (ENGINES, after the descriptor fields).
# LOAD targets name a scratchpad; IM2COL: the convolution engine's input side (hw/conv/im2col.py)
# gathers B entries from a feature map; DW: the depthwise engine's coefficients (per lane
# DW_COEF_BYTES: 8 x 8 int8 taps, then a PARAM channel).
#: ATTENTION modes (in the `target` field).
ATTN_MODES = {"STEP": 0, "NORM": 1}

DESCRIPTOR_BYTES = 32
#: Tiles one COMPUTE (count) or STORE (tiles_last + 1) may cover.
MAX_TILES = 256
#: (name, width, doc), packed LSB first in this order; the rest of the 256 bits are zero.
DESCRIPTOR_FIELDS = [
    ("opcode", 8, "OPCODES"),
    ("target", 4, "LOAD: TARGETS; ATTENTION: mode (0 STEP: one key tile, 1 NORM: O / l into accumulator rows)"),
    ("relu", 1, "STORE: ReLU"),
    ("out_int32", 1, "STORE: write int32 (bias added, not requantised) instead of int8"),
    ("accumulate", 1, "COMPUTE: add to the accumulator rows instead of overwriting them; "
     "ATTENTION STEP: continue the rows' softmax state (0: first key tile)"),
    ("param_rows", 1, "STORE: per-row parameters (row r uses channel r of the entry: convolutions, rows = channels)"),
    ("wait_load", 16, "dispatch only when LOADS_DONE >= wait_load"),
    ("wait_compute", 16, "dispatch only when COMPUTES_DONE >= wait_compute"),
    ("wait_store", 16, "dispatch only when STORES_DONE >= wait_store"),
    ("dram_addr", 32, "LOAD/STORE: DDR byte address (AXI-beat aligned)"),
    ("stride", 32, "STORE: bytes between output rows (AXI-beat aligned); ATTENTION STEP: score shift (1..63)"),
    ("count", 16, "LOAD: entries; STORE: rows per tile (1..R); ATTENTION STEP: valid keys (1..C); NORM: chunks of "
     f"C channels; COMPUTE: tiles run back to back (0 or 1: one; at most {MAX_TILES}): tile t reads B from "
     "b_base + t x K and writes accumulator rows from acc_base + t x R"),
    ("sp_addr", 16, "LOAD: first scratchpad entry; COMPUTE: A base; STORE: accumulator row; "
     "ATTENTION STEP: accumulator row of S row 0; NORM: first chunk"),
    ("b_base", 16, "COMPUTE: B base; ATTENTION STEP: V entry of channel 0"),
    ("k_last", 16, "COMPUTE: K - 1; ATTENTION STEP: d / C - 1"),
    ("acc_base", 16, "COMPUTE: first accumulator row written; ATTENTION NORM: accumulator row of (chunk 0, row 0)"),
    ("param_addr", 16, "STORE: parameter entry (per-channel bias/multiplier/shift); ATTENTION STEP: score multiplier"),
    ("wait_attention", 16, "dispatch only when ATTENTIONS_DONE >= wait_attention"),
    ("cols", 8, "STORE: columns written per row (0 = all C; the rest keep their bytes: write strobes)"),
    ("slot", 4, "ATTENTION: query slot (0 .. attn_q_slots - 1) whose softmax state (m, l, O) the STEP updates "
     "or the NORM reads"),
    ("lut", 1, "STORE: int8 results through the store table (LOAD target LUT: golden_model.intvec.lut after the "
     "requantiser; overlays with the store_lut engine)"),
    ("add", 1, "STORE: int8 results plus the residual rows (LOAD target RES, at the accumulator rows read): "
     "golden_model.intvec.add with the add multipliers and shift of the PARAM entry's channel 0; overlays with "
     "store_add"),
    ("transpose", 1, "LOAD A, B, V: read token rows (t_rows_last + 1 rows of `count` bytes, `stride` apart) and "
     "write their transpose: entry e byte r = row r byte e (golden_model.intops.token_tiles); overlays with load_t"),
]


#: LOAD IM2COL's own fields share the bits of fields a LOAD never reads (b_base, k_last):
#: (name, width, doc), packed LSB first from the first bit of IM2COL_SHARES[0].
IM2COL_SHARES = ("b_base", "k_last")
IM2COL_FIELDS = [
    ("kernel_last", 3, "IM2COL LOAD: K - 1 (kernel K x K, K <= 7)"),
    ("stride_log2", 2, "IM2COL LOAD: log2 of the convolution stride (1, 2, 4)"),
    ("col_offset", 5, "IM2COL LOAD: byte of the first input column within the first beat"),
    ("plane_rows", 14, "IM2COL LOAD: rows per channel plane (plane bytes = plane_rows x stride)"),
    ("out_rows_last", 8, "IM2COL LOAD: output rows - 1 gathered one after another (input rows 2^stride_log2 "
     "x stride bytes apart); row t's entries start at sp_addr + t x count x K x K"),
]


#: DEPTHWISE's own fields share the bits of fields it never reads (sp_addr .. param_addr). It also reads
#: dram_addr (input: row -padding of its first channel's plane, a row start), stride (row pitch, bytes,
#: input and output maps alike), count (output rows) and relu.
DW_SHARES = ("sp_addr", "b_base", "k_last", "acc_base", "param_addr")
DW_FIELDS = [
    ("dw_out_addr", 32, "DEPTHWISE: DDR byte address of output pixel (channel 0, row 0, column 0), beat aligned"),
    ("dw_width", 14, "DEPTHWISE: output (= input) pixels per row"),
    ("dw_plane_rows", 14, "DEPTHWISE: rows per channel plane (plane bytes = dw_plane_rows x stride)"),
    ("dw_kernel_last", 3, "DEPTHWISE: K - 1 (K odd, padding (K-1)/2, K <= 7)"),
    ("dw_col0", 6, "DEPTHWISE: byte of input column -padding within a row"),
    ("dw_channels", 11, "DEPTHWISE: channels (1..dw_channels), channel c's coefficients at DW entry c x 80 / beat"),
]
#: Per lane: the K x K taps at byte ky * 8 + kx (8 x 8, unused taps zero), then one PARAM channel.
DW_TAP_BYTES = 64
DW_COEF_BYTES = DW_TAP_BYTES + 16
#: STORE's own fields share the bits of fields a STORE never reads (b_base, k_last): several tiles of
#: `count` rows in one command (a convolution's output rows, each a short reduction).
STORE_SHARES = ("b_base", "k_last")
STORE_FIELDS = [
    ("tiles_last", 8, "STORE: tiles - 1; tile t is `count` accumulator rows from sp_addr + t x R, written from "
     "dram_addr + t x tile_stride"),
    ("tile_stride", 24, "STORE: bytes between tiles' first output rows (AXI-beat aligned)"),
]


#: A transposing LOAD (`transpose`) reads its own field from the bits of fields a LOAD never reads (b_base,
#: k_last), besides dram_addr (row 0, beat aligned), stride (row pitch, beat aligned) and count (entries =
#: bytes read of each row).
LOAD_T_SHARES = ("b_base", "k_last")
LOAD_T_FIELDS = [
    ("t_rows_last", 8, "transposing LOAD: rows read - 1 (at most an entry's bytes: R for A, C for B and V; the "
     "entries' bytes past the rows read are zero: a tail tile)"),
]
#: The LOAD targets a transposing LOAD may fill (entries of one byte per token: a tile of tokens).
TRANSPOSE_TARGETS = ("A", "B", "V")


#: VECTOR's own fields share the bits of fields it never reads (stride .. param_addr). It also reads
#: dram_addr (the first input row) and target (the op: VEC_OPS). Rows are channels-last token rows
#: (sw.runtime.layout.TokenRowLayout): row r's D int8 at address + r x pitch.
VEC_SHARES = ("stride", "count", "sp_addr", "b_base", "k_last", "acc_base", "param_addr")
VEC_FIELDS = [
    ("vec_out_addr", 32, "VECTOR: DDR byte address of the first output row (beat aligned)"),
    ("vec_b_addr", 32, "VECTOR ADD: DDR byte address of b's first row (beat aligned)"),
    ("vec_rows", 16, "VECTOR: input rows (MAXPOOL, UPSAMPLE: image rows H of vec_width pixels each)"),
    ("vec_aux", 16, "VECTOR ADD: rows of b, input row r adds b's row r mod vec_aux (1: one vector for all); "
     "ROPE: the tables' pair slots (copied into the engine before the rows)"),
    ("vec_dim", 11, f"VECTOR: elements per row D, 1..{VP.MAX_DIM} (MAXPOOL, UPSAMPLE: channels of a pixel)"),
    ("vec_pitch", 8, "VECTOR: AXI beats from one row to the next, input, b and output alike (>= ceil(D / beat))"),
    ("vec_width", 12, "VECTOR MAXPOOL, UPSAMPLE: pixels per input image row W (pixel (y, x) is row y W + x)"),
]
#: VECTOR ops (the `target` field): hw.vector.params.VecOp.
VEC_OPS = {op.name: int(op) for op in VP.VecOp}
#: The vector engine's parameter memory, loaded by LOAD VEC (entries are AXI beats), byte offsets:
#: a header of the command's scalars (VEC_HEADER: name -> (offset, NumPy dtype)), LayerNorm gains
#: (int16) and biases (int32) per channel, the 256-entry table (int8), RoPE (cos, sin) pair slots
#: (int16 each, slot order of hw.vector.params.rope_command).
VEC_HEADER = {"eps_term": (0, "<u8"), "a_mult": (8, "<u2"), "b_mult": (10, "<u2"), "rope_mult": (12, "<u4"),
              "rope_nx": (16, "<u2"), "rope_ny": (18, "<u2"), "rope_jx": (20, "u1"), "ln_shift": (21, "u1"),
              "add_shift": (22, "u1"), "rope_shift": (23, "u1")}
VEC_HEADER_BYTES = 32
VEC_GAIN = VEC_HEADER_BYTES
VEC_BIAS = VEC_GAIN + 2 * VP.MAX_DIM
VEC_LUT = VEC_BIAS + 4 * VP.MAX_DIM
VEC_ROPE = VEC_LUT + 256
VEC_PARAM_BYTES = VEC_ROPE + 4 * VP.ROPE_DEPTH
assert all(v % 16 == 0 for v in (VEC_GAIN, VEC_BIAS, VEC_LUT, VEC_ROPE, VEC_PARAM_BYTES)), "sections start on a beat"


def vector_rows(op, rows, width):
    """(input rows, output rows) of VECTOR commands with op codes `op` (VEC_OPS) over `rows` rows
    (MAXPOOL, UPSAMPLE: image rows of `width` pixels); ints or NumPy columns alike."""
    pool, up = np.equal(op, VEC_OPS["MAXPOOL"]), np.equal(op, VEC_OPS["UPSAMPLE"])
    n_in = np.where(pool | up, rows * width, rows)
    n_out = np.where(pool, (rows // 2) * (width // 2), np.where(up, 4 * rows * width, rows))
    return n_in, n_out


def vector_geometry(cfg, d: dict) -> tuple[str, int, int, int, int]:
    """What a VECTOR descriptor (fields `d`) touches: (op name or "?", input rows, output rows, row pitch in
    bytes, bytes written per output row: whole beats, those past vec_dim zero)."""
    op = next((k for k, v in VEC_OPS.items() if v == d["target"]), "?")
    n_in, n_out = (int(n) for n in vector_rows(d["target"], d["vec_rows"], d["vec_width"]))
    DB = cfg.beat_bytes
    return op, n_in, n_out, d["vec_pitch"] * DB, VP.beats(d["vec_dim"], DB) * DB


@dataclass(frozen=True)
class EngineISA:
    """One engine's part of the host interface, declared in one place: its opcodes (with the done
    counter each completes into), its LOAD targets, the descriptor field group it reads from shared
    bits. Every table below (OPCODES, TARGETS, SHARED_GROUPS, ...) is derived from ENGINES; the host
    checks (sw.runtime.checks) are keyed by the same names and refuse to import when one is missing."""
    name: str                                   # as in OverlayConfig.engines
    title: str                                  # in messages and docs
    opcodes: dict = field(default_factory=dict)    # name -> (value, done counter or None)
    targets: dict = field(default_factory=dict)    # LOAD target name -> value
    fields: tuple = ()                          # (fields whose bits it shares, group name, fields, doc intro)


ENGINES = [
    EngineISA("gemm", "GEMM",
              {"LOAD": (1, "LOAD"),        # DDR -> scratchpad `target`, `count` entries from `dram_addr` into `sp_addr`
               "COMPUTE": (2, "COMPUTE"),  # K = k_last + 1 entries of A from `sp_addr` and of B from `b_base`
               "STORE": (3, "STORE"),      # accumulator rows -> output stage -> DDR, row r at dram_addr + r * stride
               "SYNC": (4, None)},         # wait until every dispatched descriptor has completed
              {"A": 0, "B": 1, "PARAM": 2},
              (STORE_SHARES, "STORE", STORE_FIELDS,
               "STORE reads its own fields from the bits of {} (which a STORE does not use):")),
    EngineISA("attention", "attention",
              {"ATTENTION": (8, "ATTENTION")},   # one key tile (mode STEP) or the normalisation (mode NORM)
              {"V": 3}),
    EngineISA("conv", "convolution", {}, {"IM2COL": 4},
              (IM2COL_SHARES, "IM2COL", IM2COL_FIELDS,
               "LOAD IM2COL reads its own fields from the bits of {} (which a LOAD does not use):")),
    EngineISA("depthwise", "depthwise",
              # A stride-1 "same" depthwise conv of dw_channels channels, DDR to DDR; it counts as a LOAD:
              # it runs on the load unit's AXI read slot.
              {"DEPTHWISE": (10, "LOAD")}, {"DW": 5},
              (DW_SHARES, "DEPTHWISE", DW_FIELDS,
               "DEPTHWISE reads its own fields from the bits of {} (which it does not use), besides dram_addr "
               "(input: row -padding of its first channel, a row start), stride (row pitch of the input and "
               "output maps), count (output rows) and relu:")),
    EngineISA("vector", "vector",
              # One element-wise op over rows, DDR to DDR; it counts as a LOAD: it runs on the load unit's
              # AXI read slot, after the LOAD VEC of its parameters.
              {"VECTOR": (11, "LOAD")}, {"VEC": 6},
              (VEC_SHARES, "VECTOR", VEC_FIELDS,
               "VECTOR reads its own fields from the bits of {} (which it does not use), besides dram_addr "
               "(the first input row) and target (the op):")),
    # A 256-entry int8 table per requantiser lane of the GEMM store (hw/gemm/engine.py StoreTable): a STORE
    # with `lut` maps each int8 result through it (GELU, sigmoid, ... fused into the store: no DDR pass).
    EngineISA("store_lut", "GEMM store table", {}, {"LUT": 7}),
    # The residual add in the GEMM store (hw/gemm/engine.py StoreAdd): a STORE with `add` adds the int8
    # residual rows (RES entries mirror the accumulator rows: C int8 each) with the add's requantisation
    # (golden_model.intvec.add; multipliers and shift in the PARAM channel), so a projection whose output
    # only feeds a residual add writes the sum: no DDR pass for its output.
    EngineISA("store_add", "GEMM store residual add", {}, {"RES": 8}),
    # The transposing LOAD in the GEMM load unit (hw/overlay.py): LOAD with `transpose` reads token rows
    # (what a linear or the vector engine writes: sw.runtime.layout.TokenRowLayout) into A, B or V entries
    # (a tile of tokens, one channel per entry), so a linear's A chains in DDR with no host transpose.
    EngineISA("load_t", "GEMM transposing load", {}, {},
              (LOAD_T_SHARES, "LOAD_T", LOAD_T_FIELDS,
               "A LOAD with `transpose` reads its own field from the bits of {} (which a LOAD does not use), "
               "besides dram_addr (row 0), stride (row pitch, both AXI-beat aligned) and count (entries: the "
               "bytes read of each row, any number; a row is read as whole beats):")),
]
#: Reserved for the engines of later issues (decoded as BAD_OPCODE until they exist).
RESERVED_OPCODES = {"CONV": 9}

OPCODES = {**{op: v for e in ENGINES for op, (v, _) in e.opcodes.items()}, **RESERVED_OPCODES}
IMPLEMENTED_OPCODES = tuple(op for e in ENGINES for op in e.opcodes)
#: opcode -> the engine that runs it (BAD_OPCODE in an overlay without it).
OPCODE_ENGINE = {op: e.name for e in ENGINES for op in e.opcodes}
#: opcode -> the done counter it completes into (LOADS_DONE, ...; None: none).
OPCODE_COUNTER = {op: unit for e in ENGINES for op, (_, unit) in e.opcodes.items()}
#: Opcodes counted as LOADs (LOADS_DONE, wait_load).
COUNTS_AS_LOAD = tuple(op for op, unit in OPCODE_COUNTER.items() if unit == "LOAD")
TARGETS = {t: v for e in ENGINES for t, v in e.targets.items()}
TARGET_ENGINE = {t: e.name for e in ENGINES for t in e.targets}
ENGINE_TITLES = {e.name: e.title for e in ENGINES}
#: Groups of fields that share bits: (the fields whose bits they use, the group, its fields).
SHARED_GROUPS = [e.fields[:3] for e in ENGINES if e.fields]
assert len(set(OPCODES.values())) == len(OPCODES) and len(set(TARGETS.values())) == len(TARGETS)


def field_offsets() -> dict[str, tuple[int, int]]:
    offsets, pos = {}, 0
    for name, width, _ in DESCRIPTOR_FIELDS:
        offsets[name] = (pos, width)
        pos += width
    assert pos <= DESCRIPTOR_BYTES * 8
    for shares, _, group_fields in SHARED_GROUPS:
        pos = offsets[shares[0]][0]
        end = pos + sum(offsets[n][1] for n in shares)
        assert all(offsets[a][0] + offsets[a][1] == offsets[b][0] for a, b in zip(shares, shares[1:]))
        for name, width, _ in group_fields:
            offsets[name] = (pos, width)
            pos += width
        assert pos <= end
    return offsets


FIELDS = field_offsets()
#: Fields that hold DDR byte addresses: the one table binding and relocation read
#: (sw.runtime.program.link), so a program can name its buffers instead of addresses.
ADDRESS_FIELDS = ("dram_addr", "dw_out_addr", "vec_out_addr", "vec_b_addr")
assert all(FIELDS[f][1] == 32 for f in ADDRESS_FIELDS), "DDR addresses are 32-bit descriptor fields"
assert FIELDS["slot"][1] == ATTN_SLOT_BITS, "hw.config.ATTN_SLOT_BITS bounds attn_q_slots by the slot field"


def pack_descriptor(**fields) -> bytes:
    word = 0
    used = []
    for shares, group, group_fields in SHARED_GROUPS:
        shared = [n for n in shares if fields.get(n)]
        if any(fields.get(n) for n, _, _ in group_fields):
            if shared:
                raise ValueError(f"{group} fields share the bits of {', '.join(shared)}: set one or the other")
            used.append(group)
    if len(used) > 1:
        raise ValueError(f"{' and '.join(used)} fields share bits: set one group or the other")
    for name, value in fields.items():
        if name not in FIELDS:
            raise ValueError(f"descriptor has no field {name!r}")
        pos, width = FIELDS[name]
        value = int(value)
        if not 0 <= value < (1 << width):
            raise ValueError(f"descriptor field {name}={value} does not fit {width} bits")
        word |= value << pos
    return word.to_bytes(DESCRIPTOR_BYTES, "little")


def unpack_descriptor(raw: bytes) -> dict[str, int]:
    word = int.from_bytes(bytes(raw[:DESCRIPTOR_BYTES]), "little")
    return {name: (word >> pos) & ((1 << width) - 1) for name, (pos, width) in FIELDS.items()}


# ---------------------------------------------------------------- DDR layouts of scratchpad entries

#: The store table (LOAD target LUT): 256 int8, entry x + 128 (golden_model.intvec.LUT_SIZE), AXI beats of it.
LUT_BYTES = LUT_SIZE
PARAM_CHANNEL_BYTES = 16    # per output channel: int32 bias, uint32 multiplier, uint32 shift, uint32 add word
#: The STORE `add` fields in a PARAM channel (store_add): the add's shift in the shift word's bits 8.., its
#: multipliers in the fourth word (a_mult of the linear's result in bits 0..15, b_mult of the residual above).
#: The add is one per tensor (golden_model.intvec.AddParams): the engine keeps channel 0's of each entry.
ADD_SHIFT_AT, ADD_SHIFT_WIDTH, ADD_MULT_WIDTH = 8, ADD_SHIFT_MAX.bit_length(), ADD_MULT_BITS


def entry_bytes(cfg, target: str) -> int:
    """Bytes one scratchpad entry occupies in DDR (entries are contiguous, little-endian)."""
    return {"A": cfg.rows, "B": cfg.cols, "PARAM": cfg.cols * PARAM_CHANNEL_BYTES, "V": cfg.cols,
            "DW": cfg.beat_bytes, "VEC": cfg.beat_bytes, "LUT": cfg.beat_bytes, "RES": cfg.cols}[target]


def scratchpad_depth(cfg, target: str) -> int:
    return {"A": cfg.a_depth, "B": cfg.b_depth, "PARAM": cfg.param_depth, "V": 2 * cfg.attn_max_dim,
            "IM2COL": cfg.b_depth, "DW": cfg.dw_channels * DW_COEF_BYTES // cfg.beat_bytes,
            "VEC": VEC_PARAM_BYTES // cfg.beat_bytes, "LUT": LUT_BYTES // cfg.beat_bytes,
            "RES": cfg.acc_depth}[target]


def has_target(cfg, target: str) -> bool:
    return target in TARGETS and TARGET_ENGINE.get(target, "gemm") in cfg.engines


def has_opcode(cfg, name: str) -> bool:
    return name in IMPLEMENTED_OPCODES and OPCODE_ENGINE.get(name, "gemm") in cfg.engines


def pack_params(bias, multiplier, shift, add=None) -> np.ndarray:
    """Per-channel parameters as the PARAM scratchpad reads them from DDR (uint8 bytes). `add`: the fused
    residual add's golden_model.intvec.AddParams (the same in every channel; zero without)."""
    n = len(bias)
    words = np.zeros((n, 4), dtype="<u4")
    words[:, 0] = np.asarray(bias, np.int64).astype(np.int32).view(np.uint32)
    words[:, 1] = np.asarray(multiplier, np.int64)
    words[:, 2] = np.asarray(shift, np.int64)
    if add is not None:
        words[:, 2] |= add.shift << ADD_SHIFT_AT
        words[:, 3] = add.a_mult | add.b_mult << ADD_MULT_WIDTH
    return words.view(np.uint8).reshape(n * PARAM_CHANNEL_BYTES)


def unpack_add(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a_mult, b_mult, shift) of PARAM channels given as (..., 4) uint32 words (the inverse of pack_params)."""
    words, mult = np.asarray(words, np.int64), (1 << ADD_MULT_WIDTH) - 1
    return (words[..., 3] & mult, words[..., 3] >> ADD_MULT_WIDTH & mult,
            words[..., 2] >> ADD_SHIFT_AT & ((1 << ADD_SHIFT_WIDTH) - 1))


# ---------------------------------------------------------------- documentation (docs/overlay.md)

DOC_BEGIN, DOC_END = "<!-- BEGIN GENERATED by `python -m hw.isa` -->", "<!-- END GENERATED -->"


def markdown_tables() -> str:
    """The register map and descriptor format as Markdown: docs/overlay.md embeds exactly this."""
    lines = ["### Registers (AXI4-Lite, 32-bit, byte offsets)", "", "| offset | name | access | meaning |",
             "|---|---|---|---|"]
    lines += [f"| {r.offset:#04x} | {r.name} | {r.access} | {r.doc} |" for r in REGISTERS]
    lines += ["", f"### Descriptor ({DESCRIPTOR_BYTES} bytes, little-endian, fields LSB first)", "",
              "| bits | field | meaning |", "|---|---|---|"]
    for name, width, doc in DESCRIPTOR_FIELDS:
        pos, _ = FIELDS[name]
        lines.append(f"| {pos + width - 1}:{pos} | {name} | {doc} |")
    intros = {e.fields[1]: e.fields[3] for e in ENGINES if e.fields}
    for shares, group, group_fields in SHARED_GROUPS:
        lines += ["", intros[group].format(", ".join(shares)), "", "| bits | field | meaning |", "|---|---|---|"]
        for name, width, doc in group_fields:
            pos, _ = FIELDS[name]
            lines.append(f"| {pos + width - 1}:{pos} | {name} | {doc} |")
    lines += ["", "### Opcodes", "", "| opcode | value | state |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {('implemented' + (f' (overlays with the {OPCODE_ENGINE[k]} engine)' if OPCODE_ENGINE.get(k, 'gemm') != 'gemm' else '')) if k in IMPLEMENTED_OPCODES else 'reserved (BAD_OPCODE today)'} |"
              for k, v in OPCODES.items()]
    lines += ["", "LOAD targets: " + ", ".join(f"{k} = {v}" for k, v in TARGETS.items()) + ". "
              "IM2COL: `count` input channels from `dram_addr` (row pitch `stride`), count x K x K B entries "
              "from `sp_addr` in (channel, ky, kx) order, lane j = byte col_offset + kx + j * stride of each row. "
              f"PARAM entries hold C channels of {PARAM_CHANNEL_BYTES} bytes: int32 bias, uint32 multiplier "
              "(< 2^31), uint32 shift (bits 5:0; bits 12:8 the fused add's shift), uint32 add word (store_add: a_mult "
              "of the result in bits 15:0, b_mult of the residual in 31:16; zero otherwise; the engine keeps "
              "channel 0's add fields per entry, one add per tensor). V entries (attention engine) hold C int8: one channel "
              "of a tile of C keys. "
              f"DW entries (depthwise engine) are AXI beats of its coefficient memory: channel c's {DW_COEF_BYTES} "
              f"bytes at entries c x {DW_COEF_BYTES} / beat bytes on: K x K int8 taps at byte ky x 8 + kx "
              f"({DW_TAP_BYTES} bytes, unused taps zero), then its PARAM channel (16 bytes). DEPTHWISE counts as a "
              "LOAD (LOADS_DONE, wait_load): it runs on the load unit's AXI read slot, after the loads before it. "
              f"VEC entries (vector engine) are AXI beats of its {VEC_PARAM_BYTES}-byte parameter memory: a "
              f"{VEC_HEADER_BYTES}-byte header of the command's scalars at 0 ("
              + ", ".join(f"{k} {dt.lstrip('<')} at {o}" for k, (o, dt) in VEC_HEADER.items()) +
              f"), LayerNorm gains (int16) at {VEC_GAIN}, biases (int32) at {VEC_BIAS}, the table (256 int8, "
              f"entry x + 128) at {VEC_LUT}, RoPE (cos, sin) int16 pairs at {VEC_ROPE}. VECTOR ops (target): "
              + ", ".join(f"{k} = {v}" for k, v in VEC_OPS.items()) + "; it counts as a LOAD like DEPTHWISE. "
              f"LUT entries (store_lut engine) are AXI beats of the GEMM store's {LUT_BYTES}-byte table (int8 "
              "y for x at byte x + 128, every requantiser lane's copy written at once); a STORE with `lut` maps its "
              "int8 results through it (not with out_int32). "
              "RES entries (store_add engine) hold C int8 of a residual row, at the accumulator row whose "
              "result they are added to; a STORE with `add` reads them with its accumulator rows and writes "
              "sat8((y a_mult + x b_mult + rnd(s)) >> s) of its int8 result y (after the table, with `lut`) and "
              "the residual x (golden_model.intvec.add; int8 only, not with param_rows)."]
    return "\n".join(lines)


def rewrite_generated(path, begin: str, end: str, body: str) -> bool:
    """Replace what lies between the markers `begin` and `end` in the file `path` by `body`;
    True if the file changed. (The generated parts of docs/*.md.)"""
    from pathlib import Path
    path = Path(path)
    text = path.read_text()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{body}\n{end}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def update_doc(path) -> bool:
    """Rewrite the generated part of `path` (docs/overlay.md); True if it changed."""
    return rewrite_generated(path, DOC_BEGIN, DOC_END, markdown_tables())


if __name__ == "__main__":
    from pathlib import Path
    doc = Path(__file__).resolve().parent.parent / "docs" / "overlay.md"
    print(f"{doc}: {'updated' if update_doc(doc) else 'up to date'}")
