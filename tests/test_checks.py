"""sw.runtime.checks: every host check refuses its bad case, on field dicts and on packed descriptors
alike, naming the first failing descriptor and, within it, the first failing check."""
import numpy as np
import pytest

from golden_model.intattn import AttentionQuant
from hw import isa
from hw.config import preset
from sw.compile.attention import compile_attention
from sw.compile.conv import compile_conv2d, compile_depthwise
from sw.compile.linear import compile_linear
from sw.runtime.checks import DescriptorError, check_descriptors

SIM = preset("sim")          # 4 x 8, 8-byte beats, every engine; acc_depth 64, param_depth 16, 2 query slots
BASE = 0x100000


def r8(rng, *shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


@pytest.fixture(scope="module")
def programs():
    rng = np.random.default_rng(0)
    quant = AttentionQuant(3000, 14, 1 << 28, 30)
    return {
        "linear": compile_linear(SIM, r8(rng, 9, 40), r8(rng, 40, 20), None, 1 << 20, 20, base_addr=BASE),
        "int32": compile_linear(SIM, r8(rng, 300, 8), r8(rng, 8, 40), None, out_int32=True, base_addr=BASE),
        "conv": compile_conv2d(SIM, r8(rng, 1, 40, 20), r8(rng, 3, 1, 3, 3), None, 1 << 20, 20, stride=2,
                               padding=1, base_addr=BASE),       # IM2COL of several rows, STOREs of several tiles
        "depthwise": compile_depthwise(SIM, r8(rng, 3, 6, 9), r8(rng, 3, 1, 5, 5), None, 1 << 20, 20, padding=2,
                                       base_addr=BASE),
        "attention": compile_attention(SIM, r8(rng, 1, 4, 8), r8(rng, 1, 8, 8), r8(rng, 1, 8, 8), quant,
                                       base_addr=BASE),
    }


def first(prog, opcode, **fields):
    """Index of the first descriptor with this opcode (and these field values)."""
    return next(i for i, d in enumerate(prog.descriptors) if d["opcode"] == isa.OPCODES[opcode]
                and all(d.get(k, 0) == v for k, v in fields.items()))


def refused(cfg, descs, table, match):
    """Both forms refuse with the same message, which matches `match`."""
    messages = []
    for form in (descs, np.frombuffer(b"".join(isa.pack_descriptor(**d) for d in descs), np.uint8)):
        with pytest.raises(DescriptorError, match=match) as e:
            check_descriptors(cfg, form, table)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    return messages[0]


def out_base(prog):
    return prog.buffer_table()["out"][0]


T = {name: code for name, code in isa.TARGETS.items()}
A, B, V, IM2COL, DW = T["A"], T["B"], T["V"], T["IM2COL"], T["DW"]
STEP, NORM = isa.ATTN_MODES["STEP"], isa.ATTN_MODES["NORM"]
# (program, which descriptor: (opcode, fields), change: fields or a function of (prog, descriptor), message)
CASES = [
    ("linear", ("LOAD", {}), {"opcode": 0x77}, r"descriptor 0 \(119\): opcode 119 is not one of \['LOAD'"),
    ("linear", ("LOAD", {}), {"wait_store": 3}, "waits for 3 STOREs but only 0 come before it"),
    ("linear", ("STORE", {}), {"wait_load": 999}, "waits for 999 LOADs but only"),
    ("linear", ("STORE", {}), {"wait_compute": 999}, "waits for 999 COMPUTEs but only"),
    ("attention", ("ATTENTION", {}), {"wait_attention": 5}, "waits for 5 ATTENTIONs but only 0"),
    ("linear", ("LOAD", {}), {"target": 15}, "unknown LOAD target 15"),
    ("linear", ("LOAD", {"target": A}), {"count": 0}, r"entries \[0, 0\) outside the A scratchpad \(depth 4096\)"),
    ("linear", ("LOAD", {"target": B}), {"sp_addr": 4095}, "outside the B scratchpad"),
    ("linear", ("LOAD", {}), lambda p, d: {"dram_addr": d["dram_addr"] + 4}, "source address .* not aligned to the 8"),
    ("linear", ("LOAD", {}), {"dram_addr": 0x100}, r"source \[0x100, .*\) outside the buffers \(descriptors \["),
    ("linear", ("LOAD", {"target": A}), {"count": 200}, r"source .* runs outside the buffer 'A'"),
    ("linear", ("COMPUTE", {}), {"count": isa.MAX_TILES + 1}, "257 tiles, at most 256"),
    ("linear", ("COMPUTE", {}), {"k_last": 5000}, "K=5001 entries from A .* run past the scratchpads"),
    ("linear", ("COMPUTE", {}), {"acc_base": 62}, r"accumulator rows \[62, 66\) past depth 64"),
    ("linear", ("STORE", {}), {"count": 0}, "0 rows, must be 1..4"),
    ("linear", ("STORE", {}), {"param_addr": 16}, "accumulator rows or parameter entry outside"),
    ("linear", ("STORE", {}), {"cols": 9}, "9 columns, the array has 8"),
    ("linear", ("STORE", {}), {"stride": 12}, "row stride 12 or tile stride 0 not a multiple of the 8-byte beat"),
    ("linear", ("STORE", {}), lambda p, d: {"dram_addr": d["dram_addr"] + 4}, "tile 0's destination address .* aligned"),
    ("linear", ("STORE", {}), lambda p, d: {"dram_addr": out_base(p) + p.regions["out"][1] - 8},
     r"tile 0's destination \[.*\) runs outside the buffer 'out'"),
    ("conv", ("STORE", {}), lambda p, d: {"tiles_last": 3, "tile_stride": 1 << 16},
     r"tile 1's destination \[.*\) outside the buffers"),
    ("int32", ("STORE", {}), lambda p, d: {"dram_addr": out_base(p) + 4096 - 40, "stride": 24},
     "tile 0 row 1 crosses a 4 KiB boundary"),
    ("conv", ("LOAD", {"target": IM2COL}), {"kernel_last": 7}, r"kernel 8, stride 2\^1 or column offset 7 out of range"),
    ("conv", ("LOAD", {"target": IM2COL}), {"count": 0}, "entries from 0 outside the B scratchpad"),
    ("conv", ("LOAD", {"target": IM2COL}), {"stride": 12}, "row pitch 12 not a multiple of the 8-byte beat$"),
    ("conv", ("LOAD", {"target": IM2COL}), lambda p, d: {"dram_addr": d["dram_addr"] + 4},
     "first row span address .* not aligned"),
    ("conv", ("LOAD", {"target": IM2COL}), {"out_rows_last": 100}, r"last row span \[.*\) outside the buffers"),
    ("depthwise", ("DEPTHWISE", {}), {"dw_channels": 300}, "300 channels, the engine holds coefficients of 1..256"),
    ("depthwise", ("DEPTHWISE", {}), {"count": 0}, "0 rows of 9 pixels"),
    ("depthwise", ("DEPTHWISE", {}), {"stride": 12}, "row pitch 12 not a multiple .* within the 128-byte line buffer"),
    ("depthwise", ("DEPTHWISE", {}), {"dw_width": 40}, r"columns 6 \+ 40 \+ 4 run past the 24-byte row"),
    ("depthwise", ("DEPTHWISE", {}), {"count": 500}, r"input rows \[.*\) runs outside the buffer 'in'"),
    ("depthwise", ("DEPTHWISE", {}), lambda p, d: {"dw_out_addr": d["dw_out_addr"] + 4},
     "output rows address .* not aligned"),
    ("depthwise", ("LOAD", {"target": DW}), {"count": 5000}, "outside the DW scratchpad"),
    ("attention", ("ATTENTION", {}), {"slot": 3}, "query slot 3 beyond the engine's 2"),
    ("attention", ("ATTENTION", {"target": STEP}), {"count": 9}, "9 keys in a tile, must be 1..8"),
    ("attention", ("ATTENTION", {"target": STEP}), {"k_last": 40}, "head dim 328 beyond the engine's 256"),
    ("attention", ("ATTENTION", {"target": STEP}), {"sp_addr": 62}, r"score rows \[62, 66\) past the accumulator"),
    ("attention", ("ATTENTION", {"target": STEP}), {"b_base": 510}, r"V entries \[510, 518\) outside the V scratchpad"),
    ("attention", ("ATTENTION", {"target": STEP}), {"stride": 0}, "score shift 0 outside 1..63"),
    ("attention", ("ATTENTION", {"target": NORM}), {"count": 0}, r"chunks \[0, 0\) outside the engine's 32"),
    ("attention", ("ATTENTION", {"target": NORM}), {"acc_base": 62}, r"output rows \[62, 66\) past the accumulator"),
    ("attention", ("ATTENTION", {}), {"target": 3}, "unknown attention mode 3"),
]


@pytest.mark.parametrize("name,where,change,match", CASES, ids=[f"{c[0]}-{c[3][:30]}" for c in CASES])
def test_each_check_refuses_its_bad_case(programs, name, where, change, match):
    prog = programs[name]
    check_descriptors(SIM, prog.descriptors, prog.buffer_table())          # the compiled program passes
    descs = [dict(d) for d in prog.descriptors]
    i = first(prog, where[0], **where[1])
    descs[i].update(change(prog, descs[i]) if callable(change) else change)
    message = refused(SIM, descs, prog.buffer_table(), match)
    assert message.startswith(f"descriptor {i} (")


def test_engines_missing_from_the_overlay_are_named(programs):
    prog = programs["attention"]
    no_attention = SIM.replace(engines=("gemm", "conv", "depthwise"))
    refused(no_attention, prog.descriptors, prog.buffer_table(), "LOAD target V, but the overlay has no attention")
    step = [d for d in prog.descriptors if d["opcode"] == isa.OPCODES["ATTENTION"]][:1]
    refused(no_attention, step, prog.buffer_table(), r"opcode 8 is not one of .*\(overlay 'sim'\)")


def test_per_row_parameters_need_a_channel_per_row():
    tall = SIM.replace(name="tall", rows=16)           # R > C: 16 rows of one parameter entry of 8 channels
    store = dict(opcode=isa.OPCODES["STORE"], count=12, param_rows=1, stride=8, dram_addr=BASE)
    refused(tall, [store], {"out": (BASE, 4096)}, "per-row parameters for 12 rows, but an entry holds 8 channels")


def test_the_first_failing_descriptor_and_check_are_named(programs):
    prog = programs["linear"]
    stores = [i for i, d in enumerate(prog.descriptors) if d["opcode"] == isa.OPCODES["STORE"]]
    descs = [dict(d) for d in prog.descriptors]
    descs[stores[1]].update(cols=9)
    descs[stores[2]].update(count=0)
    refused(SIM, descs, prog.buffer_table(), f"^descriptor {stores[1]} .*9 columns")
    descs[stores[1]].update(count=0)                 # two failures in one descriptor: the rows come first
    refused(SIM, descs, prog.buffer_table(), f"^descriptor {stores[1]} .*0 rows")
    descs[stores[1]].update(wait_load=10 ** 4)       # the waits before the opcode's own checks
    refused(SIM, descs, prog.buffer_table(), f"^descriptor {stores[1]} .*waits for 10000 LOADs")
    conv = programs["conv"]                          # per tile: tile 0's rows before tile 1's destination
    descs = [dict(d) for d in conv.descriptors]
    s = max((i for i, d in enumerate(descs) if d["opcode"] == isa.OPCODES["STORE"]), key=lambda i: descs[i]["tiles_last"])
    assert descs[s]["tiles_last"] > 0
    descs[s].update(tile_stride=1 << 16, stride=4096 - 8)
    refused(SIM, descs, conv.buffer_table(), f"^descriptor {s} .*tile 0's destination .* runs outside")


def test_page_crossings_equal_a_row_by_row_loop():
    """_check_store's 4 KiB crossings (taken mod PAGE in int32) against each tile's rows one by one: the same
    verdict and the same first tile and row, over random stores (rows, tiles, strides, int8 and int32 rows)."""
    rng = np.random.default_rng(7)
    R, C, DB = SIM.rows, SIM.cols, SIM.beat_bytes
    table = {"out": (BASE, 1 << 24)}
    crossed = 0
    for _ in range(400):
        near = lambda: 4096 * int(rng.integers(0, 3)) + DB * int(rng.integers(-4, 5))      # about whole pages
        d = dict(opcode=isa.OPCODES["STORE"], count=int(min(R, rng.integers(1, 2 * R))), tiles_last=int(rng.integers(0, 4)),
                 stride=max(0, near()), tile_stride=max(0, near()), out_int32=int(rng.integers(0, 2)),
                 dram_addr=BASE + 4096 * int(rng.integers(1, 64)) + DB * int(rng.integers(-12, 1)))
        row_bytes = C * (4 if d["out_int32"] else 1)
        want = next((f"tile {t} row {r} crosses" for t in range(d["tiles_last"] + 1) for r in range(d["count"])
                     if (d["dram_addr"] + t * d["tile_stride"] + r * d["stride"]) % 4096 + row_bytes > 4096), None)
        if want is None:
            check_descriptors(SIM, [d], table)
            check_descriptors(SIM, np.frombuffer(isa.pack_descriptor(**d), np.uint8), table)
        else:
            crossed += 1
            refused(SIM, [d], table, want)
    assert 40 < crossed < 360


def test_checks_decode_the_bytes_as_the_cycle_model_does(programs):
    """The checks' decode in place (fields_of: no copy, dram_addr read with the rest) gives every field as the
    cycle model's decode_descriptors (dram_addr kept apart), on each compiled program's linked bytes."""
    from sw.backends.cycles import decode_descriptors, fields_of
    for prog in programs.values():
        raw = np.frombuffer(b"".join(isa.pack_descriptor(**d) for d in prog.descriptors), np.uint8)
        ours, theirs = fields_of(raw), decode_descriptors(raw)
        assert ours.keys() == theirs.keys() == isa.FIELDS.keys()
        for name in isa.FIELDS:
            assert np.array_equal(ours[name], theirs[name]), name
