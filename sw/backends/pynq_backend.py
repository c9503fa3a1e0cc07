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

OVERLAY_VLNV = isa.IP_VLNV   # the board flow packages the IP under this VLNV
IP_NAME = isa.IP_INSTANCE
CSR_BASE = 0xA000_0000          # where the registers sit in the simulated address map
_SIM = {"cfg": None, "ddr_bytes": 1 << 26}


def use_simulated_device(cfg, ddr_bytes: int = 1 << 26) -> None:
    """Make the simulated device the one pynq finds (call before pynq first probes devices)."""
    _SIM["cfg"], _SIM["ddr_bytes"] = cfg, ddr_bytes
    _define_device()
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

    from sw.backends.sim import SimOverlay

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
            self.model = SimOverlay(_SIM["cfg"], _SIM["ddr_bytes"])
            self._next = 0x0010_0000

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
            addr = self._next
            if addr + nbytes > len(self.model.ddr):
                raise MemoryError(f"simulated DDR full: {nbytes} bytes requested")
            self._next = -(-(addr + nbytes) // 4096) * 4096
            return PynqBuffer(shape, dtype, buffer=self.model.ddr, offset=addr, device_address=addr,
                              device=self, coherent=True)

        def free(self, *args):
            pass

    class GemmOverlayIP(DefaultIP):
        """Driver for the overlay IP: found by its VLNV in pynq.Overlay."""
        bindto = [OVERLAY_VLNV]

    _SimDeviceClass.append(SimPynqDevice)


class PynqRunner:
    def __init__(self, cfg, *, timeout_s: float = 10.0, bitfile: str | None = None):
        import pynq
        from pynq.pl_server.device import Device

        self.cfg, self.timeout_s = cfg, timeout_s
        on_board = bitfile is not None
        if not on_board:
            # No board: the simulated device (must be registered before pynq probes).
            use_simulated_device(cfg)
            from sim.runner import BUILD
            placeholder = BUILD / "pynq" / "sam2fpga_gemm_sim.bit"
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            placeholder.write_bytes(b"")
            bitfile = str(placeholder)
        self.device = Device.active_device
        self.overlay = pynq.Overlay(bitfile, download=on_board, device=self.device)
        self.ip = getattr(self.overlay, IP_NAME)
        self.pynq = pynq

    def run(self, prog, runs):
        """Run `prog`'s runs ((first descriptor, count), one START each) in one buffer; (bytes after, cycles)."""
        from sw.checks import check_descriptors
        from sw.compiler import relocate
        from sw.driver import MmioSession

        buf = self.pynq.allocate(shape=(len(prog.image),), dtype=np.uint8, target=None)
        try:
            prog = relocate(prog, buf.device_address)
            for first, count in runs:
                check_descriptors(self.cfg, prog.descriptors[first:first + count], prog.base_addr, len(prog.image))
            buf[:] = prog.image
            buf.flush()
            mmio = self.ip.mmio
            session = MmioSession(lambda off: mmio.read(off), lambda off, v: mmio.write(off, int(v)), self.timeout_s)
            cycles = sum(session.run(prog.base_addr + first * isa.DESCRIPTOR_BYTES, count) for first, count in runs)
            buf.invalidate()
            return np.array(buf), cycles
        finally:
            buf.freebuffer()
