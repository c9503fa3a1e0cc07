"""TransposeLoader: the GEMM load unit's transposing LOAD (hw.isa `transpose`, engine load_t).

Token rows in DDR (sw.runtime.layout.TokenRowLayout: what a linear's STORE and the vector engine
write) -> scratchpad entries of one channel of `rows` tokens (golden_model.intops.token_tiles):
entry e byte r = row r byte e. Per group of a beat's worth of entries (DB bytes of each row):

    AR   one single-beat read per row (row r of group g at addr + r pitch + g DB), one a cycle;
    R    beat r of the group into one half of the transpose buffer, skewed (below);
    emit one entry a cycle from the other half, rows past rows_last zero; registered write.

The buffer is skewed over byte-wide memories (LUTRAM), so that a beat written and an entry read each
touch every memory once: row r = q DB + p, byte b lives in memory (q, p ^ b) at address (half, b).
A beat goes in XOR-swizzled by p (memory k takes byte k ^ p), an entry comes out of every memory at
one address (its byte e) and is swizzled back by e (row p from memory p ^ e): log2(DB) stages of
byte multiplexers each side instead of a flip-flop and a multiplexer per buffer bit.

The two halves let group g + 1 stream in while group g is written out, so a group costs max(rows,
DB) cycles (sw.backends.cycles models it). Reads are single beats: the AR channel carries one request
a cycle, as the R channel one beat; a burst per row would need a buffer of several beats per row.
"""
from amaranth import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from hw import isa


def xor_swizzle(items: list, sel) -> list:
    """items[k ^ sel] for every k (len(items) a power of two, sel that many values). Two bits of sel a
    stage, each output a 4-input multiplexer: yosys maps it to fewer LUTs than a stage a bit (kv260's
    unit 1,630 against 1,760)."""
    for i in range(0, len(sel), 2):
        bits = sel[i:i + 2]
        items = [Array(items[k ^ (j << i)] for j in range(1 << len(bits)))[bits] for k in range(len(items))]
    return items


COUNT_BITS, ROWS_BITS = isa.FIELDS["count"][1], isa.FIELDS["t_rows_last"][1]


class TransposeCommand(data.Struct):
    addr: unsigned(32)                                        # row 0, beat aligned
    pitch: unsigned(32)                                       # bytes between rows (beat multiple)
    count: unsigned(COUNT_BITS)                               # entries: bytes read of each row (>= 1)
    rows_last: unsigned(ROWS_BITS)                            # rows read - 1 (< max_rows)
    sp: unsigned(16)                                          # first scratchpad entry


class TransposeLoader(wiring.Component):
    """`max_rows`: the widest entry it fills, in bytes (R for A, C for B and V): the transpose buffer's rows."""

    def __init__(self, cfg, max_rows: int):
        self.cfg, self.max_rows = cfg, max_rows
        super().__init__({
            "cmd": In(stream.Signature(TransposeCommand)),
            "ar": Out(stream.Signature(data.StructLayout({"addr": unsigned(32), "len": unsigned(8)}))),
            "r": In(stream.Signature(cfg.axi_data_bits)),
            "wr": Out(stream.Signature(data.StructLayout({"addr": unsigned(16), "data": unsigned(8 * max_rows)}))),
            "done": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        DB, NR = self.cfg.beat_bytes, self.max_rows
        lg = exact_log2(DB)
        cmd = Signal(TransposeCommand)
        busy = Signal()
        groups = Signal(COUNT_BITS - lg + 1)                     # ceil(count / DB)
        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy)]
        p = self.cmd.payload

        # The buffer: memory (q, k) at address (half, b) holds byte b of row q DB + (k ^ b).
        blocks = -(-NR // DB)
        mems = [[Memory(shape=8, depth=2 * DB, init=[]) for k in range(DB)] for q in range(blocks)]
        for q, block in enumerate(mems):
            for k, mem in enumerate(block):
                m.submodules[f"t_q{q}_k{k}"] = mem
        a_group, r_group, e_group = (Signal.like(groups, name=n) for n in ("a_group", "r_group", "e_group"))
        a_row, r_row = Signal(ROWS_BITS), Signal(ROWS_BITS)
        a_addr, a_group_addr = Signal(32), Signal(32)
        r_half, e_half = Signal(), Signal()
        e_idx = Signal(lg)
        w_addr = Signal(16)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [busy.eq(1), cmd.eq(p), groups.eq((p.count + DB - 1) >> lg),
                         a_group.eq(0), r_group.eq(0), e_group.eq(0), a_row.eq(0), r_row.eq(0),
                         a_addr.eq(p.addr), a_group_addr.eq(p.addr), r_half.eq(0), e_half.eq(0), e_idx.eq(0),
                         w_addr.eq(p.sp)]

        # AR: a group's rows, while its half is free (the group two before it written out).
        m.d.comb += [self.ar.valid.eq(busy & (a_group != groups) & (a_group - e_group < 2)),
                     self.ar.payload.addr.eq(a_addr), self.ar.payload.len.eq(0)]
        with m.If(self.ar.valid & self.ar.ready):
            with m.If(a_row == cmd.rows_last):
                m.d.sync += [a_row.eq(0), a_group.eq(a_group + 1), a_group_addr.eq(a_group_addr + DB),
                             a_addr.eq(a_group_addr + DB)]
            with m.Else():
                m.d.sync += [a_row.eq(a_row + 1), a_addr.eq(a_addr + cmd.pitch)]

        # R: every beat requested has room (the AR gate), so R is always ready.
        m.d.comb += self.r.ready.eq(busy)
        r_p = r_row[:lg]
        beat = xor_swizzle([self.r.payload[8 * b:8 * (b + 1)] for b in range(DB)], r_p)
        for q, block in enumerate(mems):
            for k, mem in enumerate(block):
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(Cat(r_p ^ k, r_half)), wp.data.eq(beat[k]),
                             wp.en.eq(self.r.valid & busy & (r_row[lg:] == q))]
        with m.If(self.r.valid & busy):
            with m.If(r_row == cmd.rows_last):
                m.d.sync += [r_row.eq(0), r_half.eq(~r_half), r_group.eq(r_group + 1)]
            with m.Else():
                m.d.sync += r_row.eq(r_row + 1)

        # Emit: one entry a cycle from a group whose rows have all arrived.
        emit = Signal()
        last_in_group = Mux(e_group == groups - 1, (cmd.count - 1)[:lg], DB - 1)
        m.d.comb += emit.eq(busy & (r_group != e_group))
        entry = Signal(8 * NR)
        rows = []
        for block in mems:
            read = [mem.read_port(domain="comb") for mem in block]
            m.d.comb += [rp.addr.eq(Cat(e_idx, e_half)) for rp in read]
            rows += xor_swizzle([rp.data for rp in read], e_idx)          # row p from memory p ^ e
        for r in range(NR):                                               # row 0: always read
            m.d.comb += entry[8 * r:8 * (r + 1)].eq(Mux(cmd.rows_last >= r, rows[r], 0) if r else rows[r])
        w_valid, w_data = Signal(), Signal(8 * NR)
        m.d.sync += w_valid.eq(emit)
        m.d.comb += [self.wr.valid.eq(w_valid), self.wr.payload.addr.eq(w_addr), self.wr.payload.data.eq(w_data)]
        with m.If(w_valid):
            m.d.sync += w_addr.eq(w_addr + 1)
        with m.If(emit):
            m.d.sync += w_data.eq(entry)
            with m.If(e_idx == last_in_group):
                m.d.sync += [e_idx.eq(0), e_half.eq(~e_half), e_group.eq(e_group + 1)]
            with m.Else():
                m.d.sync += e_idx.eq(e_idx + 1)

        with m.If(busy & (e_group == groups) & ~w_valid):
            m.d.sync += busy.eq(0)
            m.d.comb += self.done.eq(1)
        return m
