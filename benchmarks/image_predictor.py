"""Golden (NumPy) image predictor vs the official SAM2ImagePredictor on this CPU, same weights.

Stages: preprocessing (resize to 1024 + normalise), set_image (preprocessing +
image encoder + high-res projections), predict (prompt encoder + mask decoder +
upsampling to the photo's size) for one click with three candidate masks.
Host speed is reported as golden / official time ratios measured in this run.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import best, report

MODEL = "tiny"
REPEATS = 3


def run() -> None:
    import tempfile

    import torch
    from skimage import data

    from golden_model.model import SAM2Model
    from golden_model.predictor import ImagePredictor
    from tests.golden.oracle import official_checkpoint, official_model
    from tests.golden.torchvision_standin import install
    install()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.set_num_threads(2)
    image = data.chelsea()
    prompt = dict(point_coords=np.array([[250.0, 170.0]]), point_labels=np.array([1]), multimask_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        golden = ImagePredictor(SAM2Model.from_checkpoint(MODEL, official_checkpoint(MODEL, 0, tmp)))
    official = SAM2ImagePredictor(official_model(MODEL, 0))

    rows = []

    def add(stage, g, o):
        rows.append({"stage": stage, "golden_s": g, "official_s": o, "golden/official": g / o})

    add("preprocess", best(lambda: golden.preprocess(image), REPEATS), best(lambda: official._transforms(image), REPEATS))
    with torch.no_grad():
        add("set_image", best(lambda: golden.set_image(image), 1), best(lambda: official.set_image(image), 1))
        add("predict (1 click, 3 masks)", best(lambda: golden.predict(**prompt), REPEATS),
            best(lambda: official.predict(**prompt), REPEATS))
    report("image_predictor", rows,
           notes=f"SAM 2.1 {MODEL}, seeded random weights, scikit-image chelsea (451x300), 2 threads; "
                 f"best of {REPEATS} (set_image: 1 run).")
