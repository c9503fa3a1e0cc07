"""docs/attention.md carries the widths and the cycle model generated from the code."""
from sw import attention_doc


def test_attention_doc_matches_code():
    text = attention_doc.DOC.read_text()
    assert attention_doc.markdown_tables() in text, "docs/attention.md is stale: run `python -m sw.attention_doc`"


def test_generated_widths_come_from_the_constants(monkeypatch):
    """The table follows the code: change a width and the generated text changes."""
    from golden_model import intattn
    before = attention_doc.markdown_tables()
    assert f"uint{intattn.P_BITS + 1} in [0, 2^{intattn.P_BITS}]" in before and f"int{intattn.O_BITS}" in before
    monkeypatch.setattr(intattn, "O_BITS", intattn.O_BITS + 1)
    assert attention_doc.markdown_tables() != before
