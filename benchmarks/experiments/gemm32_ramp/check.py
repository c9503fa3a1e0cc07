import os, sys, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proto
from hw.config import preset
from hw import isa
import sw.compile.linear as L
from sw.backends.sim_model import SimOverlay
from sw.backends.cycles import cycles_only
from sw.commands.sim import random_layer
from golden_model.intops import gemm

name, r, c, g, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
M, K, N = map(int, sys.argv[6:9]) if len(sys.argv) > 8 else (256, 256, 256)
extra = {} if len(sys.argv) <= 9 else dict(acc_depth=int(sys.argv[9]))
cfg = preset(name).replace(rows=r, cols=c, **extra)
proto.build(cfg, M, K, N, g, P)
ops = proto.LAST_OPS
for op in ops:
    for ld in op["loads"]:
        ld["src"] = ({"A": "A", "B": "B", "PARAM": "params"}[ld["target"]], ld["src"])
    if op["store"]:
        op["store"]["dst"] = ("out", op["store"]["dst"])
descs, runs = L.schedule_runs(ops, cfg.rows, False, False)
a, b, bias, mult, shift = random_layer(np.random.default_rng(1), M, K, N)
R, C = cfg.rows, cfg.cols
mt, nt = -(-M // R), -(-N // C)
a_stride = -(-K * R // cfg.beat_bytes) * cfg.beat_bytes
b_stride = -(-K * C // cfg.beat_bytes) * cfg.beat_bytes
sizes = {"A": mt * a_stride, "B": nt * b_stride, "params": nt * C * isa.PARAM_CHANNEL_BYTES, "out": M * nt * C}
offsets, size, head = L.lay_out_head(cfg, len(descs), sizes, 0, 1 << 30, "layer")
sym, raw = L.pack_descriptors(descs, head, offsets, 0, "x")
image = np.zeros(size, np.uint8)
image[:head.size] = head
L._fill_operands(cfg, image, offsets, a, b, np.broadcast_to(np.asarray(bias, np.int64), (N,)),
                 np.broadcast_to(np.asarray(mult, np.int64), (N,)), np.broadcast_to(np.asarray(shift, np.int64), (N,)),
                 mt, nt, a_stride, b_stride)
sim = SimOverlay(cfg, ddr_bytes=size, mode="checked")
sim.ddr[:] = image
reg = isa.REG
sim.write_reg(reg["DESC_ADDR"], 0)
sim.write_reg(reg["DESC_COUNT"], len(descs))
sim.write_reg(reg["CONTROL"], isa.CONTROL_START)
off, sz = offsets["out"]
out = sim.ddr[off:off + sz].view(np.int8).reshape(M, nt * C)[:, :N]
ref = gemm(a, b, bias, mult, shift)
print("status", sim.regs["STATUS"], "cycles", sim.regs["CYCLES"], "util", round(M*K*N/(R*C)/sim.regs["CYCLES"], 4),
      "bit_exact", np.array_equal(out, ref), "cycles_only", cycles_only(cfg, head.reshape(-1, 32)))
