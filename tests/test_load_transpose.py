"""The transposing LOAD (hw.isa `transpose`, engine load_t): token rows into A / B / V entries.

The sim model's interpreter against the golden layout (golden_model.intops.token_tiles) on random rows,
tail tiles (fewer rows than an entry's bytes), counts off the AXI beat, ring wrap in the scratchpad; the
host checks' refusals. The linear that reads its A in place: tests/test_graph_exec.py and below."""
import numpy as np
import pytest

from golden_model.intops import token_tiles
from hw import isa
from hw.config import preset
from sw.backends.sim_model import SimOverlay
from sw.runtime.checks import DescriptorError, check_descriptors

BASE = 0x1000
ROWS_AT = 0x4000


def with_load_t(name):
    cfg = preset(name)
    return cfg if "load_t" in cfg.engines else cfg.replace(engines=cfg.engines + ("load_t",))


def run_checked(cfg, descs, ddr_rows: np.ndarray):
    sim = SimOverlay(cfg, 1 << 20, mode="checked")
    raw = np.frombuffer(b"".join(isa.pack_descriptor(**d) for d in descs), np.uint8)
    sim.ddr[BASE:BASE + raw.size] = raw
    sim.ddr[ROWS_AT:ROWS_AT + ddr_rows.size] = ddr_rows.reshape(-1)
    for name, value in (("DESC_ADDR", BASE), ("DESC_COUNT", len(descs)), ("CONTROL", isa.CONTROL_START)):
        sim.write_reg(isa.REG[name], value)
    assert sim.regs["STATUS"] == isa.STATUS_DONE and not sim.regs["ERROR"], sim.regs
    return sim


def transposed(target, rows, count, pitch, sp, offset=0):
    return dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS[target], transpose=1, t_rows_last=rows - 1,
                count=count, stride=pitch, dram_addr=ROWS_AT + offset, sp_addr=sp)


@pytest.mark.parametrize("name,target,rows,count", [
    ("sim", "A", 4, 24), ("sim", "A", 3, 13), ("sim", "A", 1, 1), ("sim", "B", 8, 17), ("sim", "B", 5, 8),
    ("bench16", "A", 16, 40), ("bench16", "A", 7, 3), ("bench16", "B", 11, 33), ("kv260", "B", 32, 20),
    ("kv260", "A", 16, 15)])
def test_transposed_load_equals_token_tiles(name, target, rows, count):
    """Entry e byte r = row r byte e; bytes past the rows read zero (not what the scratchpad held)."""
    cfg = with_load_t(name)
    rng = np.random.default_rng(rows * 1000 + count)
    DB = cfg.beat_bytes
    pitch = -(-count // DB) * DB + DB                           # one beat of other bytes after each row
    x = rng.integers(-128, 128, (rows, pitch), dtype=np.int8)
    depth = isa.scratchpad_depth(cfg, target)
    sp = depth - count // 2 - 1 if target == "A" else 3           # A: across the end of the scratchpad's ring
    sp = max(sp, 0)
    dirty = dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS[target], count=count, dram_addr=ROWS_AT, sp_addr=sp)
    sim = run_checked(cfg, [dirty, transposed(target, rows, count, pitch, sp)], x.view(np.uint8))
    eb = isa.entry_bytes(cfg, target)
    want = token_tiles(x[:, :count], eb)[0]                      # (count, eb)
    mem = sim.a if target == "A" else sim.b
    got = mem[(sp + np.arange(count)) % len(mem)]
    assert np.array_equal(got, want)


def test_transposed_load_v_into_attention():
    """Target V (attention's values): the same layout, C tokens of one channel per entry."""
    cfg = with_load_t("sim")
    C = cfg.cols
    x = np.random.default_rng(1).integers(-128, 128, (C, 16), dtype=np.int8)
    sim = run_checked(cfg, [transposed("V", C, 16, 16, 0)], x.view(np.uint8))
    ref = SimOverlay(cfg, 1 << 20, mode="checked")
    ref.attn.load_v(0, 16, token_tiles(x, C)[0].reshape(-1).view(np.uint8))
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(vars(sim.attn).values(), vars(ref.attn).values()) if isinstance(a, np.ndarray))


def test_cycles_of_a_transposed_load():
    """Per group of a beat of entries: max(rows, beat) cycles, the first group's rows and the last group's
    entries not overlapped (sw/backends/cycles.py; the RTL is not built yet, so this is the design's model)."""
    from sw.backends import cycles as CY
    cfg = with_load_t("bench16")
    d = transposed("A", 16, 40, 64, 0)
    f = CY.decode_descriptors(np.frombuffer(isa.pack_descriptor(**d), np.uint8))
    dur = CY.fixed_costs(cfg, f, CY.classify(cfg, f))["dur"]
    assert dur[0] == CY.READ_LATENCY + 16 + 2 * 16 + 8 + CY.LOAD_PIPELINE


@pytest.mark.parametrize("change,cfg_name,why", [
    ({}, "sim", "no GEMM transposing load"),
    (dict(t_rows_last=4), "sim+", "5 rows, an entry holds 4"),
    (dict(stride=12), "sim+", "not a whole number"),
    (dict(target=isa.TARGETS["PARAM"]), "sim+", "only A, B, V"),
    (dict(count=64), "sim+", "source rows .* runs outside the buffer 'rows'")])
def test_checks_refuse_bad_transposed_loads(change, cfg_name, why):
    cfg = with_load_t("sim") if cfg_name == "sim+" else preset(cfg_name)
    d = dict(transposed("A", 4, 16, 16, 0), **change)
    check_descriptors(with_load_t("sim"), [isa.unpack_descriptor(isa.pack_descriptor(**transposed("A", 4, 16, 16, 0)))],
                      {"rows": (ROWS_AT, 4 * 16)})                 # the unchanged one passes
    with pytest.raises(DescriptorError, match=why):
        check_descriptors(cfg, [isa.unpack_descriptor(isa.pack_descriptor(**d))], {"rows": (ROWS_AT, 4 * 16)})


def test_isa_field_shares_load_bits():
    raw = isa.pack_descriptor(**transposed("B", 5, 9, 32, 2))
    d = isa.unpack_descriptor(raw)
    assert (d["transpose"], d["t_rows_last"], d["count"], d["stride"]) == (1, 4, 9, 32)
    with pytest.raises(ValueError, match="share the bits"):
        isa.pack_descriptor(**transposed("B", 5, 9, 32, 2), k_last=3)
