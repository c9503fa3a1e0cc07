import sys, os
from hw.config import preset
from hw import isa
import sw.compile.linear as L
from sw.backends.cycles import cycles_only
from sw.runtime.program import Emitter

def _place_all_after(self, first, last, cycles, hazard, spread):
    """LoadWindows.place_all with one change (AFTER=1, the default here): a load without a hazard that finds no
    window time left before it is needed goes after the op that needs the load before it (not right before its
    own op): in a DMA-bound ramp the loads then stream back to back instead of each waiting for its op's
    predecessor's STORE."""
    left, nxt, end, free = self.left, self.next, len(self.left), self._free
    out, after = [], getattr(self, "after", 0)
    for lo, hi, c, hz, sp in zip(first, last, cycles, hazard, spread):
        at = lo if nxt[lo] == lo else free(lo)
        if at > hi:
            at = min(lo + sp, hi) if hz else max(lo, min(hi, after))
        after = hi + 1
        i = at if nxt[at] == at else free(at)
        while c > 0 and i < end:
            if left[i] > c:
                left[i] -= c
                break
            c -= left[i]
            left[i] = 0
            nxt[i] = i + 1
            i = i + 1 if nxt[i + 1] == i + 1 else free(i + 1)
        out.append(at)
    self.after = after
    return out


if os.environ.get("AFTER", "1") == "1":
    L.LoadWindows.place_all = _place_all_after


def build(cfg, M, K, N, g, P):
    """The resident schedule with a ramp: block 0's first g x g tiles in P K-chunks (shell order: A_s with
    B_0..B_{s-1}, then B_s with A_0..A_s, chunk-major), then its columns g.. over rows < g, then the rows g..
    as usual; A tiles in a ring of a_depth // K slots (SA=2: the halves); SPLIT=n: whole-tile loads as n LOADs.
    Piece resources ("A", slot, p) for all but the last chunk, so piece loads wait on no earlier piece's
    readers; the last chunk's pieces use the slot's resource (its last readers come after every earlier piece's).
    Returns (descriptors, runs); the op list in LAST_OPS. Needs g * g <= acc_depth // rows (not checked)."""
    R, C = cfg.rows, cfg.cols
    mt, nt = -(-M // R), -(-N // C)
    a_half, b_half, p_half = cfg.a_depth // 2, cfg.b_depth // 2, cfg.param_depth // 2
    sa = int(os.environ.get("SA", 0)) or cfg.a_depth // K
    nb = max(1, min(b_half // K, p_half, nt))
    regions = cfg.acc_depth // R
    np_cols = nt * C
    a_stride = -(-K * R // cfg.beat_bytes) * cfg.beat_bytes
    b_stride = -(-K * C // cfg.beat_bytes) * cfg.beat_bytes
    ops = []
    tile_no = 0
    loaded = set()
    kc = K // P
    for blk, nj0 in enumerate(range(0, nt, nb)):
        w = min(nb, nt - nj0)
        hb = blk % 2
        items = []   # (m, i, piece or None)
        if blk == 0 and g > 1:
            gg = min(g, mt, w)
            for p in range(P if gg > 1 else 1):
                for s in range(gg):
                    items += [(s, i, p) for i in range(s)]
                    items += [(m, s, p) for m in range(s + 1)]
            done = {(m, i) for m in range(gg) for i in range(gg)}
            items += [(m, i, None) for i in range(gg, w) for m in range(gg)]
            items += [(m, i, None) for m in range(gg, mt) for i in range(w)]
            pieces = P
        else:
            items = [(m, i, None) for m in range(mt) for i in range(w)]
            pieces = 1
        region_of = {}
        for m, i, p in items:
            step = blk * mt + m
            slot = step % sa
            loads = []
            whole = p is None
            k0, kk = (0, K) if whole else (p * kc, kc)
            last_piece = whole or p == P - 1
            ra = ("A", slot) if last_piece else ("A", slot, p)
            rb = ("B", hb, i) if last_piece else ("B", hb, i, p)
            for key, res, ld in (
                (("A", blk, m, p), ra, lambda: L.paced(cfg, dict(
                    op="LOAD", target="A", src=m * a_stride + k0 * R, count=kk, sp=slot * K + k0, res=ra))),
                (("B", blk, i, p), rb, lambda: L.paced(cfg, dict(
                    op="LOAD", target="B", src=(nj0 + i) * b_stride + k0 * C, count=kk,
                    sp=hb * b_half + i * K + k0, res=rb))),
                (("P", blk, i), None, lambda: L.paced(cfg, dict(
                    op="LOAD", target="PARAM", src=(nj0 + i) * C * isa.PARAM_CHANNEL_BYTES, count=1,
                    sp=hb * p_half + i, res=("P", hb, i))))):
                if whole and key[0] != "P":
                    # whole tile: loaded already if pieces were
                    if (key[0], blk, key[2], 0) in loaded:
                        continue
                    key = key[:3] + (None,)
                if key[0] == "P" and not last_piece:
                    continue
                if key not in loaded:
                    loaded.add(key)
                    l = ld()
                    split = int(os.environ.get("SPLIT", 1))
                    if key[0] != "P" and split > 1 and l["count"] >= split * 32:
                        q = l["count"] // split
                        eb = R if key[0] == "A" else C
                        for h in range(split):
                            loads.append(L.paced(cfg, dict(l, count=q, sp=l["sp"] + h * q, src=l["src"] + h * q * eb)))
                    else:
                        loads.append(l)
            first = (m, i) not in region_of
            if first:
                region_of[(m, i)] = tile_no % regions
                tile_no += 1
            region = region_of[(m, i)]
            store = None
            if last_piece:
                store = dict(rows=min(R, M - m * R), acc=region, param=hb * p_half + i, p=("P", hb, i),
                             dst=(m * R * np_cols + (nj0 + i) * C), stride=np_cols)
            ops.append(dict(op="COMPUTE", loads=loads, a=ra, b=rb, a_base=slot * K + k0,
                            b_base=hb * b_half + i * K + k0, k_last=kk - 1, acc=region,
                            accumulate=int(not first), store=store))
    global LAST_OPS
    LAST_OPS = ops
    descs, runs = L.schedule_runs(ops, R, False, False)
    return descs, runs

def cyc(cfg, descs, runs):
    return cycles_only(cfg, descs.dicts() if hasattr(descs, "dicts") else descs, runs)

if __name__ == "__main__":
    name, r, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    M = K = N = 256
    if len(sys.argv) > 4:
        M, K, N = map(int, sys.argv[4:7])
    cfg = preset(name).replace(rows=r, cols=c)
    raw, runs = L.linear_descriptors(cfg, M, K, N)
    base = cycles_only(cfg, raw, runs)
    ideal = M * K * N / (r * c)
    print("base", base, round(ideal / base, 4))
    for g in map(int, os.environ.get('GS', '1,2,3,4,5,6,8').split(',')):
        for P in (1, 2, 4):
            d, rr = build(cfg, M, K, N, g, P)
            cy = cyc(cfg, d, rr)
            print(g, P, cy, round(ideal / cy, 4))
