"""The golden image encoder (Hiera + FPN + high-res projection) against SAM2Base.forward_image.

Official models from the official configs with seeded random weights (tests/golden/oracle.py);
the golden encoder is built strictly from the same state dict. Inputs: a real photo
(skimage astronaut) and a synthetic image of edges, gradients and extremes, as one batch (base_plus
and large: one composite, the photo with the synthetic image's extremes).
Tolerance: every output within 1e-4 x its max |official|.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.golden.oracle import golden_image_encoder

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def photo(size: int) -> np.ndarray:
    from PIL import Image
    from skimage import data
    img = Image.fromarray(data.astronaut()).resize((size, size), Image.BILINEAR)
    return ((np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0) - MEAN) / STD


def synthetic(size: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(40 * x * y), (x > 0.5) ^ (y > 0.3), x - y]).astype(np.float32) * 2.5
    img[:, : size // 8, : size // 8] = rng.choice([-3.0, 3.0], (3, size // 8, size // 8))   # saturated noise
    img[:, -3:, :] = 4.0                                                                   # hard bottom edge
    return img.astype(np.float32)





def assert_close(golden, official, what):
    official = official.detach().numpy()
    golden = np.asarray(golden)
    assert golden.shape == official.shape, f"{what}: shape {golden.shape} != {official.shape}"
    scale = float(np.abs(official).max())
    err = float(np.abs(golden.astype(np.float64) - official).max())
    assert scale > 0 and err <= 1e-4 * scale, f"{what}: max abs error {err:.3g} > 1e-4 x {scale:.3g}"


def composite(size: int) -> np.ndarray:
    """One image with both inputs' content: the photo, with the synthetic image's saturated-noise corner
    and hard bottom edge."""
    img, syn = photo(size), synthetic(size)
    img[:, : size // 8, : size // 8] = syn[:, : size // 8, : size // 8]
    img[:, -3:, :] = syn[:, -3:, :]
    return img


def compare(name: str, size: int, seed: int = 0, batch: bool = True):
    """`batch`: the photo and the synthetic image as a batch of two; else one composite image."""
    from tests.golden.oracle import official_model
    model = official_model(name, seed)
    img = np.stack([photo(size), synthetic(size)]) if batch else composite(size)[None]
    raw = {}   # the image encoder's own levels 0/1, before forward_image projects them in place
    hook = model.image_encoder.register_forward_hook(
        lambda mod, args, out: raw.update(fpn=[t.clone() for t in out["backbone_fpn"]]))
    with torch.no_grad():
        ref = model.forward_image(torch.from_numpy(img))
    hook.remove()
    enc, hr = golden_image_encoder(model, name)
    plain = enc(img)
    out = hr(plain)
    assert len(out["backbone_fpn"]) == len(ref["backbone_fpn"]) == 3
    for key in ("backbone_fpn", "vision_pos_enc"):
        for i, (g, o) in enumerate(zip(out[key], ref[key])):
            assert_close(g, o, f"{name} {size} {key}[{i}]")
    assert_close(out["vision_features"], ref["vision_features"], f"{name} vision_features")
    for i in (0, 1):   # unprojected levels, as SAM2Base.image_encoder returns them
        assert_close(plain["backbone_fpn"][i], raw["fpn"][i], f"{name} raw backbone_fpn[{i}]")


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_image_encoder_1024(name):
    compare(name, 1024)


def test_image_encoder_odd_grid_padding():
    """512x512: stage-3 windows of 14 on a 32x32 grid and stage-4 windows of 7 on 16x16 are padded."""
    compare("tiny", 512, seed=5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["base_plus", "large"])
def test_image_encoder_1024_big_models(name):
    """One composite image (half the time of the pair; batches of two are tiny's and small's)."""
    compare(name, 1024, batch=False)

