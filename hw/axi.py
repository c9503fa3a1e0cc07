"""AXI4 and AXI4-Lite signatures (master's view), named the way cocotbext-axi and Vivado expect.

Flattened to Verilog as `<port>__<signal>` (e.g. m_axi__awaddr): cocotbext-axi finds
them with the prefix "<port>_".
"""
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class AxiLiteSignature(wiring.Signature):
    def __init__(self, addr_width=8, data_width=32):
        super().__init__({
            "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })


class Axi4Signature(wiring.Signature):
    def __init__(self, addr_width=32, data_width=128, id_width=1):
        super().__init__({
            "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3),
            "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3),
            "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })


BURST_INCR = 1
MAX_BURST_BEATS = 256
BOUNDARY = 4096       # AXI bursts must not cross 4 KiB
