"""Verilog generation: one entry point so every core is emitted the same way."""
from pathlib import Path

from amaranth.back import verilog

from sw.outputs import write_text   # stdlib-only: every written file is all or nothing


def write_verilog(component, name: str, out_dir: Path) -> Path:
    """Write `component` as `<out_dir>/<name>.v` (top module `name`) and return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.v"
    text = verilog.convert(component, name=name, emit_src=False)
    # Rewrite only on change, so simulator builds stay cached.
    if not path.exists() or path.read_text() != text:
        write_text(path, text)
    return path
