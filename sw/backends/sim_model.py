"""The sim backend: a bit-exact functional model of the overlay with a cycle model.

`SimOverlay` has the overlay's registers (hw.isa.REGISTERS) and a numpy DDR. START runs the
descriptor list in one of two modes, with the same cycles (sw.backends.cycles):

  checked  the interpreter: every descriptor executed as the hardware does (same DMA layouts,
           scratchpads, arithmetic: golden_model.intops), one at a time;
  fast     (the default) for a run the host announced with `expect` (a compiled program's op
           record, sw.backends.fast): the whole layer's result at once with NumPy, read from and
           written to the same DDR bytes; any other run is interpreted.

A descriptor whose waits can never be met leaves it BUSY forever, like the hardware (the
driver's time-out case).

Every DDR access of the interpreter goes through `_ddr` (the model's AXI master: engines reach DDR
only there), which counts the run's beats per channel and answers injected faults
(sw.backends.faults, `inject`) as the AXI slave would: the run stops with ERROR's bit and AXI_RESP,
or stays BUSY (a hang). A run a fault strikes is interpreted (also in fast mode).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from golden_model.intops import requantize, saturate_int32, token_tiles
from golden_model.intvec import AddParams, LutParams, add, lut
from golden_model.workers import one_blas_thread
from hw import isa
from hw.limits import im2col_row_beats
from sw.backends import cycles as CY
from sw.backends import faults as F
from sw.lru import BytesMemo

MODES = ("fast", "checked")


_REG_NAME = {r.offset: r.name for r in isa.REGISTERS}       # (register lookups per run: a dict, not a scan)


class SimOverlay:
    def __init__(self, cfg, ddr_bytes: int = 1 << 24, mode: str = "fast"):
        if mode not in MODES:
            raise ValueError(f"unknown sim mode {mode!r}; choose one of {', '.join(MODES)}")
        self.cfg, self.mode = cfg, mode
        self._expected: dict[tuple[int, int], object] = {}     # (DESC_ADDR, DESC_COUNT) -> fast job
        self.fast_runs = 0                                      # runs whose data the fast mode computed
        self.faults = F.FaultPlan()                             # injected AXI faults (sw.backends.faults)
        self._dry = False                                       # counting a run's beats: writes go nowhere
        self._resp = None                                       # the DMA's last error response: (ERROR bit, code)
        self._at = 0                                            # the descriptor the interpreter runs
        self.ddr = np.zeros(ddr_bytes, np.uint8)
        self._decoded = BytesMemo(1 << 27)                      # descriptor lists' fields (cycles.Fields)
        self.regs = {r.name: 0 for r in isa.REGISTERS}
        self.regs["CONFIG"] = isa.config_word(cfg)
        self._soft_reset()

    def _soft_reset(self):
        cfg = self.cfg
        self.a = np.zeros((cfg.a_depth, cfg.rows), np.int8)
        self.b = np.zeros((cfg.b_depth, cfg.cols), np.int8)
        # per channel: bias, multiplier, shift, then the fused add's a_mult, b_mult, shift (store_add)
        self.params = np.zeros((cfg.param_depth, cfg.cols, 6), np.int64)
        self.res = np.zeros((cfg.acc_depth, cfg.cols), np.int8)       # the store's residual rows (store_add)
        self.acc = np.zeros((cfg.acc_depth, cfg.cols), np.int64)
        self.attn = None
        self.dw_coef = np.zeros(cfg.dw_channels * isa.DW_COEF_BYTES, np.uint8)
        self.vec_mem = np.zeros(isa.VEC_PARAM_BYTES, np.uint8)       # the vector engine's parameter memory
        self.store_lut = np.zeros(isa.LUT_BYTES, np.uint8)           # the GEMM store's table (int8 bytes)
        if "attention" in cfg.engines:
            from sw.backends.sim_attention import AttentionModel
            self.attn = AttentionModel(cfg)
        for name in ("STATUS", "ERROR", "DESC_DONE", "CYCLES", "LOADS_DONE", "COMPUTES_DONE",
                     "STORES_DONE", "ERROR_DESC", "ATTENTIONS_DONE"):
            self.regs[name] = 0

    # ---------------------------------------------------------------- register interface
    def read_reg(self, offset: int) -> int:
        name = _REG_NAME.get(offset)
        if name is None:
            return 0
        value = self.regs[name]
        if name == "STATUS":
            value |= isa.STATUS_ERROR if self.regs["ERROR"] else 0
        return value & 0xFFFFFFFF

    def write_reg(self, offset: int, value: int) -> None:
        reg = isa.REG
        if offset == reg["CONTROL"]:
            if value & isa.CONTROL_RESET:
                self._soft_reset()
            elif value & isa.CONTROL_START and not self.regs["STATUS"] & isa.STATUS_BUSY:
                self.regs["STATUS"] &= ~isa.STATUS_DONE
                with one_blas_thread() if self._uses_blas() else contextlib.nullcontext():
                    self._run()
        elif offset == reg["STATUS"]:
            if value & isa.STATUS_DONE:
                self.regs["STATUS"] &= ~isa.STATUS_DONE
        elif offset in (reg["IRQ_ENABLE"], reg["DESC_ADDR"], reg["DESC_COUNT"]):
            self.regs[_REG_NAME[offset]] = value & 0xFFFFFFFF

    def _uses_blas(self) -> bool:
        """Whether the next START's run may multiply matrices (BLAS): an interpreted one (COMPUTE) or a fast
        job that does; not a run only timed, nor a fast job without GEMMs (the switch costs more there)."""
        key = (self.regs["DESC_ADDR"], self.regs["DESC_COUNT"])
        if self.mode != "fast" or key not in self._expected:
            return True
        job = self._expected[key]
        return job is not None and getattr(job, "blas", True)

    @property
    def irq(self) -> bool:
        return bool(self.regs["IRQ_ENABLE"] & 1) and bool(self.regs["STATUS"] & isa.STATUS_DONE or self.regs["ERROR"])

    # ---------------------------------------------------------------- execution
    def _error(self, bit: int, index: int, resp: str | None = None):
        if not self.regs["ERROR"]:
            self.regs["ERROR_DESC"] = index
        if resp and not self.regs["ERROR"] >> isa.ERROR_RESP_SHIFT:
            self.regs["ERROR"] |= isa.AXI_RESP[resp] << isa.ERROR_RESP_SHIFT
        self.regs["ERROR"] |= bit
        self.regs["STATUS"] &= ~isa.STATUS_BUSY

    def _ddr(self, addr: int, size: int, write: bool = False) -> np.ndarray | None:
        """The DMA: `size` bytes at `addr` to read (or to write into, `write`); None when the access
        gets an AXI error response (outside DDR: DECERR; an injected fault: its response)."""
        DB = self.cfg.beat_bytes
        units = -(-(addr % DB + size) // DB)                       # R or W beats
        channel = "write" if write else "read"
        try:
            self.faults.transfer(channel, units)
        except F.Strike as strike:
            if strike.resp is None:
                raise                                   # a hang: the run stops where it is
            self._resp = (F.CHANNEL_ERROR[channel], strike.resp)
            return None
        if addr < 0 or addr + size > len(self.ddr):
            self._resp = (F.CHANNEL_ERROR[channel], "DECERR")
            return None
        if write and self._dry:
            return np.empty(size, np.uint8)
        return self.ddr[addr:addr + size]

    def inject(self, fault: "F.Fault | None") -> None:
        """Arm an AXI fault for the next START(s) (None: disarm); sw.backends.faults."""
        self.faults.arm(fault)

    def expect(self, desc_addr: int, desc_count: int, job) -> None:
        """Announce a run: when START comes with this DESC_ADDR and DESC_COUNT, fast mode calls
        `job(ddr)` for its data (None: a run that only takes time, e.g. a later part of a program
        whose data the first part's job wrote) instead of interpreting the descriptors."""
        self._expected[(desc_addr, desc_count)] = job

    def _run(self):
        cfg = self.cfg
        self.regs["STATUS"] = isa.STATUS_BUSY
        for name in ("DESC_DONE", "LOADS_DONE", "COMPUTES_DONE", "STORES_DONE", "ATTENTIONS_DONE"):
            self.regs[name] = 0
        base, count = self.regs["DESC_ADDR"], self.regs["DESC_COUNT"]
        fetchable = min(count, max(0, (len(self.ddr) - base) // isa.DESCRIPTOR_BYTES))
        size = fetchable * isa.DESCRIPTOR_BYTES        # (a list run before, its bytes unchanged: decoded then)
        f = self._decoded.get(self.ddr, base, 1, size, size, "fields", CY.decode_descriptors)
        try:
            self._run_list(cfg, f, base, count, fetchable)
        finally:
            f.forget()                                 # (kept: its bytes and digest, not its columns)

    def _run_list(self, cfg, f, base, count, fetchable):
        key = (base, count)
        fault = self.faults.start()
        fetch_resp = "DECERR"                                # a fetch outside DDR
        if fault is not None:
            self._aim(fault, f, fetchable)
            if self.faults.target and self.faults.target[0] == "fetch":
                _, beat, fetch_resp = self.faults.target
                fetchable = min(fetchable, beat // self._fetch_beats)
                self.faults.target = None
                f = {k: v[:fetchable] for k, v in f.items()}
        fast = self.mode == "fast" and key in self._expected and fetchable == count and fault is None
        job = self._expected.pop(key, None)
        self._resp, self._at = None, 0
        try:
            out = CY.simulate(cfg, f, self.attn, None if fast else self._interpreter(f))
        except F.Strike:                                    # a read that never returns: stays BUSY
            self.regs["DESC_DONE"] = self._at + 1
            return
        if out.state == "done" and fetchable < count:       # the fetch of descriptor `fetchable` failed
            if fetch_resp is None:
                self.regs["DESC_DONE"] = fetchable
                return                                      # a fetch that never returns: stays BUSY
            out = CY.Outcome("error", fetchable, error_index=fetchable)
            self._resp = (isa.ERROR_DESC_FETCH, fetch_resp)
        self.regs["DESC_DONE"] = out.desc_done
        if out.state == "hang":
            return     # stays BUSY
        if out.state == "error":
            # An AXI error: the bit of the channel that answered it (the DMA's), whichever engine asked.
            bit, resp = (out.error_bit, None) if out.error_bit == isa.ERROR_BAD_OPCODE else self._resp
            return self._error(bit, out.error_index, resp)
        if fast and job is not None:
            job(self.ddr)
            self.fast_runs += 1
        self.regs["LOADS_DONE"], self.regs["COMPUTES_DONE"], self.regs["STORES_DONE"] = (
            out.counts["LOAD"], out.counts["COMPUTE"], out.counts["STORE"])
        self.regs["ATTENTIONS_DONE"] = out.counts["ATTENTION"]
        self.regs["CYCLES"] = out.cycles
        self.regs["STATUS"] = isa.STATUS_DONE

    @property
    def _fetch_beats(self) -> int:
        """AXI beats per descriptor fetch."""
        return max(1, isa.DESCRIPTOR_BYTES // self.cfg.beat_bytes)

    def _aim(self, fault, f, fetchable) -> None:
        """Choose where `fault` strikes this run: the channels' beats of a fault-free dry run (the model's
        state restored after it, its writes discarded), then FaultPlan.aim."""
        keep = {k: copy.deepcopy(v) for k, v in vars(self).items()
                if k not in ("ddr", "regs", "_expected", "faults", "cfg", "mode", "_decoded")}
        plan, self.faults = self.faults, F.FaultPlan()
        self._dry = True
        try:
            try:
                CY.simulate(self.cfg, f, self.attn, self._interpreter(f))
            except F.Strike:
                pass
            totals = dict(self.faults.counts, fetch=fetchable * self._fetch_beats)
        finally:
            self._dry, self.faults = False, plan
            vars(self).update(keep)
        plan.aim(fault, totals)

    def _interpreter(self, f):
        """The checked mode: execute(i, kind) for the cycle model, descriptor i's data as it dispatches
        (each opcode's or LOAD target's executor: sw.engines)."""
        from sw.engines import commands
        columns = {k: v.tolist() for k, v in f.items()}
        opcodes = {v: k for k, v in isa.OPCODES.items()}
        targets = {v: k for k, v in isa.TARGETS.items()}
        table = commands()

        def execute(i, kind):
            self._at = i
            d = {k: v[i] for k, v in columns.items()}
            name = opcodes[d["opcode"]]
            if name == "LOAD":
                name = targets[d["target"]]
            return table[name].execute(self, d, i)
        return execute

    # Executors (sw.engines.Command.execute): descriptor i's data; None, or (error bit, index) to stop.
    def load_entries(self, d, i):
        """LOAD of whole entries into the scratchpad `target`."""
        target = next(k for k, v in isa.TARGETS.items() if v == d["target"])
        DB = self.cfg.beat_bytes
        eb = isa.entry_bytes(self.cfg, target)
        n = d["count"]
        if d.get("transpose"):
            raw = self._rows_transposed(d, n, eb)
            if raw is None:
                return isa.ERROR_AXI_READ, i + 1
            self._load(target, d["sp_addr"], n, raw)
            return None
        beats = n * eb // DB if eb >= DB else -(-n // (DB // eb))
        src = self._ddr(d["dram_addr"], beats * DB)
        if src is None:
            return isa.ERROR_AXI_READ, i + 1     # reported after dispatch
        self._load(target, d["sp_addr"], n, src[:n * eb])
        return None

    def _rows_transposed(self, d, n, eb) -> np.ndarray | None:
        """A transposing LOAD's entries as DDR bytes (n entries of eb): t_rows_last + 1 token rows of n bytes
        (whole beats each, in the hardware's order: a beat of every row, then the next beat), transposed
        (golden_model.intops.token_tiles); None on an AXI error response."""
        DB, rows = self.cfg.beat_bytes, d["t_rows_last"] + 1
        got = np.zeros((rows, -(-n // DB) * DB), np.uint8)
        for g in range(got.shape[1] // DB):
            for r in range(rows):
                beat = self._ddr(d["dram_addr"] + r * d["stride"] + g * DB, DB)
                if beat is None:
                    return None
                got[r, g * DB:(g + 1) * DB] = beat
        return token_tiles(got[:, :n], eb)[0].reshape(-1)

    def exec_im2col(self, d, i):
        return None if self._im2col(d) else (isa.ERROR_AXI_READ, i + 1)

    def exec_compute(self, d, i):
        k = d["k_last"] + 1
        for tile in range(max(1, d["count"])):      # tiles back to back (COMPUTE.count)
            self._compute(d["sp_addr"], d["b_base"] + tile * k, k, d["acc_base"] + tile * self.cfg.rows,
                          d["accumulate"])
        return None

    def exec_store(self, d, i):
        row_bytes = self.cfg.cols * (4 if d["out_int32"] else 1)
        for tile in range(d["tiles_last"] + 1):
            if not self._store(d, tile, d["count"], row_bytes):
                return isa.ERROR_AXI_WRITE, i + 1
        return None

    def exec_depthwise(self, d, i):
        return None if self._depthwise(d) else (isa.ERROR_AXI_READ, i + 1)

    def exec_vector(self, d, i):
        """Its rows through the DMA (`_ddr`, so faults strike them): reads (input, ADD's b), then writes;
        an error response drops the command's writes."""
        from sw.backends import sim_vector
        op, n_in, n_out, pitch, row_bytes = isa.vector_geometry(self.cfg, d)
        reads = [(d["dram_addr"], n_in, d["vec_dim"])]
        if op == "ADD":
            reads.append((d["vec_b_addr"], max(d["vec_aux"], 1), d["vec_dim"]))
        for write, (addr, n, size) in [(False, r) for r in reads] + [(True, (d["vec_out_addr"], n_out, row_bytes))]:
            for r in range(n):
                if self._ddr(addr + r * pitch, size, write=write) is None:
                    return isa.ERROR_AXI_READ, i + 1          # (the ERROR bit is the response's channel)
        if self._dry:                                           # counting beats: DDR stays as it is
            return None
        return None if sim_vector.run(self.cfg, self.vec_mem, self.ddr, d) else (isa.ERROR_AXI_READ, i + 1)

    def exec_attention(self, d, i):
        self.attn.run(d, self.acc)
        return None

    def _load(self, target, sp, n, raw):
        cfg = self.cfg
        if target == "A":
            rows = raw.view(np.int8).reshape(n, cfg.rows)
            idx = (sp + np.arange(n)) % cfg.a_depth
            self.a[idx] = rows
        elif target == "V":
            self.attn.load_v(sp, n, raw)
        elif target in ("DW", "VEC", "LUT"):
            DB = cfg.beat_bytes
            mem = {"DW": self.dw_coef, "VEC": self.vec_mem, "LUT": self.store_lut}[target]
            for e in range(n):
                at = (sp + e) % isa.scratchpad_depth(cfg, target) * DB
                mem[at:at + DB] = raw[e * DB:(e + 1) * DB]
        elif target in ("B", "RES"):
            rows = raw.view(np.int8).reshape(n, cfg.cols)
            mem = self.b if target == "B" else self.res
            mem[(sp + np.arange(n)) % len(mem)] = rows
        else:
            words = raw.view("<u4").reshape(n, cfg.cols, 4).astype(np.int64)
            p = np.stack([words[..., 0].astype(np.uint32).view(np.int32).astype(np.int64),
                          words[..., 1] & ((1 << 31) - 1), words[..., 2] & 63, *isa.unpack_add(words)], axis=-1)
            idx = (sp + np.arange(n)) % cfg.param_depth
            self.params[idx] = p

    def _residual_add(self, y, idx, p) -> np.ndarray:
        """STORE.add: the residual rows at the accumulator rows read, added (intvec.add) with the add's
        parameters of the entry's channel 0 (one per tensor: the engine holds only those)."""
        return add(y, self.res[idx], AddParams(*(int(v) for v in p[0, 3:6])))

    def _im2col(self, d) -> bool:
        """LOAD IM2COL (hw/conv/im2col.py): B entries gathered from row spans (False: a row outside DDR)."""
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
                        return False
                    row = row.view(np.int8)
                    entries.extend(row[off + kx + s * np.arange(C)] for kx in range(k))
        idx = (d["sp_addr"] + np.arange(len(entries))) % cfg.b_depth
        self.b[idx] = np.array(entries, np.int8).reshape(-1, C)
        return True

    def _depthwise(self, d) -> bool:
        """DEPTHWISE (hw/conv/depthwise.py): dw_channels channels, DDR to DDR (False: outside DDR)."""
        cfg = self.cfg
        k, chans, rows, width = d["dw_kernel_last"] + 1, d["dw_channels"], d["count"], d["dw_width"]
        pitch, plane, col0 = d["stride"], d["dw_plane_rows"] * d["stride"], d["dw_col0"]
        coef = self.dw_coef.reshape(cfg.dw_channels, isa.DW_COEF_BYTES)
        for ch in range(chans):
            src = self._ddr(d["dram_addr"] + ch * plane, (rows + k - 1) * pitch)
            if src is None:
                return False
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
                dst = self._ddr(d["dw_out_addr"] + ch * plane + r * pitch, width, write=True)
                if dst is None:
                    return False
                dst[:] = y[r].view(np.uint8)
        return True

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
            y = requantize(t, p[..., 1], p[..., 2], relu=bool(d["relu"]))
            if d.get("lut"):
                y = lut(y, LutParams(self.store_lut.view(np.int8)))
            if d.get("add"):
                y = self._residual_add(y, idx, p)
            data = y.view(np.uint8).reshape(rows, row_bytes)
        # STORE.cols: only the first `cols` columns reach DDR (write strobes).
        keep = (d.get("cols") or cfg.cols) * (row_bytes // cfg.cols)
        for r in range(rows):
            dst = self._ddr(d["dram_addr"] + tile * d["tile_stride"] + r * d["stride"], row_bytes, write=True)
            if dst is None:
                return False
            dst[:keep] = data[r, :keep]
        return True
