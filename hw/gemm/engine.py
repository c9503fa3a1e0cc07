"""GemmEngine: scratchpads + systolic array + output stage, driven by two command streams.

      a_wr ─► [A scratchpad  a_depth x R int8] ─┐
      b_wr ─► [B scratchpad  b_depth x C int8] ─┴► GemmCompute ─► SystolicArray ─► drain
      p_wr ─► [param scratchpad  C x (bias, multiplier, shift)]                      │
                                                                                      ▼
   store cmd ─► GemmStore ◄── [accumulator scratchpad  acc_depth x C int32] ◄──────────┘
                   │  bias (saturating) ─► C x Requantizer (int8) | int32 + ReLU
                   │  (store_lut) ─► StoreTable: int8 y = table[y + 128] per lane  ◄── lut_wr
                   │  (store_add) ─► StoreAdd: sat8((y ma + x mb + rnd(s)) >> s), x the residual row
                   │               read with the accumulator row from [RES  acc_depth x C int8] ◄── res_wr
                   ▼
                  out (C lanes of int32; int8 results sign-extended)

Every scratchpad has its own write port and the compute and store units their own
read ports, so loads, compute and stores all overlap: the host double-buffers by
choosing addresses (load tile t+1 into one half while tile t is read from the other).
Ordering between units (data loaded before it is computed on, results drained before
they are stored) is the command processor's job (hw/overlay.py); the engine does
not check it. `compute_done` pulses when a compute command's results are in the
accumulator scratchpad.
"""
from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from golden_model.intops import ACC_BITS, MULT_BITS, OUT_BITS, SHIFT_BITS
from golden_model.intvec import ADD_MULT_BITS
from hw import isa
from hw.gemm.array import ACC, INT8, SystolicArray, delay_line
from hw.requant import Requantizer


class ChannelParams(data.Struct):
    """Per output channel: int32 bias, requantisation multiplier and shift."""
    bias: signed(ACC_BITS)
    multiplier: unsigned(MULT_BITS)
    shift: unsigned(SHIFT_BITS)


class AddParams(data.Struct):
    """The fused residual add's parameters (store_add): per PARAM entry, from its channel 0 (hw.isa.pack_params'
    add word and shift bits; golden_model.intvec.AddParams is one per tensor)."""
    a: unsigned(ADD_MULT_BITS)             # multiplies the requantised result y
    b: unsigned(ADD_MULT_BITS)             # multiplies the residual x
    s: unsigned(isa.ADD_SHIFT_WIDTH)


class Biased(data.Struct):
    """A bias-added accumulator before its int32 saturation: the 33-bit sum's low 32 bits, whether the sum
    is outside int32, and its sign (golden_model.intops.saturate_int32 is `saturate` of these)."""
    low: unsigned(ACC_BITS)
    over: unsigned(1)
    neg: unsigned(1)


def saturate(low, over, neg):
    """int32 saturation of a `Biased` sum's fields: the sum's own bits when in range, else the bound of its sign."""
    lo, hi = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
    return Mux(over, Mux(neg, lo, hi), low.as_signed())


def abits(depth: int) -> int:
    return max(1, ceil_log2(depth))


class EngineLayouts:
    """The engine's port layouts for one configuration (shared with the overlay and benches)."""

    def __init__(self, cfg):
        R, C = cfg.rows, cfg.cols
        self.a_write = data.StructLayout({"addr": unsigned(abits(cfg.a_depth)), "data": data.ArrayLayout(INT8, R)})
        self.b_write = data.StructLayout({"addr": unsigned(abits(cfg.b_depth)), "data": data.ArrayLayout(INT8, C)})
        #: A PARAM entry; on store_add overlays with the residual add's parameters (a memory of their own).
        self.p_write = data.StructLayout({"addr": unsigned(abits(cfg.param_depth)),
                                          "data": data.ArrayLayout(ChannelParams, C),
                                          **({"add": AddParams} if "store_add" in cfg.engines else {})})
        k_bits = abits(min(cfg.a_depth, cfg.b_depth))
        #: K = k_last + 1 consecutive entries from a_base and b_base (addresses wrap).
        self.compute = data.StructLayout({
            "a_base": unsigned(abits(cfg.a_depth)),
            "b_base": unsigned(abits(cfg.b_depth)),
            "k_last": unsigned(k_bits),
            "acc_base": unsigned(abits(cfg.acc_depth)),
            "accumulate": unsigned(1),     # add to the accumulator rows instead of overwriting
            "tiles_last": unsigned(8),     # more tiles: B from b_base + t K, accumulator rows from acc_base + t R
        })
        #: rows_last + 1 accumulator rows from acc_base, through channel params entry param_addr.
        self.store = data.StructLayout({
            "acc_base": unsigned(abits(cfg.acc_depth)),
            "rows_last": unsigned(abits(R)),
            "param_addr": unsigned(abits(cfg.param_depth)),
            "relu": unsigned(1),
            "out_int32": unsigned(1),
            "lut": unsigned(1),            # int8 results through the store table (store_lut)
            "add": unsigned(1),            # int8 results plus the residual rows (store_add)
            "param_rows": unsigned(1),     # row r uses channel r of the entry (convolutions)
            "tiles_last": unsigned(8),     # more tiles of rows_last + 1 rows, tile t from acc_base + t R
        })
        self.out = data.ArrayLayout(ACC, C)
        #: One AXI beat of the store table (hw.isa LOAD target LUT), written into every lane's copy.
        self.lut_depth = isa.LUT_BYTES // cfg.beat_bytes
        self.lut_write = data.StructLayout({"addr": unsigned(abits(self.lut_depth)), "data": unsigned(cfg.axi_data_bits)})
        #: A residual row (hw.isa LOAD target RES) at the accumulator row it is added to (store_add).
        self.res_write = data.StructLayout({"addr": unsigned(abits(cfg.acc_depth)), "data": data.ArrayLayout(INT8, C)})
        #: A whole accumulator row written by another engine (attention).
        self.acc_write = data.StructLayout({"addr": unsigned(abits(cfg.acc_depth)), "data": data.ArrayLayout(ACC, C)})


class GemmCompute(wiring.Component):
    """Streams A and B entries through the array and drains results into the accumulator scratchpad.

    Timing (the array never stalls; bubbles carry valid=0): the entry for step k is
    addressed at cycle t, enters the array at t+1. A command's last step, issued at
    t_L, leaves the last PE's `out` written by cycle t_L + R + C - 1 + X (X: the
    array's EXTRA_LATENCY); its R rows reach the accumulator scratchpad over the next
    R cycles (column 0 drains from t_L + R + X + 1, the array de-skews the columns).
    The next command's last step may issue isa.array_tile_gap(R) = 2R - 1 cycles after
    t_L, so up to ceil((2R + C + X) / (2R - 1)) finished tiles are in the drain at once.
    """

    def __init__(self, cfg, a_mem: Memory, b_mem: Memory, acc_mem: Memory):
        self.cfg = cfg
        self.layouts = EngineLayouts(cfg)
        # Ports are made here: a memory takes no new ports once elaborated.
        self._rd_a, self._rd_b = a_mem.read_port(), b_mem.read_port()
        self._acc_rd, self._acc_wr = acc_mem.read_port(), acc_mem.write_port()
        ports = {
            "cmd": In(stream.Signature(self.layouts.compute)),
            "done": Out(1),
            "busy": Out(1),
        }
        if "attention" in cfg.engines:
            # The attention engine's writes (normalised rows), taken when the drain is not writing.
            ports["ext_wr"] = In(stream.Signature(self.layouts.acc_write))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        R, C = self.cfg.rows, self.cfg.cols
        m.submodules.array = array = SystolicArray(R, C, packed=self.cfg.dsp_packing)
        rd_a, rd_b, acc_rd, acc_wr = self._rd_a, self._rd_b, self._acc_rd, self._acc_wr
        # Cycles after a last issue (since_last = 0 the cycle after it): column 0 of the array
        # starts draining at col0_drain, the de-skewed rows reach the accumulator side at
        # drain_start. The next last issue may come once since_last reaches gap - 1.
        col0_drain = R + SystolicArray.EXTRA_LATENCY
        drain_start = col0_drain + array.drain_latency
        gap = isa.array_tile_gap(R)

        cmd = Signal(self.layouts.compute)
        busy = Signal()
        k = Signal.like(cmd.k_last)
        since_last = Signal(range(gap + 1), init=gap)
        # k == cmd.k_last and since_last < gap - 1, kept as flip-flops (set from the next
        # values): `cmd.ready` feeds the dispatcher, so it is one gate from registers.
        is_last = Signal()
        too_soon = Signal()
        issue = Signal()
        m.d.comb += issue.eq(busy & ~(is_last & too_soon))

        # Issue: address this step's entries; data and flags meet at the array next cycle.
        m.d.comb += [rd_a.addr.eq(cmd.a_base + k), rd_b.addr.eq(cmd.b_base + k)]
        valid1, last1 = Signal(), Signal()
        m.d.sync += [valid1.eq(issue), last1.eq(issue & is_last)]
        m.d.comb += [array.a.eq(rd_a.data), array.b.eq(rd_b.data),
                     array.valid.eq(valid1), array.last.eq(last1)]

        with m.If(since_last < gap):
            m.d.sync += [since_last.eq(since_last + 1), too_soon.eq(since_last + 2 < gap)]
        # The finished tile's accumulator rows travel with it to the drain (tiles overlap there);
        # `final`: the command's last tile (its drain completes the command).
        finished = Signal(data.StructLayout({"valid": 1, "final": 1, "acc_base": len(cmd.acc_base), "accumulate": 1}))
        more_tiles = cmd.tiles_last != 0
        m.d.sync += finished.valid.eq(issue & is_last)
        with m.If(issue):
            m.d.sync += [k.eq(k + 1), is_last.eq(k + 1 == cmd.k_last)]
            with m.If(is_last):
                m.d.sync += [busy.eq(more_tiles), since_last.eq(0), too_soon.eq(gap > 1), finished.final.eq(~more_tiles),
                             finished.acc_base.eq(cmd.acc_base), finished.accumulate.eq(cmd.accumulate)]
                with m.If(more_tiles):
                    # The next tile: B entries after this one's, the next R accumulator rows.
                    m.d.sync += [k.eq(0), is_last.eq(cmd.k_last == 0), cmd.tiles_last.eq(cmd.tiles_last - 1),
                                 cmd.b_base.eq(cmd.b_base + cmd.k_last + 1), cmd.acc_base.eq(cmd.acc_base + R)]
        # Take the next command the cycle the current one issues its last step.
        m.d.comb += self.cmd.ready.eq(~busy | (issue & is_last & ~more_tiles))
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [cmd.eq(self.cmd.payload), k.eq(0), busy.eq(1), is_last.eq(self.cmd.payload.k_last == 0)]

        # Drain: R cycles from column 0's start (shift), and R cycles of de-skewed rows (the
        # bottom row is row R-1-d at drain cycle d): the old row for accumulate is read a cycle
        # ahead (`to_read`, the same rows one cycle earlier) into flip-flops that reset to zero
        # without accumulate (their own reset, where a gate per bit stood), and the sum of the
        # drained row and those is written the cycle after the drain cycle.
        m.d.comb += array.shift.eq(self._window(m, delay_line(m, finished.valid, col0_drain, "col0_go"), "col0")[0])
        to_read = delay_line(m, finished, drain_start - 1, "drain_go")
        to_drain = Signal.like(finished, name="drain_go")
        m.d.sync += to_drain.eq(to_read)
        _, r_d = self._window(m, to_read.valid, "read")
        read_tile = Signal.like(finished)
        with m.If(to_read.valid):
            m.d.sync += read_tile.eq(to_read)
        read_base = Mux(to_read.valid, to_read.acc_base, read_tile.acc_base)
        m.d.comb += acc_rd.addr.eq(read_base + (R - 1) - r_d)
        draining, d = self._window(m, to_drain.valid, "drain")
        drain_tile = Signal.like(finished)
        with m.If(to_drain.valid):
            m.d.sync += drain_tile.eq(to_drain)
        drain_base = Mux(to_drain.valid, to_drain.acc_base, drain_tile.acc_base)
        drain_accum = Mux(to_drain.valid, to_drain.accumulate, drain_tile.accumulate)
        row_addr = Signal.like(cmd.acc_base)
        m.d.comb += row_addr.eq(drain_base + (R - 1) - d)
        drain_final = Mux(to_drain.valid, to_drain.final, drain_tile.final)
        w_valid, w_last, w_final = Signal(), Signal(), Signal()
        w_addr = Signal.like(cmd.acc_base)
        w_data = Signal(data.ArrayLayout(ACC, C))
        w_old = Signal(data.ArrayLayout(ACC, C))        # the old row, zero without accumulate
        m.d.sync += [w_valid.eq(draining), w_last.eq(draining & (d == R - 1)), w_final.eq(drain_final),
                     w_addr.eq(row_addr), w_data.eq(array.out)]
        with m.If(~drain_accum):
            m.d.sync += w_old.eq(0)
        with m.Else():
            m.d.sync += w_old.eq(acc_rd.data)
        m.d.comb += [acc_wr.en.eq(w_valid), acc_wr.addr.eq(w_addr), self.done.eq(w_last & w_final)]
        for j in range(C):
            m.d.comb += acc_wr.data[j].eq(w_data[j] + w_old[j])
        if "attention" in self.cfg.engines:
            ext = self.ext_wr
            m.d.comb += ext.ready.eq(~w_valid)
            with m.If(ext.valid & ~w_valid):
                m.d.comb += [acc_wr.en.eq(1), acc_wr.addr.eq(ext.payload.addr)]
                for j in range(C):
                    m.d.comb += acc_wr.data[j].eq(ext.payload.data[j])
        # Tiles between their last issue and their last accumulator write.
        in_flight = Signal(range(drain_start // gap + 3))
        with m.If(finished.valid & ~w_last):
            m.d.sync += in_flight.eq(in_flight + 1)
        with m.Elif(w_last & ~finished.valid):
            m.d.sync += in_flight.eq(in_flight - 1)
        m.d.comb += self.busy.eq(busy | finished.valid | (in_flight != 0))
        return m

    def _window(self, m, go, name):
        """R cycles from `go` (which starts it): (active, row count d = 0 .. R-1)."""
        R = self.cfg.rows
        d_next = Signal(range(R + 1), name=f"{name}_next")      # 0: idle
        active = Signal(name=f"{name}_active")
        d = Signal(range(R), name=f"{name}_d")
        m.d.comb += [active.eq(go | (d_next != 0)), d.eq(Mux(go, 0, d_next))]
        with m.If(active):
            m.d.sync += d_next.eq(Mux(d + 1 == R, 0, d + 1))
        return active, d


class GemmStore(wiring.Component):
    """Reads accumulator rows, adds bias (saturating), requantises (or not), emits rows.

    cfg.requant_lanes requantisers (one AXI beat of int8) take a row in C / requant_lanes cycles:
    the store writes an int8 row in as many beats, so fewer lanes cost no time.

    A command is tiles_last + 1 tiles of rows_last + 1 rows, tile t from accumulator row
    acc_base + t R (row r of a tile uses channel r of the entry with param_rows).
    One command at a time: a new command starts when the previous one's rows have all
    left, so int8 and int32 results never overtake each other.
    """

    def __init__(self, cfg, acc_mem: Memory, p_mem: Memory, lut_mems: list[Memory] | None = None,
                 res_mem: Memory | None = None, add_mem: Memory | None = None):
        self.cfg = cfg
        self.layouts = EngineLayouts(cfg)
        self._rd, self._p_rd = acc_mem.read_port(), p_mem.read_port()
        # The residual rows (store_add): read with the accumulator rows, at the same address.
        self._res_rd = res_mem.read_port() if res_mem is not None else None
        self._add_rd = add_mem.read_port() if add_mem is not None else None     # the add's parameters
        # The store table (store_lut): one copy per requantiser lane, one read port each.
        self._lut_rd = [mem.read_port() for mem in lut_mems] if lut_mems else None
        super().__init__({
            "cmd": In(stream.Signature(self.layouts.store)),
            "out": Out(stream.Signature(self.layouts.out)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.cfg.rows, self.cfg.cols
        rd, p_rd = self._rd, self._p_rd
        lanes = [Requantizer() for _ in range(self.cfg.requant_lanes)]
        for j, lane in enumerate(lanes):
            m.submodules[f"requant{j}"] = lane

        cmd = Signal(self.layouts.store)
        running = Signal()
        row = Signal(range(R + 1))          # within the tile: selects per-row parameters
        tile_base = Signal.like(cmd.acc_base)
        in_flight = Signal(range(32))       # rows inside the pipeline (at most its depth)
        # Stage 1: the accumulator row read (memory output register), with its valid.
        s1_valid = Signal()
        s1_ready = Signal()
        advance = ~s1_valid | s1_ready
        issue = running & advance
        m.d.comb += [rd.en.eq(advance), rd.addr.eq(tile_base + row)]
        res_rd = self._res_rd
        if res_rd is not None:
            m.d.comb += [res_rd.en.eq(advance), res_rd.addr.eq(tile_base + row)]
        with m.If(advance):
            m.d.sync += s1_valid.eq(issue)
        with m.If(issue):
            m.d.sync += row.eq(row + 1)
            with m.If(row == cmd.rows_last):
                m.d.sync += [row.eq(0), tile_base.eq(tile_base + R), cmd.tiles_last.eq(cmd.tiles_last - 1)]
                with m.If(cmd.tiles_last == 0):
                    m.d.sync += running.eq(0)

        # Parameters: read at command start, held (en=0) for the command. Each column's own channel
        # (`chan`) is copied into flip-flops the cycle after (the first row reaches stage 2 after that);
        # with param_rows the copy is zero (the flip-flops' own reset), and the row's channel travels
        # with the row instead (`prow`, zero without param_rows). So every user takes `chan | prow`:
        # the lanes' chunk pick takes the OR in its LUT, the bias adders take it where a multiplexer
        # and a second set of registers per column stood.
        accept = ~running & (in_flight == 0)
        m.d.comb += [self.cmd.ready.eq(accept), p_rd.addr.eq(self.cmd.payload.param_addr),
                     p_rd.en.eq(accept)]
        with m.If(self.cmd.valid & accept):
            m.d.sync += [cmd.eq(self.cmd.payload), running.eq(1), row.eq(0), tile_base.eq(self.cmd.payload.acc_base)]
        load_chan = Signal()
        m.d.sync += load_chan.eq(self.cmd.valid & accept)
        chan = Signal.like(p_rd.data)
        with m.If(load_chan & cmd.param_rows):
            m.d.sync += chan.eq(0)
        with m.Elif(load_chan):
            m.d.sync += chan.eq(p_rd.data)
        if self._add_rd is not None:            # read with the entry, held likewise for the command
            m.d.comb += [self._add_rd.addr.eq(self.cmd.payload.param_addr), self._add_rd.en.eq(accept)]

        # Two register stages before the requantisers, for timing: stage 2 holds the
        # raw accumulator row (the RAM's output goes straight to flip-flops), stage 3
        # the bias-added row (the adders get a cycle of their own).
        s2_valid, s3_valid = Signal(), Signal()
        s3_ready = Signal()
        advance3 = ~s3_valid | s3_ready
        advance2 = ~s2_valid | advance3
        m.d.comb += s1_ready.eq(advance2)
        row2 = Signal.like(rd.data)
        # Per-row parameters (param_rows: row r of a tile uses channel r), selected by stage 1's row.
        r1 = Signal(range(R), name="row_s1")
        with m.If(advance):
            m.d.sync += r1.eq(row)
        rows_params = min(R, C)
        p1 = p_rd.data[Mux(r1 < rows_params, r1, 0)] if rows_params > 1 else p_rd.data[0]
        prow2 = Signal(ChannelParams, name="row_params_s2")
        prow3 = Signal(ChannelParams, name="row_params_s3")
        # The residual row travels beside the accumulator row (stages 2 and 3).
        res2, res3 = ((Signal(data.ArrayLayout(INT8, C), name=f"res_s{i}") for i in (2, 3)) if res_rd is not None
                      else (None, None))
        if res_rd is not None:
            with m.If(advance2):
                m.d.sync += res2.eq(res_rd.data)
            with m.If(advance3):
                m.d.sync += res3.eq(res2)
        with m.If(advance2):
            m.d.sync += [s2_valid.eq(s1_valid), row2.eq(rd.data)]
        with m.If(advance2 & ~cmd.param_rows):
            m.d.sync += prow2.eq(0)
        with m.Elif(advance2):
            m.d.sync += prow2.eq(p1)
        with m.If(advance3):
            m.d.sync += [prow3.multiplier.eq(prow2.multiplier), prow3.shift.eq(prow2.shift)]
        # Stage 3 keeps each column's 33-bit sum as its low 32 bits, whether it overflows int32 and
        # its sign (`Biased`); the saturation is applied where the sum is read, in LUTs that pick
        # between sources there anyway (the lanes' chunk pick, the output's int32 / int8 choice).
        biased = []
        for j in range(C):
            s = Signal(signed(ACC_BITS + 1), name=f"sum{j}")
            t = Signal(Biased, name=f"biased{j}")
            m.d.comb += s.eq(row2[j] + (chan[j].bias | prow2.bias))
            with m.If(advance3):
                m.d.sync += [t.low.eq(s[:ACC_BITS]), t.over.eq(s[-1] != s[-2]), t.neg.eq(s[-1])]
            biased.append(t)
        with m.If(advance3):
            m.d.sync += s3_valid.eq(s2_valid)

        # int8: L requantiser lanes in lockstep (same valid and ready, so same state), one chunk of L
        # channels of the row per cycle (L = cfg.requant_lanes: one AXI beat of int8 per cycle, which
        # is as fast as the store writes the row). int32: one register stage with ReLU.
        L = len(lanes)
        chunks = C // L
        ch_in = Signal(range(chunks), name="chunk_in")      # the chunk stage 3 feeds the lanes
        ch_out = Signal(range(chunks), name="chunk_out")    # the chunk the lanes put out
        first_chunks = [Signal(signed(OUT_BITS), name=f"out8_{j}") for j in range(C - L)]
        o32_valid = Signal()
        o32 = [Signal(Biased, name=f"o32_{j}") for j in range(C)]     # as stage 3, saturated at the output
        o32_advance = ~o32_valid | self.out.ready
        take = lanes[0].i.ready & (ch_in == chunks - 1)      # stage 3's row has gone to the lanes whole
        # The lanes' chunk of int8 results as one handshake (the lanes move in lockstep), through the store
        # table where the overlay has one.
        q_valid, q_ready, q_data = lanes[0].o.valid, Signal(), [lane.o.payload for lane in lanes]
        for l, lane in enumerate(lanes):
            pick = (lambda xs: Array(xs[c * L + l] for c in range(chunks))[ch_in]) if chunks > 1 else (lambda xs: xs[l])
            m.d.comb += [lane.relu.eq(cmd.relu), lane.i.valid.eq(s3_valid & ~cmd.out_int32),
                         lane.i.payload.acc.eq(saturate(pick([b.low for b in biased]), pick([b.over for b in biased]),
                                                        pick([b.neg for b in biased]))),
                         lane.i.payload.multiplier.eq(prow3.multiplier | pick([chan[j].multiplier for j in range(C)])),
                         lane.i.payload.shift.eq(prow3.shift | pick([chan[j].shift for j in range(C)])),
                         lane.o.ready.eq(q_ready)]
        if self._lut_rd is not None:
            m.submodules.table = table = StoreTable(self.cfg, self._lut_rd)
            m.d.comb += [table.enable.eq(cmd.lut), table.i.valid.eq(q_valid), q_ready.eq(table.i.ready)]
            m.d.comb += [table.i.payload[l].eq(x) for l, x in enumerate(q_data)]
            q_valid, q_ready, q_data = table.o.valid, Signal(), [table.o.payload[l] for l in range(L)]
            m.d.comb += table.o.ready.eq(q_ready)
        if res_rd is not None:
            # The residual add: each chunk's residual bytes wait in a FIFO from when the chunk enters the
            # requantisers until it reaches the add (at most the lanes' and the table's stages of chunks
            # are in between: the FIFO never fills, so it needs no handshake of its own).
            m.submodules.add = adder = StoreAdd(L)
            side = data.ArrayLayout(signed(OUT_BITS), L)
            m.submodules.add_fifo = fifo = SyncFIFO(width=side.size, depth=Requantizer.LATENCY + 2)
            pushed, got = Signal(side), Signal(side)
            for l in range(L):
                pick = (lambda xs: Array(xs[c * L + l] for c in range(chunks))[ch_in]) if chunks > 1 else (lambda xs: xs[l])
                m.d.comb += pushed[l].eq(pick([res3[j] for j in range(C)]))
            m.d.comb += [fifo.w_data.eq(pushed), fifo.w_en.eq(lanes[0].i.valid & lanes[0].i.ready),
                         adder.enable.eq(cmd.add), adder.params.eq(self._add_rd.data),
                         adder.i.valid.eq(q_valid), q_ready.eq(adder.i.ready), fifo.r_en.eq(q_valid & adder.i.ready),
                         got.eq(fifo.r_data)]
            for l, y in enumerate(q_data):
                m.d.comb += [adder.i.payload[l].y.eq(y), adder.i.payload[l].x.eq(got[l])]
            q_valid, q_ready, q_data = adder.o.valid, Signal(), [adder.o.payload[l] for l in range(L)]
            m.d.comb += adder.o.ready.eq(q_ready)
        m.d.comb += q_ready.eq(self.out.ready | (ch_out != chunks - 1))
        with m.If(lanes[0].i.valid & lanes[0].i.ready):
            m.d.sync += ch_in.eq(Mux(ch_in == chunks - 1, 0, ch_in + 1))
        with m.If(q_valid & q_ready):
            m.d.sync += ch_out.eq(Mux(ch_out == chunks - 1, 0, ch_out + 1))
            for c in range(chunks - 1):
                with m.If(ch_out == c):
                    m.d.sync += [first_chunks[c * L + l].eq(x) for l, x in enumerate(q_data)]
        m.d.comb += s3_ready.eq(Mux(cmd.out_int32, o32_advance, take))
        with m.If(o32_advance):
            m.d.sync += o32_valid.eq(s3_valid & cmd.out_int32)
        for j in range(C):
            # ReLU as the flip-flops' own synchronous reset (FDRE R), over their enable.
            with m.If(o32_advance & cmd.relu & biased[j].neg):
                m.d.sync += o32[j].eq(0)
            with m.Elif(o32_advance):
                m.d.sync += o32[j].eq(biased[j])
        with m.If(cmd.out_int32):
            m.d.comb += self.out.valid.eq(o32_valid)
            for j in range(C):
                m.d.comb += self.out.payload[j].eq(saturate(o32[j].low, o32[j].over, o32[j].neg))
        with m.Else():
            # The row leaves with its last chunk, the earlier chunks from their registers.
            m.d.comb += self.out.valid.eq(q_valid & (ch_out == chunks - 1))
            for j in range(C):
                m.d.comb += self.out.payload[j].eq(first_chunks[j] if j < C - L else q_data[j - (C - L)])

        sent = self.out.valid & self.out.ready
        with m.If(issue & ~sent):
            m.d.sync += in_flight.eq(in_flight + 1)
        with m.Elif(~issue & sent):
            m.d.sync += in_flight.eq(in_flight - 1)
        m.d.comb += self.busy.eq(running | (in_flight != 0))
        return m


class StoreTable(wiring.Component):
    """The store table (engine store_lut): one register stage after the requantisers, each of the L lanes'
    int8 y replaced by table[y + 128] (golden_model.intvec.lut) while `enable` (STORE.lut), passed through
    otherwise. The table is AXI beats of 256 int8 (hw.isa LOAD target LUT); each lane reads its own copy
    (`read_ports`, one per lane): the beat at (y + 128) / beat bytes, then the byte within it. Held, like
    the requantisers, while the output is not taken."""

    def __init__(self, cfg, read_ports):
        self.cfg, self._rd = cfg, read_ports
        lanes = data.ArrayLayout(signed(OUT_BITS), len(read_ports))
        super().__init__({"i": In(stream.Signature(lanes)), "o": Out(stream.Signature(lanes)), "enable": In(1)})

    def elaborate(self, platform):
        m = Module()
        sel_bits = exact_log2(self.cfg.beat_bytes)
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        with m.If(advance):
            m.d.sync += self.o.valid.eq(self.i.valid)
        for l, rd in enumerate(self._rd):
            x = self.i.payload[l]
            index = Signal(OUT_BITS, name=f"index{l}")          # x + 128: x's byte with its sign bit flipped
            byte, raw = Signal(sel_bits, name=f"byte{l}"), Signal(signed(OUT_BITS), name=f"raw{l}")
            m.d.comb += [index.eq(x.as_unsigned() ^ 0x80), rd.addr.eq(index[sel_bits:]), rd.en.eq(advance)]
            with m.If(advance):
                m.d.sync += [byte.eq(index[:sel_bits]), raw.eq(x)]
            m.d.comb += self.o.payload[l].eq(Mux(self.enable, rd.data.word_select(byte, OUT_BITS).as_signed(), raw))
        return m


class StoreAdd(wiring.Component):
    """The residual add (engine store_add): two register stages after the requantisers (and the table),
    each of the L lanes' int8 y becoming sat8((y a + x b + rnd(s)) >> s) (golden_model.intvec.add, y as
    its a) while `enable` (STORE.add), passed through otherwise; x (the residual byte) comes with y,
    `params` (a, b, s) are the command's, held. Stage 1: the two 8 x 17 products and their sum (< 2^24);
    stage 2: rounding, the arithmetic shift, saturation. Held while the output is not taken."""

    LATENCY = 2          # = sw.backends.cycles.STORE_ADD_LATENCY

    def __init__(self, lanes: int):
        lane_in = data.StructLayout({"y": signed(OUT_BITS), "x": signed(OUT_BITS)})
        super().__init__({"i": In(stream.Signature(data.ArrayLayout(lane_in, lanes))),
                          "o": Out(stream.Signature(data.ArrayLayout(signed(OUT_BITS), lanes))),
                          "params": In(AddParams), "enable": In(1)})

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        valid = Signal(self.LATENCY)
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance), self.o.valid.eq(valid[-1])]
        with m.If(advance):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        lo, hi = -(1 << (OUT_BITS - 1)), (1 << (OUT_BITS - 1)) - 1
        p = self.params
        s = p.s
        rnd = Signal(32)                                               # rnd(s) = 2^(s - 1), 0 for s = 0
        m.d.comb += rnd.eq(Const(1, 33) << s >> 1)
        for l in range(len(self.o.payload)):
            y, x = self.i.payload[l].y, self.i.payload[l].x
            total = Signal(signed(2 * OUT_BITS + ADD_MULT_BITS), name=f"sum{l}")    # |y a + x b| < 2^24
            raw1, raw2 = Signal(signed(OUT_BITS), name=f"raw{l}_1"), Signal(signed(OUT_BITS), name=f"raw{l}_2")
            out = Signal(signed(OUT_BITS), name=f"added{l}")
            rounded = Signal(signed(32), name=f"rounded{l}")                        # + rnd(s) <= 2^30: int32
            shifted = Signal(signed(32), name=f"shifted{l}")
            m.d.comb += [rounded.eq(total + rnd), shifted.eq(rounded >> s)]
            with m.If(advance):
                m.d.sync += [total.eq(y * p.a + x * p.b), raw1.eq(y), raw2.eq(raw1),
                             out.eq(Mux(shifted > hi, hi, Mux(shifted < lo, lo, shifted)))]
            m.d.comb += self.o.payload[l].eq(Mux(self.enable, out, raw2))
        return m


def operand_memory(cfg, which: str) -> Memory:
    """The A (a_depth x R int8) or B (b_depth x C int8) scratchpad: one write port (its loads) and one read
    port (the compute unit), in UltraRAM with `scratch_uram` (UltraScale+: a URAM288 is 4,096 x 72 bits,
    so kv260's 4,096 x 128-bit A is 2 of them and its 2,048 x 256-bit B 4, where block RAM takes 15 and
    14.5 BRAM36 on yosys: tests/test_board_flows.py _map_memories), else where the tools choose."""
    lanes, depth = (cfg.rows, cfg.a_depth) if which == "A" else (cfg.cols, cfg.b_depth)
    attrs = {"ram_style": "ultra"} if cfg.scratch_uram else {}
    return Memory(shape=data.ArrayLayout(INT8, lanes), depth=depth, init=[], attrs=attrs)


class GemmEngine(wiring.Component):
    """The whole engine for one `hw.config.OverlayConfig`."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.layouts = L = EngineLayouts(cfg)
        ports = {
            "a_wr": In(stream.Signature(L.a_write)),
            "b_wr": In(stream.Signature(L.b_write)),
            "p_wr": In(stream.Signature(L.p_write)),
            "compute": In(stream.Signature(L.compute)),
            "store": In(stream.Signature(L.store)),
            "out": Out(stream.Signature(L.out)),
            "compute_done": Out(1),
            "compute_busy": Out(1),
            "store_busy": Out(1),
        }
        if "store_lut" in cfg.engines:
            ports["lut_wr"] = In(stream.Signature(L.lut_write))
        if "store_add" in cfg.engines:
            ports["res_wr"] = In(stream.Signature(L.res_write))
        if "attention" in cfg.engines:
            # The attention engine reads S rows and writes normalised rows (hw/attention/engine.py).
            ports |= {"attn_acc_rd_addr": In(abits(cfg.acc_depth)), "attn_acc_rd_data": Out(data.ArrayLayout(ACC, cfg.cols)),
                      "attn_acc_wr": In(stream.Signature(L.acc_write))}
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        m.submodules.a_mem = a_mem = operand_memory(cfg, "A")
        m.submodules.b_mem = b_mem = operand_memory(cfg, "B")
        m.submodules.acc_mem = acc_mem = Memory(shape=data.ArrayLayout(ACC, cfg.cols), depth=cfg.acc_depth, init=[])
        m.submodules.p_mem = p_mem = Memory(shape=data.ArrayLayout(ChannelParams, cfg.cols),
                                            depth=cfg.param_depth, init=[])
        writes = [(self.a_wr, a_mem), (self.b_wr, b_mem), (self.p_wr, p_mem)]
        res_mem = add_mem = None
        if "store_add" in cfg.engines:
            # The residual rows, mirroring the accumulator rows (acc_depth x C int8), and the add's
            # parameters per PARAM entry (written with it).
            m.submodules.res_mem = res_mem = Memory(shape=data.ArrayLayout(INT8, cfg.cols), depth=cfg.acc_depth,
                                                    init=[])
            writes.append((self.res_wr, res_mem))
            m.submodules.add_mem = add_mem = Memory(shape=AddParams, depth=cfg.param_depth, init=[])
            wp = add_mem.write_port()
            m.d.comb += [wp.addr.eq(self.p_wr.payload.addr), wp.data.eq(self.p_wr.payload.add),
                         wp.en.eq(self.p_wr.valid)]
        for port, mem in writes:
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(port.payload.addr), wp.data.eq(port.payload.data),
                         wp.en.eq(port.valid), port.ready.eq(1)]
        if "attention" in cfg.engines:
            attn_rd = acc_mem.read_port()
            m.d.comb += [attn_rd.addr.eq(self.attn_acc_rd_addr), self.attn_acc_rd_data.eq(attn_rd.data)]
        m.submodules.compute_unit = cu = GemmCompute(cfg, a_mem, b_mem, acc_mem)
        lut_mems = []
        if "store_lut" in cfg.engines:
            # A copy of the table per requantiser lane (a small LUTRAM each), all written by one LOAD LUT.
            m.d.comb += self.lut_wr.ready.eq(1)
            for l in range(cfg.requant_lanes):
                m.submodules[f"lut_mem{l}"] = mem = Memory(shape=unsigned(cfg.axi_data_bits),
                                                           depth=self.layouts.lut_depth, init=[])
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(self.lut_wr.payload.addr), wp.data.eq(self.lut_wr.payload.data),
                             wp.en.eq(self.lut_wr.valid)]
                lut_mems.append(mem)
        m.submodules.store_unit = su = GemmStore(cfg, acc_mem, p_mem, lut_mems, res_mem, add_mem)
        if "attention" in cfg.engines:
            wiring.connect(m, wiring.flipped(self.attn_acc_wr), cu.ext_wr)
        wiring.connect(m, wiring.flipped(self.compute), cu.cmd)
        wiring.connect(m, wiring.flipped(self.store), su.cmd)
        wiring.connect(m, su.out, wiring.flipped(self.out))
        m.d.comb += [self.compute_done.eq(cu.done), self.compute_busy.eq(cu.busy),
                     self.store_busy.eq(su.busy)]
        return m
