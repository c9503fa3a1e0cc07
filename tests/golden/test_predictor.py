"""The golden image predictor against the official SAM2ImagePredictor (seeded random weights).

The official predictor imports torchvision, which cannot be installed beside this
torch: tests/golden/torchvision_standin.py supplies ToTensor/Resize/Normalize with
torchvision's numerics. The official image encoder's outputs are memoised per input
(it is the slow part, and the golden preprocessing is bit-identical, so both sides
ask for the same input).

Tolerance: mask logits max abs error <= 1e-3 x max(1, max|official|); identical
chosen (best-IoU) mask indices; IoU predictions within 1e-3.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from golden_model.model import SAM2Model
from golden_model.predictor import ImagePredictor, PromptError
from golden_model.transforms import normalize, resize_antialias, resize_bilinear, to_tensor

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle

SEED = 11


def assert_close(golden, official, what="", rel=1e-3):
    official = np.asarray(official.detach().numpy() if hasattr(official, "detach") else official, np.float64)
    golden = np.asarray(golden, np.float64)
    assert golden.shape == official.shape, f"{what}: shape {golden.shape} != official {official.shape}"
    tol = rel * max(1.0, float(np.abs(official).max(initial=0.0)))
    err = float(np.abs(golden - official).max(initial=0.0))
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


# ---------------------------------------------------------------- images
def photo() -> np.ndarray:
    """A real photograph shipped with scikit-image (300 x 451 RGB): a downscale-free, non-square case."""
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()


def synthetic() -> np.ndarray:
    """A 1300 x 900 image (antialiased downscaling on one axis, upscaling on the other): shapes on a gradient."""
    h, w = 1300, 900
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], axis=-1).astype(np.uint8)
    img[200:700, 150:500] = (230, 40, 40)
    disk = (yy - 900) ** 2 + (xx - 600) ** 2 < 200 ** 2
    img[disk] = (30, 200, 60)
    return img


# ---------------------------------------------------------------- official side
class MemoImageEncoder(torch.nn.Module):
    """The official image encoder, run once per distinct input (returns fresh dicts/lists each call,
    since SAM2Base.forward_image writes into the returned lists)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.cache = {}

    def forward(self, x):
        key = hashlib.sha1(x.detach().contiguous().numpy().tobytes()).hexdigest()
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = self.encoder(x)
        out = self.cache[key]
        return {k: (list(v) if isinstance(v, list) else v) for k, v in out.items()}


class NumpyImageEncoder:
    """The (memoised) official image encoder behind the golden model's image-encoder call."""

    def __init__(self, memo):
        self.memo = memo

    def __call__(self, x):
        out = self.memo(torch.from_numpy(np.ascontiguousarray(x)))
        return {"vision_features": out["vision_features"].numpy(),
                "vision_pos_enc": [t.numpy() for t in out["vision_pos_enc"]],
                "backbone_fpn": [t.numpy() for t in out["backbone_fpn"]]}


class Pair:
    """An official predictor and a golden one over the same weights, with the image set on both."""

    def __init__(self, name: str):
        from tests.golden.oracle import official_model
        from tests.golden.torchvision_standin import install
        install()
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        official = official_model(name, seed=SEED)
        self.memo = MemoImageEncoder(official.image_encoder)
        official.image_encoder = self.memo
        self.official = SAM2ImagePredictor(official)
        sd = {k: v.numpy() for k, v in official.state_dict().items() if not k.startswith("image_encoder.")}
        model = SAM2Model(name, state_dict=sd, image_encoder=NumpyImageEncoder(self.memo))
        self.golden = ImagePredictor(model)
        self.image = None

    def set_image(self, image):
        if self.image is not image:
            with torch.no_grad():
                self.official.set_image(image)
            self.golden.set_image(image)
            self.image = image

    def both(self, **prompt):
        with torch.no_grad():
            o = self.official.predict(**prompt)
        return self.golden.predict(**prompt), o


_pairs = {}


def pair(name) -> Pair:
    if name not in _pairs:
        _pairs[name] = Pair(name)
    return _pairs[name]


# ---------------------------------------------------------------- resampling (no model needed)
@pytest.mark.parametrize("shape,size", [((1, 3, 300, 451), (1024, 1024)), ((1, 3, 1300, 900), (1024, 1024)),
                                        ((1, 3, 2000, 3000), (1024, 1024)), ((2, 1, 1024, 1024), (256, 256)),
                                        ((1, 3, 1024, 1024), (1024, 1024)), ((1, 1, 9, 1000), (1024, 7))])
def test_resize_antialias_is_bit_identical_to_torch(shape, size):
    import torch.nn.functional as F
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_array_equal(resize_antialias(x, size), ref.numpy())


@pytest.mark.parametrize("shape,size", [((1, 3, 256, 256), (300, 451)), ((1, 1, 256, 256), (1300, 900)),
                                        ((1, 3, 256, 256), (1024, 1024)), ((1, 2, 256, 256), (100, 37))])
def test_resize_bilinear_is_bit_identical_to_torch(shape, size):
    """Against torch's kernel with two or more intra-op threads, the default on any multi-core machine:
    with one thread (`make test` gives each xdist worker one) torch 2.13 takes another kernel for some
    channel counts (3 here: SAM 2's three masks), which differs from it in the last bit of some values."""
    import torch.nn.functional as F
    x = (np.random.default_rng(1).standard_normal(shape) * 20).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        ref = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(resize_bilinear(x, size), ref.numpy())


@pytest.mark.parametrize("make", [photo, synthetic])
def test_preprocessing_is_bit_identical_to_official(make):
    from tests.golden.torchvision_standin import install
    install()
    from sam2.utils.transforms import SAM2Transforms
    img = make()
    ref = SAM2Transforms(resolution=1024, mask_threshold=0.0)(img)
    ours = normalize(resize_antialias(to_tensor(img)[None], (1024, 1024)))[0]
    np.testing.assert_array_equal(ours, ref.numpy())


# ---------------------------------------------------------------- whole predictor
PROMPTS = {
    "point": dict(point_coords=[[220.0, 130.0]], point_labels=[1]),
    "points_pos_neg": dict(point_coords=[[220.0, 130.0], [40.0, 260.0], [400.0, 20.0]], point_labels=[1, 0, 1]),
    "box": dict(box=[60.0, 40.0, 300.0, 250.0]),
    "box_and_point": dict(box=[60.0, 40.0, 300.0, 250.0], point_coords=[[120.0, 100.0]], point_labels=[0]),
}


def check(g, o, multimask):
    (gm, gi, gl), (om, oi, ol) = g, o
    assert_close(gm, om, "full-resolution mask logits")
    assert_close(gl, ol, "low-res logits")
    assert_close(gi, oi, "iou predictions")
    assert gm.shape[0] == (3 if multimask else 1)
    assert int(np.argmax(gi)) == int(np.argmax(oi)), "chosen (best-IoU) mask differs"


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_predictor_photo_tiny(prompt, multimask):
    p = pair("tiny")
    p.set_image(photo())
    check(*p.both(**PROMPTS[prompt], multimask_output=multimask, return_logits=True), multimask)


def test_predictor_photo_binary_masks_and_mask_prompt_tiny():
    p = pair("tiny")
    p.set_image(photo())
    (gm, _, gl), (om, oi, ol) = p.both(**PROMPTS["point"], multimask_output=True)
    assert gm.dtype == om.dtype == np.float32 and set(np.unique(gm)) <= {0.0, 1.0}
    (lm, _, _), (olm, _, _) = p.both(**PROMPTS["point"], multimask_output=True, return_logits=True)
    decided = np.abs(olm) > 1e-3 * max(1.0, float(np.abs(olm).max()))   # away from the threshold
    np.testing.assert_array_equal(gm[decided], om[decided])
    # the best low-res mask fed back as a mask prompt with a second click (the usual refinement loop)
    best = int(np.argmax(oi))
    refine = dict(point_coords=[[220.0, 130.0], [150.0, 200.0]], point_labels=[1, 1], mask_input=ol[best:best + 1])
    check(*p.both(**refine, multimask_output=False, return_logits=True), False)


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_predictor_synthetic_tiny(prompt):
    p = pair("tiny")
    p.set_image(synthetic())
    scaled = {k: (np.asarray(v) * [3.0, 4.0][: np.shape(v)[-1]] if k == "point_coords" else v)
              for k, v in PROMPTS[prompt].items()}
    if "box" in scaled:
        scaled["box"] = np.asarray(scaled["box"]) * [3.0, 4.0, 3.0, 4.0]
    check(*p.both(**scaled, multimask_output=True, return_logits=True), True)
    check(*p.both(**scaled, multimask_output=False, return_logits=True), False)


def test_predictor_photo_small():
    p = pair("small")
    p.set_image(photo())
    for prompt in ("point", "box_and_point"):
        for mm in (True, False):
            check(*p.both(**PROMPTS[prompt], multimask_output=mm, return_logits=True), mm)


def test_predictor_rejects_bad_prompts():
    model_pair = pair("tiny")
    model_pair.set_image(photo())
    g = model_pair.golden
    with pytest.raises(PromptError, match="point_labels"):
        g.predict(point_coords=[[1.0, 2.0]])
    with pytest.raises(PromptError, match="must be"):
        g.predict(point_coords=[[1.0, 2.0, 3.0]], point_labels=[1])
    with pytest.raises(PromptError, match="box"):
        g.predict(box=[1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="set_image"):
        ImagePredictor(g.model).predict(point_coords=[[1.0, 2.0]], point_labels=[1])
    with pytest.raises(ValueError, match="uint8 RGB"):
        g.set_image(np.zeros((10, 10), np.uint8))


# ---------------------------------------------------------------- SAM2Base._forward_sam_heads
@pytest.mark.parametrize("case", ["points_multimask", "points_single", "mask_1024", "nothing"])
def test_forward_sam_heads_matches_official(case):
    """The SAM-head step the video tracker uses: object-score gating, 1024 upsampling, best-IoU
    choice, object pointer (with the no-object pointer) and the antialiased mask-prompt downscale."""
    p = pair("tiny")
    p.set_image(photo())
    official, golden = p.official.model, p.golden.model
    feats = p.golden.features
    rng = np.random.default_rng(3)
    points = mask = None
    multimask = case == "points_multimask"
    if case.startswith("points"):
        points = {"point_coords": np.array([[[300.0, 500.0], [700.0, 200.0]]], np.float32),
                  "point_labels": np.array([[1, 0]], np.int32)}
    if case == "mask_1024":
        mask = (rng.random((1, 1, 1024, 1024)) > 0.5).astype(np.float32)
    with torch.no_grad():
        o = official._forward_sam_heads(
            torch.from_numpy(feats.image_embed),
            point_inputs={k: torch.from_numpy(v) for k, v in points.items()} if points else None,
            mask_inputs=torch.from_numpy(mask) if mask is not None else None,
            high_res_features=[torch.from_numpy(f) for f in feats.high_res_feats], multimask_output=multimask)
    g = golden.forward_sam_heads(feats.image_embed, point_inputs=points, mask_inputs=mask,
                                 high_res_features=feats.high_res_feats, multimask_output=multimask)
    names = ["low_res_multimasks", "high_res_multimasks", "ious", "low_res_masks", "high_res_masks", "obj_ptr",
             "object_score_logits"]
    for name, gv, ov in zip(names, g, o):
        assert_close(gv, ov, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["base_plus", "large"])
def test_predictor_photo_large_models(name):
    p = pair(name)
    p.set_image(photo())
    for prompt in ("point", "box_and_point"):
        for mm in (True, False):
            check(*p.both(**PROMPTS[prompt], multimask_output=mm, return_logits=True), mm)
    _pairs.pop(name)  # free the big model


# ---------------------------------------------------------------- end to end: golden checkpoint loader + image encoder
@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("checkpoints"))


_golden_full = {}


def golden_from_checkpoint(name, checkpoint_dir) -> ImagePredictor:
    """The whole golden model, loaded strictly from the official-layout .pt by golden_model.checkpoint."""
    from tests.golden.oracle import official_checkpoint
    if name not in _golden_full:
        _golden_full[name] = ImagePredictor(SAM2Model.from_checkpoint(name, official_checkpoint(name, SEED, checkpoint_dir)))
    return _golden_full[name]


@pytest.mark.parametrize("make", [photo, synthetic])
def test_end_to_end_from_checkpoint_tiny(make, checkpoint_dir):
    """Golden image encoder + heads from the saved checkpoint vs the official predictor."""
    p = pair("tiny")
    image = make()
    p.set_image(image)
    golden = golden_from_checkpoint("tiny", checkpoint_dir)
    golden.set_image(image)
    feats = p.official._features
    assert_close(golden.features.image_embed, feats["image_embed"], "image embedding (+ no_mem_embed)")
    for i, (g, o) in enumerate(zip(golden.features.high_res_feats, feats["high_res_feats"])):
        assert_close(g, o, f"high-res features {i}")
    h, w = image.shape[:2]
    prompts = [dict(point_coords=[[0.45 * w, 0.4 * h]], point_labels=[1], multimask_output=True),
               dict(point_coords=[[0.45 * w, 0.4 * h], [0.1 * w, 0.9 * h]], point_labels=[1, 0],
                    multimask_output=False),
               dict(box=[0.15 * w, 0.1 * h, 0.7 * w, 0.8 * h], multimask_output=False)]
    for prompt in prompts:
        g = golden.predict(**prompt, return_logits=True)
        with torch.no_grad():
            o = p.official.predict(**prompt, return_logits=True)
        check(g, o, prompt["multimask_output"])


@pytest.mark.slow
def test_end_to_end_from_checkpoint_small(checkpoint_dir):
    p = pair("small")
    p.set_image(photo())
    golden = golden_from_checkpoint("small", checkpoint_dir)
    golden.set_image(photo())
    for prompt in (PROMPTS["point"], PROMPTS["box_and_point"]):
        for mm in (True, False):
            g = golden.predict(**prompt, multimask_output=mm, return_logits=True)
            with torch.no_grad():
                o = p.official.predict(**prompt, multimask_output=mm, return_logits=True)
            check(g, o, mm)
    _golden_full.pop("small")


def test_segment_cli_matches_official(checkpoint_dir, tmp_path, capsys):
    """`sam2fpga segment` with an official-layout checkpoint: its saved logits are the official
    predictor's best-IoU mask logits."""
    from PIL import Image

    from sw.cli import main
    from tests.golden.oracle import official_checkpoint
    image = photo()
    Image.fromarray(image).save(tmp_path / "cat.png")
    ckpt = official_checkpoint("tiny", SEED, checkpoint_dir)
    out, logits_path = tmp_path / "cat_mask.png", tmp_path / "logits.npy"
    assert main(["segment", str(tmp_path / "cat.png"), "--point", "220,130", "--checkpoint", str(ckpt),
                 "-o", str(out), "--logits-out", str(logits_path)]) == 0
    assert "all keys matched" in capsys.readouterr().out
    p = pair("tiny")
    p.set_image(image)
    with torch.no_grad():
        masks, ious, _ = p.official.predict(point_coords=[[220.0, 130.0]], point_labels=[1], return_logits=True)
    assert_close(np.load(logits_path), masks[int(np.argmax(ious))], "CLI logits")
    assert np.asarray(Image.open(out)).shape == image.shape


def test_segment_cli_rejects_mismatched_checkpoint(checkpoint_dir, tmp_path, capsys):
    from sw.cli import main
    from tests.golden.oracle import official_checkpoint
    sd = torch.load(official_checkpoint("tiny", SEED, checkpoint_dir), weights_only=True)["model"]
    sd.pop("sam_mask_decoder.iou_token.weight")
    sd["sam_mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    bad = tmp_path / "bad.pt"
    torch.save({"model": sd}, bad)
    from PIL import Image
    Image.fromarray(photo()).save(tmp_path / "cat.png")
    assert main(["segment", str(tmp_path / "cat.png"), "--point", "220,130", "--checkpoint", str(bad),
                 "-o", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert "does not fit model 'tiny'" in err and "iou_token.weight" in err and "mask_tokens.weight" in err
