"""The vector engine in the sim backend: VECTOR's data (golden_model.intvec, bit for bit) and cycles.

The engine's parameter memory (hw.isa VEC_*: header of scalars, gains, biases, table, RoPE pair
slots) is a byte array the LOAD VEC descriptors fill; `compute` turns it back into intvec's
parameter dataclasses and applies the op to the rows. The checked mode (sim_model.exec_vector)
reads each descriptor's rows from DDR; the fast mode (`fast_job`) one whole call's rows at once (a call
of several commands, inputs in segments or output in runs, as one pass over all of them where that equals
the commands in turn: `run_rows`).
Rows: sw.runtime.layout.TokenRowLayout (row r at address + r x pitch); each output row is written as
ceil(D / beat) whole beats, bytes past D zero (the engine zeroes its unused lanes).
"""
from __future__ import annotations

import numpy as np

from golden_model import intvec
from hw import isa
from hw.vector import params as VP
from sw.backends.cycles import READ_LATENCY, STORE_LATENCY
from sw.lru import BytesMemo

# Cycle model: the engine's own cycles per command (docs/vector.md "Cycles per op", measured in the
# Amaranth simulator at L = 8) and its DMA's fixed costs.
VEC_SETUP = 1             # hw/vector/unit.py: header read's last cycle, the last section choice, engine command
ROW_ADDRESS_CYCLES = 2    # the unit's AR and AW take a cycle to step to the next row, then one per burst
VEC_PIPE = 9              # first input beat to first output beat: ring, 7 datapath registers, output register
LN_EXTRA = 13             # LayerNorm: + J (a row fills the ring) + 13 (RowStats, scalar pipeline)
MAXPOOL_EXTRA = -3        # max-pool: + 3 J (the last window's other rows) - 3


def header(mem: np.ndarray) -> dict[str, int]:
    return {k: int(mem[o:o + np.dtype(dt).itemsize].view(dt)[0]) for k, (o, dt) in isa.VEC_HEADER.items()}


def rope_tables(mem: np.ndarray, hd: dict, dim: int, lanes: int, tokens: np.ndarray):
    """(cos, sin) int16 (len(tokens), D/2) for the given token indices, from the pair slots as the engine
    reads them: pairs of the first rope_jx beats from row t mod nx of the x part, the rest from row
    (t // nx) mod ny of the y part (hw.vector.params.rope_command writes them so)."""
    half, pb = dim // 2, lanes // 2
    nx, ny, jx = max(hd["rope_nx"], 1), max(hd["rope_ny"], 1), hd["rope_jx"]
    wx = jx * pb
    wy = VP.beats(max(half - wx, 0), pb) * pb
    slots_all = mem[isa.VEC_ROPE:].view("<i2").reshape(-1, 2)
    i = np.arange(half)
    in_x = i < wx
    slot = np.where(in_x[None], (tokens[:, None] % nx) * wx + i[None],
                    nx * wx + ((tokens[:, None] // nx) % ny) * wy + (i[None] - wx))
    slot %= len(slots_all)
    pairs = slots_all[slot]
    return pairs[..., 0], pairs[..., 1]


#: RoPE parameters made of the pair slots (their tables gathered and checked), used again while the slots hold
#: the same bytes (a frame's RoPE calls repeat their tables)
_ROPE = BytesMemo(1 << 21)        # (counts the slots copied: 64 entries, their tables besides)


def compute(cfg, op: str, mem: np.ndarray, x: np.ndarray, b: np.ndarray | None = None,
            width: int = 0) -> np.ndarray:
    """The op on int8 rows x (n, D) with the parameter memory `mem`: int8 output rows. MAXPOOL and
    UPSAMPLE: x is an image of rows of `width` pixels; ADD: b has x's rows. Parameters outside intvec's
    ranges (a VECTOR without its LOAD VEC) raise intvec's ValueError: compiled programs always load them."""
    hd = header(mem)
    d = x.shape[1]
    if op == "LAYERNORM":
        gain = mem[isa.VEC_GAIN:isa.VEC_GAIN + 2 * d].view("<i2")
        bias = mem[isa.VEC_BIAS:isa.VEC_BIAS + 4 * d].view("<i4")
        return intvec.layernorm(x, intvec.LayerNormParams(gain, bias, hd["ln_shift"], hd["eps_term"]))
    if op == "LUT":
        return intvec.lut(x, intvec.LutParams(mem[isa.VEC_LUT:isa.VEC_LUT + 256].view(np.int8)))
    if op == "ADD":
        return intvec.add(x, b, intvec.AddParams(hd["a_mult"], hd["b_mult"], hd["add_shift"]))
    if op == "RESCALE":
        return intvec.rescale(x, intvec.RescaleParams(hd["a_mult"], hd["add_shift"]))
    if op == "ROPE":
        period = max(hd["rope_nx"], 1) * max(hd["rope_ny"], 1)
        n = period if len(x) % period == 0 else len(x)        # the table's period, or one row per token
        how = (d, cfg.vec_lanes, n, *(hd[k] for k in ("rope_nx", "rope_ny", "rope_jx", "rope_mult", "rope_shift")))
        slots = len(mem) - isa.VEC_ROPE
        return intvec.rope(x, _ROPE.get(mem, isa.VEC_ROPE, 1, slots, slots, how, lambda _: intvec.RopeParams(
            *rope_tables(mem, hd, d, cfg.vec_lanes, np.arange(n)), hd["rope_mult"], hd["rope_shift"])))
    image = x.reshape(-1, width, d)
    if op == "MAXPOOL":
        return intvec.maxpool2x2(image).reshape(-1, d)
    if op == "UPSAMPLE":
        return intvec.upsample_nearest2x(image).reshape(-1, d)
    raise ValueError(f"unknown vector op {op!r}")


def rows_at(ddr: np.ndarray, addr: int, n: int, pitch: int, width: int) -> np.ndarray | None:
    """n rows of `width` bytes, `pitch` apart from addr, as a (n, width) view of DDR (None: outside it)."""
    end = addr + (n - 1) * pitch + width
    if addr < 0 or end > len(ddr) or n < 1:
        return None
    return np.lib.stride_tricks.as_strided(ddr[addr:end], (n, width), (pitch, 1))


def run(cfg, mem: np.ndarray, ddr: np.ndarray, d: dict) -> bool:
    """One VECTOR descriptor on DDR (False: a row outside DDR)."""
    op, n_in, n_out, pitch, row_bytes = isa.vector_geometry(cfg, d)
    dim = d["vec_dim"]
    src = rows_at(ddr, d["dram_addr"], n_in, pitch, dim)
    dst = rows_at(ddr, d["vec_out_addr"], n_out, pitch, row_bytes) if n_out else np.zeros((0, row_bytes), np.uint8)
    if src is None or dst is None:
        return False
    b = None
    if op == "ADD":
        bsrc = rows_at(ddr, d["vec_b_addr"], max(d["vec_aux"], 1), pitch, dim)
        if bsrc is None:
            return False
        b = bsrc.view(np.int8)
        b = b[:n_in] if len(b) >= n_in else b[np.arange(n_in) % len(b)]     # (b's rows repeated: a gather)
    y = compute(cfg, op, mem, src.view(np.int8).copy(), b, d["vec_width"])
    dst[:, :dim] = y.view(np.uint8)
    dst[:, dim:] = 0                                  # the row's padding to whole beats
    return True


def setup_cycles(cfg, op: str, d: dict) -> int:
    """From a VECTOR's dispatch to its engine command (hw/vector/unit.py): the header's beats read, then
    each table the op reads copied into the engine's memories one value a cycle (LayerNorm: D gains and
    D biases; the table: 256; RoPE: vec_aux pair slots), each section a cycle to choose and one to end."""
    counts = {"LAYERNORM": [d["vec_dim"]] * 2, "LUT": [256], "ROPE": [d.get("vec_aux", 0)]}.get(op, [])
    return isa.VEC_HEADER_BYTES // cfg.beat_bytes + VEC_SETUP + sum(n + 2 for n in counts)


def stream_cycles(cfg, d: dict) -> int:
    """A VECTOR's streaming part: the engine takes L lanes per cycle (J = ceil(D / L) cycles a row, per
    op as docs/vector.md measures), the DMA a beat per cycle on each of the read and write channels but
    at least ROW_ADDRESS_CYCLES per row (ADD reads two rows per row); the slowest of the three sets the
    pace. Its elements over these cycles are the steady-state rate."""
    op, n_in, n_out, _, row_bytes = isa.vector_geometry(cfg, d)
    J = VP.beats(d["vec_dim"], cfg.vec_lanes)
    rb = max(row_bytes // cfg.beat_bytes, ROW_ADDRESS_CYCLES)
    if op == "MAXPOOL":
        engine = 4 * n_out * J + 3 * J + MAXPOOL_EXTRA
        reads = 4 * n_out * rb
    else:
        engine = (n_out if op == "UPSAMPLE" else n_in) * J + (J + LN_EXTRA if op == "LAYERNORM" else 0)
        reads = n_in * rb * (2 if op == "ADD" else 1)
    return max(engine, reads, n_out * rb)


def cycles(cfg, d: dict) -> int:
    """A VECTOR descriptor's cycles: setup (header, tables), the first read's latency, streaming, the
    pipeline and the last write response."""
    op = isa.vector_geometry(cfg, d)[0]
    return setup_cycles(cfg, op, d) + READ_LATENCY + stream_cycles(cfg, d) + VEC_PIPE + STORE_LATENCY


def bounds(cfg, op: str, dim: int) -> tuple[float, float]:
    """Elements per cycle an op (a VEC_OPS name) on rows of `dim` can reach in steady state: (engine,
    DDR). The engine takes a row in ceil(D / L) cycles; the DDR port moves rows as whole beats, one beat
    per cycle on the read and on the write channel (ADD reads two rows per row; MAXPOOL writes a
    quarter, UPSAMPLE reads a quarter of the elements it counts)."""
    read, write = {"ADD": (2, 1), "MAXPOOL": (1, 0.25), "UPSAMPLE": (0.25, 1)}.get(op, (1, 1))
    return dim / VP.beats(dim, cfg.vec_lanes), dim / (VP.beats(dim, cfg.beat_bytes) * max(read, write))


def fast_job(cfg, ddr, op, at):
    """The fast mode (sw.backends.fast): the whole call's rows at once, from the program's op record."""
    mem = np.zeros(isa.VEC_PARAM_BYTES, np.uint8)
    for off, at_mem, size in op["sections"]:
        mem[at_mem:at_mem + size] = ddr[at["params"] + off:at["params"] + off + size]
    fields = dict(target=isa.VEC_OPS[op["op"]], vec_rows=op["rows"], vec_width=op["width"], vec_dim=op["dim"],
                  vec_pitch=op["pitch"] // cfg.beat_bytes, vec_aux=op["aux"], dram_addr=at.get("in", 0),
                  vec_out_addr=at["out"], vec_b_addr=at.get("b", 0))
    pieces = op.get("pieces")
    if not pieces:
        run(cfg, mem, ddr, fields)
        return
    commands = [{**fields, "vec_rows": n, "vec_aux": aux, "dram_addr": at[src[0]] + src[1],
                 "vec_b_addr": at[b[0]] + b[1] if b else 0, "vec_out_addr": at["out"] + out}
                for src, b, out, n, aux in pieces]       # inputs in segments, outputs in runs: a command each
    if op["op"] not in ROW_OPS or not run_rows(cfg, mem, ddr, commands):
        for d in commands:
            run(cfg, mem, ddr, d)


#: ops whose output row is a function of its input row alone (and ADD's b row): commands of them run as one
ROW_OPS = ("LAYERNORM", "LUT", "ADD", "RESCALE")


def _row_addresses(starts, counts, pitch, repeat=None) -> np.ndarray:
    """Each command's rows' addresses, commands' rows in order: row r of a command at start + r pitch
    (`repeat`: its rows r mod repeat, ADD's b re-read)."""
    first = np.repeat(np.cumsum(counts) - counts, counts)
    r = np.arange(int(np.sum(counts))) - first
    if repeat is not None:
        r %= np.repeat(repeat, counts)
    return np.repeat(starts, counts) + r * pitch


def _overlap(a, wa, b, wb) -> bool:
    """Whether any range [a_i, a_i + wa) meets any [b_j, b_j + wb) (addresses' arrays)."""
    bs = np.sort(b)
    j = np.searchsorted(bs, a + wa, "left") - 1           # the last b range starting before a's end
    hit = j >= 0
    return bool(np.any(bs[np.maximum(j, 0)][hit] + wb > a[hit]))


def _on_grids(ddr, addresses, pitch: int, width: int):
    """(rows, view) per pitch grid the addresses lie on (their residue mod pitch; a region or segment each):
    `rows` selects the addresses on it, `view` their rows of `width` bytes as a (k, width) view of DDR
    (the whole rows gathered or scattered at once, not byte by byte). Addresses in DDR (checked before)."""
    phase = addresses % pitch
    for p in np.unique(phase):
        rows = phase == p
        at = addresses[rows]
        lo = int(at.min())
        view = np.lib.stride_tricks.as_strided(ddr[lo:], ((int(at.max()) - lo) // pitch + 1, width), (pitch, 1))
        yield rows, view, (at - lo) // pitch


def _rows(ddr, addresses, pitch: int, width: int) -> np.ndarray:
    """The rows of `width` bytes at `addresses` (a copy)."""
    out = np.empty((len(addresses), width), np.uint8)
    for rows, view, i in _on_grids(ddr, addresses, pitch, width):
        out[rows] = view[i]
    return out


def run_rows(cfg, mem: np.ndarray, ddr: np.ndarray, commands: list[dict]) -> bool:
    """VECTOR commands of one row op (ROW_OPS), one parameter memory, as one NumPy pass: every input row
    read, then every output row written, as the commands one after another do when no command writes a
    byte a later one reads and no two write the same byte (else False: nothing done, run them in turn);
    False also when a row falls outside DDR."""
    d0 = commands[0]
    op, _, _, pitch, row_bytes = isa.vector_geometry(cfg, d0)
    dim = d0["vec_dim"]
    counts = np.array([d["vec_rows"] for d in commands], np.int64)
    src = _row_addresses(np.array([d["dram_addr"] for d in commands], np.int64), counts, pitch)
    out = _row_addresses(np.array([d["vec_out_addr"] for d in commands], np.int64), counts, pitch)
    reads = [src]
    if op == "ADD":
        aux = np.maximum(np.array([d["vec_aux"] for d in commands], np.int64), 1)
        reads.append(_row_addresses(np.array([d["vec_b_addr"] for d in commands], np.int64), counts, pitch, aux))
    for a, w in [(r, dim) for r in reads] + [(out, row_bytes)]:
        if a.size and (a.min() < 0 or a.max() + w > len(ddr)):
            return False
    if np.any(np.diff(np.sort(out)) < row_bytes) or any(_overlap(out, row_bytes, r, dim) for r in reads):
        return False
    x = _rows(ddr, src, pitch, dim).view(np.int8)
    b = _rows(ddr, reads[1], pitch, dim).view(np.int8) if op == "ADD" else None
    y = np.zeros((len(out), row_bytes), np.uint8)           # the rows' padding to whole beats: zero
    y[:, :dim] = compute(cfg, op, mem, x, b).view(np.uint8)
    for rows, view, i in _on_grids(ddr, out, pitch, row_bytes):
        view[i] = y[rows]
    return True
