"""docs/overlay.md carries the register map and descriptor format generated from hw/isa.py."""
from pathlib import Path

from hw import isa

DOC = Path(__file__).resolve().parent.parent / "docs" / "overlay.md"


def test_overlay_doc_matches_isa():
    text = DOC.read_text()
    assert isa.markdown_tables() in text, "docs/overlay.md is stale: run `python -m hw.isa`"


def test_descriptor_roundtrip_and_limits():
    import pytest
    raw = isa.pack_descriptor(opcode=isa.OPCODES["STORE"], dram_addr=0xDEADBEE0, count=3, relu=1, param_addr=7)
    assert len(raw) == isa.DESCRIPTOR_BYTES
    d = isa.unpack_descriptor(raw)
    assert (d["opcode"], d["dram_addr"], d["count"], d["relu"], d["param_addr"]) == (3, 0xDEADBEE0, 3, 1, 7)
    with pytest.raises(ValueError, match="does not fit"):
        isa.pack_descriptor(count=1 << 16)
    with pytest.raises(ValueError, match="no field"):
        isa.pack_descriptor(bogus=1)


def test_register_offsets_unique_and_aligned():
    offsets = [r.offset for r in isa.REGISTERS]
    assert len(set(offsets)) == len(offsets) and all(o % 4 == 0 for o in offsets)
    assert max(offsets) < 1 << isa.CSR_ADDR_BITS
