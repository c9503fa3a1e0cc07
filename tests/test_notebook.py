"""notebooks/sam2fpga_board_session.ipynb runs: its code cells in order, on the pynq backend (pynq's real
library on the simulated device), at 128 px with a scaled-down tiny model quantised for kv260, a 3-frame
clip. The notebook's last cell asserts the overlay's logits equal the host int8 reference's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from golden_model.quant.builder import random_model
from golden_model.quant.qfile import save_quantised
from golden_model.quant.quantize import calibrate
from golden_model.quant.video import build_full_graph, calibrate_video, quantize_video
from hw.config import preset

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sam2fpga_board_session.ipynb"
SIZE = 128


def code_cells(path: Path) -> list[tuple[list, str]]:
    nb = json.loads(path.read_text())
    return [(c["metadata"].get("tags", []), "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_is_clean_and_has_one_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), "commit the notebook without outputs"
    assert sum("parameters" in tags for tags, _ in code_cells(NOTEBOOK)) == 1


@pytest.mark.slow
def test_notebook_runs_on_the_simulated_device(tmp_path, monkeypatch):
    cfg = preset("kv260")
    model = random_model("tiny", SIZE, seed=0)
    photo = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    graph = build_full_graph(model)
    stats = calibrate(graph, [photo], prompts_per_image=1)
    calibrate_video(graph, [photo], stats, frames_per_video=2)
    quantised = save_quantised(quantize_video(graph, stats, key_tile=cfg.cols, preset=cfg.name),
                               tmp_path / "tiny128.safetensors")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for tags, source in code_cells(NOTEBOOK):
        exec(compile(source, str(NOTEBOOK), "exec"), scope)
        if "parameters" in tags:          # what papermill would inject
            scope.update(PRESET=cfg.name, QUANTISED=quantised, IMAGE_SIZE=SIZE, FRAMES=3)
    out = tmp_path / scope["OUT"]
    assert (out / "mask.png").is_file() and len(list((out / "track").glob("*.png"))) == 3
    assert np.array_equal(np.load(out / "mask_logits.npy"), np.load(out / "host_logits.npy"))
