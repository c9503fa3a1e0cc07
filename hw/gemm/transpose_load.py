"""TransposeLoader: the GEMM load unit's transposing LOAD (hw.isa `transpose`, engine load_t).

Token rows in DDR (sw.runtime.layout.TokenRowLayout: what a linear's STORE and the vector engine
write) -> scratchpad entries of one channel of `rows` tokens (golden_model.intops.token_tiles):
entry e byte r = row r byte e. Per group of a beat's worth of entries (DB bytes of each row):

    AR   one single-beat read per row (row r of group g at addr + r pitch + g DB), one a cycle;
    R    beat r of the group into row r of one half of the transpose buffer (2 x rows x DB bytes);
    emit one entry a cycle from the other half: byte r = the low byte of row r, the rows then
         shifted down a byte (no byte multiplexer), rows past rows_last zero; registered write.

The two halves let group g + 1 stream in while group g is written out, so a group costs max(rows,
DB) cycles (sw.backends.cycles models it). Reads are single beats: the AR channel carries one request
a cycle, as the R channel one beat; a burst per row would need a buffer of several beats per row.
"""
from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from hw import isa


class TransposeCommand(data.Struct):
    addr: unsigned(32)                                        # row 0, beat aligned
    pitch: unsigned(32)                                       # bytes between rows (beat multiple)
    count: unsigned(isa.FIELDS["count"][1])                   # entries: bytes read of each row (>= 1)
    rows_last: unsigned(isa.FIELDS["t_rows_last"][1])         # rows read - 1 (< max_rows)
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
        DB, DW, NR = self.cfg.beat_bytes, self.cfg.axi_data_bits, self.max_rows
        lg = exact_log2(DB)
        cmd = Signal(TransposeCommand)
        busy = Signal()
        groups = Signal(16 - lg + 1)
        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy)]
        p = self.cmd.payload

        buf = [[Signal(DW, name=f"t{h}_row{r}") for r in range(NR)] for h in range(2)]
        a_group, r_group, e_group = (Signal.like(groups, name=n) for n in ("a_group", "r_group", "e_group"))
        a_row, r_row = Signal(8), Signal(8)
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
        with m.If(self.r.valid & busy):
            for h in range(2):
                for r in range(NR):
                    with m.If((r_half == h) & (r_row == r)):
                        m.d.sync += buf[h][r].eq(self.r.payload)
            with m.If(r_row == cmd.rows_last):
                m.d.sync += [r_row.eq(0), r_half.eq(~r_half), r_group.eq(r_group + 1)]
            with m.Else():
                m.d.sync += r_row.eq(r_row + 1)

        # Emit: one entry a cycle from a group whose rows have all arrived.
        emit = Signal()
        last_in_group = Mux(e_group == groups - 1, (cmd.count - 1)[:lg], DB - 1)
        m.d.comb += emit.eq(busy & (r_group != e_group))
        entry = Signal(8 * NR)
        for r in range(NR):
            low = Mux(e_half, buf[1][r][:8], buf[0][r][:8])
            m.d.comb += entry[8 * r:8 * (r + 1)].eq(Mux(cmd.rows_last >= r, low, 0) if r else low)   # row 0: always read
        w_valid, w_data = Signal(), Signal(8 * NR)
        m.d.sync += w_valid.eq(emit)
        m.d.comb += [self.wr.valid.eq(w_valid), self.wr.payload.addr.eq(w_addr), self.wr.payload.data.eq(w_data)]
        with m.If(w_valid):
            m.d.sync += w_addr.eq(w_addr + 1)
        with m.If(emit):
            m.d.sync += w_data.eq(entry)
            for h in range(2):
                with m.If(e_half == h):
                    m.d.sync += [row.eq(row[8:]) for row in buf[h]]
            with m.If(e_idx == last_in_group):
                m.d.sync += [e_idx.eq(0), e_half.eq(~e_half), e_group.eq(e_group + 1)]
            with m.Else():
                m.d.sync += e_idx.eq(e_idx + 1)

        with m.If(busy & (e_group == groups) & ~w_valid):
            m.d.sync += busy.eq(0)
            m.d.comb += self.done.eq(1)
        return m
