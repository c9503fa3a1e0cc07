"""The pynq backend: pynq.Overlay + pynq.allocate + MMIO, the same register writes and descriptors.

On a board the real library talks to the real overlay (`bitfile` = the .bit with its .hwh;
the overlay IP is found by its VLNV, hw.isa.IP_VLNV). Without a board,
`use_simulated_device(cfg)` registers a pynq Device whose registers and memory are the
sim backend's model (SimOverlay): the real pynq 4.0 code paths (Overlay(download=False),
DefaultIP driver binding, MMIO, allocate/PynqBuffer, flush/invalidate) run against it.
"""
from __future__ import annotations

import numpy as np

from hw import isa
from sw.runtime.arena import Arena
from sw.runtime.backend import DEFAULT_DDR_BYTES, Backend

OVERLAY_VLNV = isa.IP_VLNV   # the board flow packages the IP under this VLNV
IP_NAME = isa.IP_INSTANCE
CSR_BASE = 0xA000_0000          # where the registers sit in the simulated address map
#: The simulated device's DDR: room for a few sessions' arenas (a segment session's is 256 MiB:
#: sw.runtime.overlay_segment.OVERLAY_DDR_BYTES; numpy leaves untouched pages unmapped).
SIM_DDR_BYTES = 1 << 30
_SIM = {"cfg": None, "ddr_bytes": SIM_DDR_BYTES}


def use_simulated_device(cfg, ddr_bytes: int = SIM_DDR_BYTES) -> None:
    """Make the simulated device the one pynq finds (call before pynq first probes devices). Another
    configuration than the device's is another bitstream: the device starts afresh (new registers and
    DDR; buffers of sessions on the old one are void, as on a board after a new download)."""
    changed = _SIM["cfg"] is not None and (_SIM["cfg"] != cfg or _SIM["ddr_bytes"] != ddr_bytes)
    _SIM["cfg"], _SIM["ddr_bytes"] = cfg, ddr_bytes
    _define_device()
    if changed and _SimDeviceClass[0]._singleton is not None:
        _SimDeviceClass[0]._singleton.power_on()
    from pynq.pl_server.device import Device
    if "_devices" in Device.__dict__ or hasattr(Device, "_devices"):
        # pynq probed already (e.g. an earlier run in this process): put ours first.
        devices = [d for d in Device._devices if not isinstance(d, _SimDeviceClass[0])]
        Device._devices = [_SimDeviceClass[0]._instance()] + devices
        Device.active_device = Device._devices[0]


_SimDeviceClass: list = []


def _define_device():
    if _SimDeviceClass:
        return
    from pynq import DefaultIP
    from pynq.buffer import PynqBuffer
    from pynq.pl_server.device import Device

    from sw.backends.sim_model import SimOverlay

    class RegisterWindow:
        """What MMIO indexes as its `array`: 32-bit words whose reads and writes reach the model."""

        def __init__(self, model, base):
            self.model, self.base = model, base

        def __getitem__(self, idx):
            return np.uint32(self.model.read_reg(int(idx) * 4))

        def __setitem__(self, idx, value):
            self.model.write_reg(int(idx) * 4, int(value))

    class Parser:
        """The metadata a .hwh would give: one IP (the overlay) and the PS DDR."""

        def __init__(self, cfg):
            self.ip_dict = {IP_NAME: {
                "fullpath": IP_NAME, "type": OVERLAY_VLNV, "phys_addr": CSR_BASE, "addr_range": 1 << 16,
                "parameters": {"ROWS": str(cfg.rows), "COLS": str(cfg.cols)}, "registers": {},
                "interrupts": {}, "gpio": {}, "state": None, "mem_id": "s_axil", "driver": None}}
            self.gpio_dict, self.interrupt_controllers, self.interrupt_pins = {}, {}, {}
            self.hierarchy_dict, self.clock_dict = {}, {}
            self.systemgraph = None
            self.mem_dict = {"PSDDR": {"raw_type": None, "used": 1, "base_address": 0,
                                       "size": _SIM["ddr_bytes"], "type": "DDR4", "streaming": False,
                                       "idx": 0, "tag": "PSDDR"}}

    class SimPynqDevice(Device):
        """A pynq Device backed by the overlay's functional model."""
        _probe_priority_ = 1000
        _singleton = None

        @classmethod
        def _probe_(cls):
            return [cls._instance()] if _SIM["cfg"] is not None else []

        @classmethod
        def _instance(cls):
            if cls._singleton is None:
                cls._singleton = cls()
            return cls._singleton

        def __init__(self):
            super().__init__("sam2fpga-sim")
            self.name = "sam2fpga-sim"
            self.capabilities = {"MEMORY_MAPPED": True}
            self.power_on()

        def power_on(self):
            self.model = SimOverlay(_SIM["cfg"], _SIM["ddr_bytes"])
            self.memory = Arena(0x0010_0000, _SIM["ddr_bytes"] - 0x0010_0000)   # the PS DDR's free pages
            self._allocations = 0

        def has_capability(self, cap):
            return self.capabilities.get(cap, False)

        def get_bitfile_metadata(self, bitfile_name):
            return Parser(_SIM["cfg"])

        def download(self, bitstream, parser=None):
            pass

        def mmap(self, base_addr, length):
            if not CSR_BASE <= base_addr < CSR_BASE + (1 << 16):
                raise MemoryError(f"no device registers at {base_addr:#x}")
            return RegisterWindow(self.model, base_addr)

        def allocate(self, shape, dtype, **kwargs):
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            self._allocations += 1
            addr = self.memory.allocate(f"cma{self._allocations}", max(1, nbytes)).addr
            return PynqBuffer(shape, dtype, buffer=self.model.ddr, offset=addr, device_address=addr,
                              device=self, coherent=True)

        def release(self, buf):
            """Give a buffer's pages back (pynq's freebuffer only unmaps; the board's driver frees them)."""
            name = next((n for n, b in self.memory.buffers.items() if b.addr == buf.device_address), None)
            if name is not None and buf.base is self.model.ddr:    # not one from before a power_on
                self.memory.free(name)

    class GemmOverlayIP(DefaultIP):
        """Driver for the overlay IP: found by its VLNV in pynq.Overlay."""
        bindto = [OVERLAY_VLNV]

    _SimDeviceClass.append(SimPynqDevice)


class PynqBackend(Backend):
    """The backend interface over pynq: the arena is one pynq.allocate for the session, the registers
    the overlay IP's MMIO. `bitfile`: the overlay's .bit on a board (its .hwh beside it); None runs
    the real pynq library on the simulated device."""
    name = "pynq"

    def __init__(self, cfg, *, ddr_bytes: int = DEFAULT_DDR_BYTES, timeout_s: float = 10.0, bitfile: str | None = None, **_):
        import pynq
        from pynq.pl_server.device import Device

        self.on_board = bitfile is not None
        if not self.on_board:
            # No board: the simulated device (must be registered before pynq probes).
            use_simulated_device(cfg)
            from sim.runner import BUILD
            placeholder = BUILD / "pynq" / "sam2fpga_sim.bit"
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            placeholder.write_bytes(b"")
            bitfile = str(placeholder)
        self.device = Device.active_device
        if not self.on_board:
            self.device.model.inject(None)     # a fault armed by an earlier session of this process ends with it
        self.overlay = pynq.Overlay(bitfile, download=self.on_board, device=self.device)
        self.ip = getattr(self.overlay, IP_NAME)
        self.mmio = self.ip.mmio
        try:
            self.buf = pynq.allocate(shape=(ddr_bytes,), dtype=np.uint8)     # the session's DDR arena
        except Exception as e:      # (pynq's own error says neither how much was asked nor where it comes from)
            from sw.runtime.arena import ArenaFull
            raise ArenaFull(f"pynq.allocate of the session's DDR arena, {ddr_bytes:,} contiguous bytes, failed: {e}. "
                            "On a board that memory is the kernel's CMA (`grep Cma /proc/meminfo`; "
                            "bitstreams/README.md, \"On the board\", gives each session's arena size)") from e
        super().__init__(cfg, int(self.buf.device_address), ddr_bytes)
        self.timeout_s = timeout_s
        self.poll_s = 1e-4 if self.on_board else 0.0      # a board: do not hammer the AXI-Lite bus

    def _write(self, addr, data):
        view = self.buf[addr - self.ddr_base:addr - self.ddr_base + data.size]
        view[:] = data
        view.flush()

    def _read(self, addr, size):
        view = self.buf[addr - self.ddr_base:addr - self.ddr_base + size]
        view.invalidate()
        return np.array(view)

    def read_reg(self, offset):
        return int(self.mmio.read(offset))

    def write_reg(self, offset, value):
        self.mmio.write(offset, int(value))

    def inject_fault(self, fault) -> None:
        if self.on_board:
            super().inject_fault(fault)
        self.device.model.inject(fault)       # the simulated device's AXI slave

    def close(self):
        buf, self.buf = getattr(self, "buf", None), None      # (also when __init__ stopped half way)
        if buf is not None:
            if not self.on_board:
                self.device.release(buf)
            buf.freebuffer()

    def __del__(self):
        self.close()
