"""The sim backend: a bit-exact functional model of the overlay with a cycle model.

`SimOverlay` has the overlay's registers (hw.isa.REGISTERS) and a numpy DDR; START
executes the descriptor list exactly as the hardware does (same DMA layouts, same
arithmetic: golden_model.intops) and estimates the cycles the RTL would take from
the units' occupancy and the descriptors' wait counts. A descriptor whose waits can
never be met leaves it BUSY forever, like the hardware (the driver's time-out case).
"""
from __future__ import annotations

import numpy as np

from golden_model.intops import requantize, saturate_int32
from hw import isa
from hw.limits import DW_ROW_SLOTS, im2col_row_beats

# Latencies of the RTL (cycles), measured against the Verilator runs (see tests/test_overlay.py).
FETCH_CYCLES = 4          # a fetch AR -> descriptor in the FIFO and the next fetch AR (plus its beats)
FETCH_AFTER_LOAD = 1      # a fetch queued behind a LOAD: its first beat after the LOAD is done (plus its beats)
READ_LATENCY = 4          # AR handshake to first R beat
STORE_LATENCY = 5         # row to B response, per store descriptor
STORE_START = {False: 9,  # dispatch to the first int8 row in the W FIFO (accumulator read, 3 stages, requantiser, FIFO)
               True: 5}   # int32 rows skip the requantisers
START_CYCLES = 3
LOAD_PIPELINE = 5         # LOAD: dispatch to done beyond its bursts and beats (hw/overlay.py's load unit)
IM2COL_CYCLES = 4         # command start, last entry written, done
IM2COL_AR_PERIOD = 1      # IM2COL: cycles per row by which its bursts run ahead of a fetch (fitted to the RTL)
IM2COL_FIRST_R = 2        # IM2COL: dispatch to the end of its first row's beats, less one row period
DW_START = 3              # DEPTHWISE: command accepted to first AR
DW_DRAIN = 17             # last pixel issued to last B response: window, MACs, sums, bias, requantiser, write


def top_start(started: list[int], q_top: int, rows_in: int, rows: int) -> int:
    """When the depthwise unit's window top first reaches global input row >= q_top (0: from the start)."""
    if q_top <= 0:
        return 0
    g, r = divmod(q_top, rows_in)
    idx = g * rows + min(r, rows)        # first output row whose window top is >= q_top
    return started[idx] if idx < len(started) else 0


class SimOverlay:
    def __init__(self, cfg, ddr_bytes: int = 1 << 24):
        self.cfg = cfg
        self.ddr = np.zeros(ddr_bytes, np.uint8)
        self.regs = {r.name: 0 for r in isa.REGISTERS}
        self.regs["CONFIG"] = cfg.rows | cfg.cols << 8 | (cfg.axi_data_bits // 8) << 16 | isa.ISA_VERSION << 24
        self._soft_reset()

    def _soft_reset(self):
        cfg = self.cfg
        self.a = np.zeros((cfg.a_depth, cfg.rows), np.int8)
        self.b = np.zeros((cfg.b_depth, cfg.cols), np.int8)
        self.params = np.zeros((cfg.param_depth, cfg.cols, 3), np.int64)
        self.acc = np.zeros((cfg.acc_depth, cfg.cols), np.int64)
        self.attn = None
        self.dw_coef = np.zeros(cfg.dw_channels * isa.DW_COEF_BYTES, np.uint8)
        if "attention" in cfg.engines:
            from sw.backends.sim_attention import AttentionModel
            self.attn = AttentionModel(cfg)
        for name in ("STATUS", "ERROR", "DESC_DONE", "CYCLES", "LOADS_DONE", "COMPUTES_DONE",
                     "STORES_DONE", "ERROR_DESC", "ATTENTIONS_DONE"):
            self.regs[name] = 0

    # ---------------------------------------------------------------- register interface
    def read_reg(self, offset: int) -> int:
        for r in isa.REGISTERS:
            if r.offset == offset:
                value = self.regs[r.name]
                if r.name == "STATUS":
                    value |= isa.STATUS_ERROR if self.regs["ERROR"] else 0
                return value & 0xFFFFFFFF
        return 0

    def write_reg(self, offset: int, value: int) -> None:
        reg = isa.REG
        if offset == reg["CONTROL"]:
            if value & isa.CONTROL_RESET:
                self._soft_reset()
            elif value & isa.CONTROL_START and not self.regs["STATUS"] & isa.STATUS_BUSY:
                self.regs["STATUS"] &= ~isa.STATUS_DONE
                self._run()
        elif offset == reg["STATUS"]:
            if value & isa.STATUS_DONE:
                self.regs["STATUS"] &= ~isa.STATUS_DONE
        elif offset in (reg["IRQ_ENABLE"], reg["DESC_ADDR"], reg["DESC_COUNT"]):
            name = next(r.name for r in isa.REGISTERS if r.offset == offset)
            self.regs[name] = value & 0xFFFFFFFF

    @property
    def irq(self) -> bool:
        return bool(self.regs["IRQ_ENABLE"] & 1) and bool(self.regs["STATUS"] & isa.STATUS_DONE or self.regs["ERROR"])

    # ---------------------------------------------------------------- execution
    def _error(self, bit: int, index: int):
        if not self.regs["ERROR"]:
            self.regs["ERROR_DESC"] = index
        self.regs["ERROR"] |= bit
        self.regs["STATUS"] &= ~isa.STATUS_BUSY

    def _ddr(self, addr: int, size: int) -> np.ndarray | None:
        if addr < 0 or addr + size > len(self.ddr):
            return None
        return self.ddr[addr:addr + size]

    def _run(self):
        cfg = self.cfg
        R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
        self.regs["STATUS"] = isa.STATUS_BUSY
        for name in ("DESC_DONE", "LOADS_DONE", "COMPUTES_DONE", "STORES_DONE", "ATTENTIONS_DONE"):
            self.regs[name] = 0
        base, count = self.regs["DESC_ADDR"], self.regs["DESC_COUNT"]
        done = {"LOAD": [], "COMPUTE": [], "STORE": [], "ATTENTION": []}      # completion times, in order
        unit_free = {"LOAD": 0, "STORE": 0}
        if self.attn is not None:
            self.attn.reset_timing()
        t_dispatch = START_CYCLES
        fetched = []                                          # time each descriptor reaches the FIFO
        fetched_dispatch = []                                 # time each descriptor left the FIFO
        r_channel = []                                        # (dispatch, done) of the LOADs, in order
        c_last_issue = -10 ** 9                               # engine: last step issue of previous compute
        gap = isa.array_tile_gap(R)                         # last-step to last-step, as the engine allows
        for i in range(count):
            raw = self._ddr(base + i * isa.DESCRIPTOR_BYTES, isa.DESCRIPTOR_BYTES)
            if raw is None:
                return self._error(isa.ERROR_AXI_READ, i)
            d = isa.unpack_descriptor(raw)
            # fetch: one descriptor at a time, up to DESC_FIFO_DEPTH ahead of the dispatcher
            prev_fetch = fetched[-1] if fetched else START_CYCLES
            fifo_space = fetched_dispatch[i - isa.DESC_FIFO_DEPTH] if i >= isa.DESC_FIFO_DEPTH else 0
            s = max(prev_fetch, fifo_space)
            arrive = s + FETCH_CYCLES
            # The DDR returns reads in order: a fetch issued while a LOAD's bursts stream waits for
            # the beats requested before it (r_done(s)).
            for t_load, r_done in reversed(r_channel):
                if t_load < s:
                    arrive = max(arrive, r_done(s) + FETCH_AFTER_LOAD)
                    break
            fetched.append(arrive + isa.DESCRIPTOR_BYTES // DB)
            t = max(t_dispatch, fetched[i])
            waits = {"LOAD": d["wait_load"], "COMPUTE": d["wait_compute"], "STORE": d["wait_store"],
                     "ATTENTION": d["wait_attention"]}
            for unit, n in waits.items():
                if n > len(done[unit]):
                    # Only descriptors already dispatched can complete: the hardware waits forever.
                    self.regs["DESC_DONE"] = i
                    return     # stays BUSY
                if n:
                    t = max(t, done[unit][n - 1] + 1)
            op = d["opcode"]
            if op == isa.OPCODES["LOAD"]:
                target = next((k for k, v in isa.TARGETS.items() if v == d["target"]), None)
                if target is None or not isa.has_target(cfg, target):
                    return self._error(isa.ERROR_BAD_OPCODE, i)
                if target == "IM2COL":
                    shape = self._im2col(d)
                    if shape is None:
                        return self._error(isa.ERROR_AXI_READ, i + 1)
                    rows, period, k = shape
                    t = max(t, unit_free["LOAD"])
                    finish = t + READ_LATENCY + rows * period + k + IM2COL_CYCLES
                    # Row bursts are requested ahead of the data (nothing limits them): a fetch queues
                    # behind the rows requested before it, whose beats arrive one row per period.
                    r_channel.append((t, lambda s, t=t, rows=rows, period=period: t + IM2COL_FIRST_R + period * min(
                        rows, max(0, s - t) // IM2COL_AR_PERIOD + 1)))
                    unit_free["LOAD"] = finish
                    done["LOAD"].append(finish)
                    fetched_dispatch.append(t)
                    t_dispatch = t + 1
                    self.regs["DESC_DONE"] = i + 1
                    continue
                eb = isa.entry_bytes(cfg, target)
                n = d["count"]
                beats = n * eb // DB if eb >= DB else -(-n // (DB // eb))
                src = self._ddr(d["dram_addr"], beats * DB)
                if src is None:
                    return self._error(isa.ERROR_AXI_READ, i + 1)     # reported after dispatch
                self._load(target, d["sp_addr"], n, src[:n * eb])
                t = max(t, unit_free["LOAD"])
                # One cycle per beat, or per entry slot of a beat (the last beat's unused slots too);
                # LOAD_PIPELINE: the burst sized a cycle ahead, the beat register, the registered write.
                cycles = beats if eb >= DB else beats * (DB // eb)
                bursts = -(-beats // 256)
                finish = t + READ_LATENCY * bursts + cycles + LOAD_PIPELINE
                r_channel.append((t, lambda s, done=finish - 2: done))   # its last R beat: before the beat and write registers
                unit_free["LOAD"] = finish
                done["LOAD"].append(finish)
            elif op == isa.OPCODES["COMPUTE"]:
                k = d["k_last"] + 1
                t = max(t, c_last_issue)          # the engine takes a command at its predecessor's last step
                for tile in range(max(1, d["count"])):      # tiles back to back (COMPUTE.count)
                    self._compute(d["sp_addr"], d["b_base"] + tile * k, k, d["acc_base"] + tile * R, d["accumulate"])
                    start = max(t, c_last_issue) + 1
                    c_last_issue = max(start + k - 1, c_last_issue + gap)
                done["COMPUTE"].append(c_last_issue + R + C + R + isa.ARRAY_EXTRA_LATENCY)
            elif op == isa.OPCODES["STORE"]:
                rows, tiles = d["count"], d["tiles_last"] + 1
                eb = 4 if d["out_int32"] else 1
                row_bytes = C * eb
                for tile in range(tiles):
                    if not self._store(d, tile, rows, row_bytes):
                        return self._error(isa.ERROR_AXI_WRITE, i + 1)
                t = max(t, unit_free["STORE"])
                finish = t + STORE_START[bool(d["out_int32"])] + tiles * rows * (row_bytes // DB) + STORE_LATENCY
                unit_free["STORE"] = finish
                done["STORE"].append(finish)
            elif op == isa.OPCODES["DEPTHWISE"] and isa.has_opcode(cfg, "DEPTHWISE"):
                cycles = self._depthwise(d)
                if cycles is None:
                    return self._error(isa.ERROR_AXI_READ, i + 1)
                t = max(t, unit_free["LOAD"], unit_free["STORE"])     # after loads (same slot) and stores
                finish = t + cycles
                unit_free["LOAD"] = finish
                done["LOAD"].append(finish)
            elif op == isa.OPCODES["ATTENTION"] and self.attn is not None:
                # The engine takes a STEP while the previous ones still run (sw.backends.sim_attention).
                t, finish = self.attn.schedule(d, t)
                self.attn.run(d, self.acc)
                done["ATTENTION"].append(finish)
            elif op == isa.OPCODES["SYNC"]:
                t = max([t] + [v[-1] + 1 for v in done.values() if v])
            else:
                return self._error(isa.ERROR_BAD_OPCODE, i)
            fetched_dispatch.append(t)
            t_dispatch = t + 1
            self.regs["DESC_DONE"] = i + 1
        end = max([t_dispatch] + [v[-1] + 1 for v in done.values() if v])
        self.regs["LOADS_DONE"], self.regs["COMPUTES_DONE"], self.regs["STORES_DONE"] = (
            len(done["LOAD"]), len(done["COMPUTE"]), len(done["STORE"]))
        self.regs["ATTENTIONS_DONE"] = len(done["ATTENTION"])
        self.regs["CYCLES"] = end
        self.regs["STATUS"] = isa.STATUS_DONE

    def _load(self, target, sp, n, raw):
        cfg = self.cfg
        if target == "A":
            rows = raw.view(np.int8).reshape(n, cfg.rows)
            idx = (sp + np.arange(n)) % cfg.a_depth
            self.a[idx] = rows
        elif target == "V":
            self.attn.load_v(sp, n, raw)
        elif target == "DW":
            DB = cfg.beat_bytes
            for e in range(n):
                at = (sp + e) % isa.scratchpad_depth(cfg, "DW") * DB
                self.dw_coef[at:at + DB] = raw[e * DB:(e + 1) * DB]
        elif target == "B":
            rows = raw.view(np.int8).reshape(n, cfg.cols)
            idx = (sp + np.arange(n)) % cfg.b_depth
            self.b[idx] = rows
        else:
            words = raw.view("<u4").reshape(n, cfg.cols, 4).astype(np.int64)
            p = np.stack([words[..., 0].astype(np.uint32).view(np.int32).astype(np.int64),
                          words[..., 1] & ((1 << 31) - 1), words[..., 2] & 63], axis=-1)
            idx = (sp + np.arange(n)) % cfg.param_depth
            self.params[idx] = p

    def _im2col(self, d) -> tuple[int, int, int] | None:
        """LOAD IM2COL (hw/conv/im2col.py): B entries gathered from row spans; returns (input rows,
        cycles per row, K), or None when a row lies outside DDR."""
        cfg = self.cfg
        C, DB = cfg.cols, cfg.beat_bytes
        k, s, off = d["kernel_last"] + 1, 1 << d["stride_log2"], d["col_offset"]
        nb = im2col_row_beats(cfg, k, s, off)
        pitch, plane = d["stride"], d["plane_rows"] * d["stride"]
        out_rows = d.get("out_rows_last", 0) + 1
        entries = []
        for t in range(out_rows):
            for ch in range(d["count"]):
                for ky in range(k):
                    row = self._ddr(d["dram_addr"] + ((t * s + ky) * pitch) + ch * plane, nb * DB)
                    if row is None:
                        return None
                    row = row.view(np.int8)
                    entries.extend(row[off + kx + s * np.arange(C)] for kx in range(k))
        idx = (d["sp_addr"] + np.arange(len(entries))) % cfg.b_depth
        self.b[idx] = np.array(entries, np.int8).reshape(-1, C)
        # Input rows stream at max(beats, K) cycles each (line buffer and emission overlap); the caller
        # adds the read latency, the last row's emission and the command's own cycles.
        return out_rows * d["count"] * k, max(nb, k), k

    def _depthwise(self, d) -> int | None:
        """DEPTHWISE (hw/conv/depthwise.py): dw_channels channels, DDR to DDR; returns its cycles (None: outside DDR)."""
        cfg = self.cfg
        k, chans, rows, width = d["dw_kernel_last"] + 1, d["dw_channels"], d["count"], d["dw_width"]
        pitch, plane, col0 = d["stride"], d["dw_plane_rows"] * d["stride"], d["dw_col0"]
        coef = self.dw_coef.reshape(cfg.dw_channels, isa.DW_COEF_BYTES)
        for ch in range(chans):
            src = self._ddr(d["dram_addr"] + ch * plane, (rows + k - 1) * pitch)
            if src is None:
                return None
            x = src.view(np.int8).reshape(rows + k - 1, pitch).astype(np.int64)
            taps = coef[ch, :isa.DW_TAP_BYTES].view(np.int8).reshape(8, 8).astype(np.int64)
            acc = np.zeros((rows, width), np.int64)
            for ky in range(k):
                for kx in range(k):
                    acc += taps[ky, kx] * x[ky:ky + rows, col0 + kx:col0 + kx + width]
            words = coef[ch, isa.DW_TAP_BYTES:].view("<u4")
            bias = int(words[0].astype(np.uint32).view(np.int32))
            t = saturate_int32(acc + bias)
            y = requantize(t, int(words[1]) & ((1 << 31) - 1), int(words[2]) & 63, relu=bool(d["relu"]))
            for r in range(rows):
                dst = self._ddr(d["dw_out_addr"] + ch * plane + r * pitch, width)
                if dst is None:
                    return None
                dst[:] = y[r].view(np.uint8)
        return self._depthwise_cycles(k, chans, rows, width, pitch // cfg.beat_bytes)

    def _depthwise_cycles(self, k, chans, rows, width, nb) -> int:
        """The unit row by row: input rows stream in at a beat per cycle (lanes x beats each), at most NS
        rows ahead of the window's top row; an output row of W pixels issues in W cycles once its K rows
        (and its group's coefficients) are in; then the pipeline drains."""
        L = self.cfg.dw_lanes
        groups = -(-chans // L)
        rows_in = rows + k - 1
        loaded_at: list[int] = []          # global input row q -> cycle its last beat is in
        started: list[int] = []            # output row (in issue order) -> cycle it starts
        load_t = DW_START + READ_LATENCY
        issue_t = 0
        for g in range(groups):
            for oy in range(rows):
                top = g * rows_in + oy
                while len(loaded_at) < top + k:
                    q = len(loaded_at)
                    gate = top_start(started, q - DW_ROW_SLOTS + 1, rows_in, rows)
                    lq = min(L, chans - (q // rows_in) * L)
                    load_t = max(load_t, gate) + lq * nb
                    loaded_at.append(load_t)
                start = max(issue_t, loaded_at[top + k - 1] + 1)
                started.append(start)
                issue_t = start + width
        return issue_t + DW_DRAIN

    def _compute(self, a_base, b_base, k, acc_base, accumulate):
        cfg = self.cfg
        a = self.a[(a_base + np.arange(k)) % cfg.a_depth].astype(np.float64)      # (k, R)
        b = self.b[(b_base + np.arange(k)) % cfg.b_depth].astype(np.float64)      # (k, C)
        prod = (a.T @ b).astype(np.int64)
        rows = (acc_base + np.arange(cfg.rows)) % cfg.acc_depth
        new = prod + (self.acc[rows] if accumulate else 0)
        self.acc[rows] = ((new + (1 << 31)) % (1 << 32)) - (1 << 31)              # int32 wrap, as the adder

    def _store(self, d, tile, rows, row_bytes) -> bool:
        """One tile of a STORE: `rows` accumulator rows from sp_addr + tile R to dram_addr + tile tile_stride."""
        cfg = self.cfg
        idx = (d["sp_addr"] + tile * cfg.rows + np.arange(rows)) % cfg.acc_depth
        p = self.params[d["param_addr"] % cfg.param_depth]
        if d.get("param_rows"):
            # Row r uses channel r of the entry (the array's output rows are channels).
            p = np.repeat(p[np.arange(rows) % cfg.cols][:, None, :], cfg.cols, axis=1)
        t = saturate_int32(self.acc[idx] + p[..., 0])
        if d["out_int32"]:
            y = np.maximum(t, 0) if d["relu"] else t
            data = y.astype("<i4").view(np.uint8).reshape(rows, row_bytes)
        else:
            data = requantize(t, p[..., 1], p[..., 2], relu=bool(d["relu"])).view(np.uint8).reshape(rows, row_bytes)
        # STORE.cols: only the first `cols` columns reach DDR (write strobes).
        keep = (d.get("cols") or cfg.cols) * (row_bytes // cfg.cols)
        for r in range(rows):
            dst = self._ddr(d["dram_addr"] + tile * d["tile_stride"] + r * d["stride"], row_bytes)
            if dst is None:
                return False
            dst[:keep] = data[r, :keep]
        return True
