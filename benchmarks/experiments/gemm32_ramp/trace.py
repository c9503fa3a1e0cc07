import sys, numpy as np
from hw.config import preset
from hw import isa
from sw.backends import cycles as CY
from sw.compile.linear import linear_descriptors
r, c = int(sys.argv[1]), int(sys.argv[2])
cfg = preset(sys.argv[3] if len(sys.argv) > 3 else "zcu104").replace(rows=r, cols=c)
M = K = N = 256
import os
if os.environ.get("PROTO"):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import proto
    from sw.runtime.program import encode_descriptors
    g, P = map(int, os.environ["PROTO"].split(","))
    d, _ = proto.build(cfg, M, K, N, g, P)
    raw = encode_descriptors(list(d.dicts())).view(np.uint8)
else:
    raw, runs = linear_descriptors(cfg, M, K, N)
raw = raw.reshape(-1, isa.DESCRIPTOR_BYTES)
f = CY.decode_descriptors(raw)
kinds = CY.classify(cfg, f)
cost = CY.fixed_costs(cfg, f, kinds)
cols = (kinds, cost["dur"], cost["rows"], cost["period"], cost["ck"], cost["tiles"],
        *(f[f"wait_{u.lower()}"] for u in CY.UNITS))
st = CY._State()
CY._steps(cfg, f, cols, st, 0, len(kinds), None, None)
dl, dc, dst, da = st.units
end = max([st.t_dispatch] + [v[-1] + 1 for v in st.units if v])
print("cfg", r, c, "descs", len(kinds), "cycles", end, "ideal", M*K*N//(r*c), "util", M*K*N/(r*c)/end)
names = {CY.K_LOAD: "L", CY.K_COMPUTE: "C", CY.K_STORE: "S"}
ci = li = si = 0
drain = r + c + r + isa.ARRAY_EXTRA_LATENCY
rows = []
for i, k in enumerate(kinds):
    t = st.dispatched[i]
    if k == CY.K_LOAD:
        rows.append((i, "L", t, dl[li], f["target"][i], f["count"][i], f["sp_addr"][i])); li += 1
    elif k == CY.K_COMPUTE:
        rows.append((i, "C", t, dc[ci] - drain, f["sp_addr"][i], f["b_base"][i], f["acc_base"][i])); ci += 1
    elif k == CY.K_STORE:
        rows.append((i, "S", t, dst[si])); si += 1
verbose = "-v" in sys.argv
lim = int(sys.argv[-1]) if sys.argv[-1].isdigit() and len(sys.argv) > 4 else 60
for row in rows[:lim]:
    print(*row)
# compute busy/gaps
cs = [(row[2], row[3]) for row in rows if row[1] == "C"]
print("first compute dispatch", cs[0][0], "last compute end(last step)", cs[-1][1], "end", end)
gaps = []
prev = None
for s, e in cs:
    if prev is not None and s > prev:
        gaps.append((prev, s - prev))
    prev = max(prev or 0, e)
print("gaps total", sum(g for _, g in gaps), "n", len(gaps), "largest", sorted(gaps, key=lambda x: -x[1])[:10])
print("loads", li, "load busy", sum(cost["dur"][kinds == CY.K_LOAD]), "last load done", dl[-1])
print("stores", si, "store busy", sum(cost["dur"][kinds == CY.K_STORE]), "last store", dst[-1])
