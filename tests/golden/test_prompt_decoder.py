"""Prompt encoder and mask decoder against the official SAM 2 modules (seeded random weights).

Each golden module is built strictly (Weights.check_complete) from the official
state dict restricted to its prefix, then fed the same inputs as the official one.
Tolerance: max abs error <= 1e-3 x max(1, max |official|).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from golden_model.mask_decoder import MaskDecoder, MaskDecoderConfig
from golden_model.prompt_encoder import PromptEncoder
from golden_model.weights import WeightError, Weights

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle


def assert_close(golden, official, what=""):
    official = official.detach().numpy() if hasattr(official, "detach") else np.asarray(official)
    golden = np.asarray(golden)
    assert golden.shape == official.shape, f"{what}: shape {golden.shape} != official {official.shape}"
    tol = 1e-3 * max(1.0, float(np.abs(official).max(initial=0.0)))
    err = float(np.abs(golden.astype(np.float64) - official.astype(np.float64)).max(initial=0.0))
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def weights_under(model, prefix: str) -> Weights:
    return Weights({k: v.numpy() for k, v in model.state_dict().items() if k.startswith(prefix)})


@pytest.fixture(scope="module", params=["tiny", "small"])
def official(request):
    from tests.golden.oracle import official_model
    return official_model(request.param, seed=3)


@pytest.fixture(scope="module")
def golden(official):
    pw = weights_under(official, "sam_prompt_encoder.")
    pe = PromptEncoder(pw.take_prefix("sam_prompt_encoder"))
    pw.check_complete()
    dw = weights_under(official, "sam_mask_decoder.")
    md = MaskDecoder(dw.take_prefix("sam_mask_decoder"), MaskDecoderConfig())
    dw.check_complete()
    return pe, md


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


PROMPTS = {
    "one_point": dict(points=([[[500.0, 300.0]]], [[1]])),
    "pos_neg_points": dict(points=([[[10.0, 20.0], [1000.0, 990.0], [512.0, 512.0]]], [[1, 0, 1]])),
    "box_as_points": dict(points=([[[100.0, 150.0], [700.0, 800.0], [400.0, 420.0]]], [[2, 3, 1]])),
    "box": dict(boxes=[[100.0, 150.0, 700.0, 800.0]]),
    "box_and_points": dict(points=([[[400.0, 420.0]]], [[0]]), boxes=[[100.0, 150.0, 700.0, 800.0]]),
    "padding_only": dict(points=([[[0.0, 0.0]]], [[-1]])),
    "nothing": dict(),
    "batch2": dict(points=([[[10.0, 20.0], [300.0, 40.0]], [[900.0, 100.0], [5.0, 1000.0]]], [[1, 0], [1, 1]])),
}


def _official_prompts(p):
    pts = p.get("points")
    pts = (_t(np.array(pts[0], np.float32)), _t(np.array(pts[1], np.int32))) if pts else None
    boxes = _t(np.array(p["boxes"], np.float32)) if "boxes" in p else None
    return pts, boxes


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_prompt_encoder_sparse_and_dense(official, golden, prompt):
    pe, _ = golden
    p = PROMPTS[prompt]
    pts, boxes = _official_prompts(p)
    with torch.no_grad():
        sparse_o, dense_o = official.sam_prompt_encoder(points=pts, boxes=boxes, masks=None)
    gp = (np.array(p["points"][0], np.float32), np.array(p["points"][1], np.int32)) if "points" in p else None
    gb = np.array(p["boxes"], np.float32) if "boxes" in p else None
    sparse_g, dense_g = pe(points=gp, boxes=gb, masks=None)
    assert_close(sparse_g, sparse_o, "sparse")
    assert_close(dense_g, dense_o, "dense (no mask)")


def test_prompt_encoder_mask_and_dense_pe(official, golden):
    pe, _ = golden
    rng = np.random.default_rng(1)
    masks = (rng.standard_normal((2, 1, 256, 256)) * 8).astype(np.float32)
    with torch.no_grad():
        _, dense_o = official.sam_prompt_encoder(points=None, boxes=None, masks=_t(masks))
        dpe_o = official.sam_prompt_encoder.get_dense_pe()
    _, dense_g = pe(masks=masks)
    assert_close(dense_g, dense_o, "mask embedding")
    assert_close(pe.get_dense_pe(), dpe_o, "dense pe")


def test_prompt_encoder_rejects_wrong_mask_size(golden):
    pe, _ = golden
    with pytest.raises(ValueError, match="mask prompt must be"):
        pe(masks=np.zeros((1, 1, 64, 64), np.float32))


def _decoder_inputs(official, prompt, seed=0, mask=False):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    s0 = rng.standard_normal((1, 32, 256, 256)).astype(np.float32)
    s1 = rng.standard_normal((1, 64, 128, 128)).astype(np.float32)
    p = PROMPTS[prompt]
    pts, boxes = _official_prompts(p)
    masks = (rng.standard_normal((pts[0].shape[0] if pts else 1, 1, 256, 256)) * 5).astype(np.float32) if mask else None
    with torch.no_grad():
        sparse, dense = official.sam_prompt_encoder(points=pts, boxes=boxes,
                                                    masks=_t(masks) if masks is not None else None)
    return emb, s0, s1, sparse.detach().numpy(), np.ascontiguousarray(dense.detach().numpy())


@pytest.mark.parametrize("prompt,multimask,mask", [
    ("one_point", True, False), ("one_point", False, False), ("box_and_points", True, False),
    ("pos_neg_points", False, True), ("batch2", True, False), ("batch2", False, False),
])
def test_mask_decoder_matches_official(official, golden, prompt, multimask, mask):
    _, md = golden
    emb, s0, s1, sparse, dense = _decoder_inputs(official, prompt, mask=mask)
    b = sparse.shape[0]
    with torch.no_grad():
        dpe = official.sam_prompt_encoder.get_dense_pe()
        masks_o, iou_o, tok_o, obj_o = official.sam_mask_decoder(
            image_embeddings=_t(emb), image_pe=dpe, sparse_prompt_embeddings=_t(sparse),
            dense_prompt_embeddings=_t(dense), multimask_output=multimask, repeat_image=b > 1,
            high_res_features=[_t(s0), _t(s1)])
    out = md(emb, dpe.detach().numpy(), sparse, dense, multimask, repeat_image=b > 1, high_res_features=(s0, s1))
    assert_close(out.masks, masks_o, "mask logits")
    assert_close(out.iou_pred, iou_o, "iou")
    assert_close(out.sam_tokens_out, tok_o, "sam tokens")
    assert_close(out.object_score_logits, obj_o, "object score")
    assert out.masks.shape[1] == (3 if multimask else 1)


@pytest.mark.parametrize("thresh", [0.0, 0.98, 1.01])
def test_dynamic_multimask_both_branches(official, golden, thresh):
    """Threshold 0: token 0 always stable (single mask kept); 1.01: never (best multimask taken)."""
    _, md = golden
    md_t = MaskDecoder.__new__(MaskDecoder)
    md_t.__dict__.update(md.__dict__)
    md_t.cfg = dataclasses.replace(md.cfg, dynamic_multimask_stability_thresh=thresh)
    emb, s0, s1, sparse, dense = _decoder_inputs(official, "one_point", seed=5)
    dec = official.sam_mask_decoder
    old = dec.dynamic_multimask_stability_thresh
    dec.dynamic_multimask_stability_thresh = thresh
    try:
        with torch.no_grad():
            dpe = official.sam_prompt_encoder.get_dense_pe()
            all_o = dec.predict_masks(_t(emb), dpe, _t(sparse), _t(dense), False, [_t(s0), _t(s1)])
            masks_o, iou_o, _, _ = dec(_t(emb), dpe, _t(sparse), _t(dense), False, False, [_t(s0), _t(s1)])
    finally:
        dec.dynamic_multimask_stability_thresh = old
    out = md_t(emb, dpe.detach().numpy(), sparse, dense, False, False, (s0, s1))
    assert_close(out.masks, masks_o, "dynamic mask")
    assert_close(out.iou_pred, iou_o, "dynamic iou")
    if thresh == 0.0:
        assert_close(out.masks, all_o[0][:, 0:1], "stable -> token 0")
    if thresh > 1:
        best = int(np.argmax(all_o[1][0, 1:].numpy())) + 1
        assert_close(out.masks, all_o[0][:, best:best + 1], "unstable -> best multimask")


def test_high_res_projection_matches_official(official, golden):
    _, md = golden
    rng = np.random.default_rng(2)
    f0 = rng.standard_normal((1, 256, 256, 256)).astype(np.float32)
    f1 = rng.standard_normal((1, 256, 128, 128)).astype(np.float32)
    g0, g1 = md.project_high_res(f0, f1)
    with torch.no_grad():
        assert_close(g0, official.sam_mask_decoder.conv_s0(_t(f0)), "conv_s0")
        assert_close(g1, official.sam_mask_decoder.conv_s1(_t(f1)), "conv_s1")


def test_strict_loading_names_bad_keys(official):
    sd = {k: v.numpy() for k, v in official.state_dict().items() if k.startswith("sam_mask_decoder.")}
    sd.pop("sam_mask_decoder.iou_token.weight")
    sd["sam_mask_decoder.mask_tokens.weight"] = np.zeros((3, 256), np.float32)
    sd["sam_mask_decoder.extra.weight"] = np.zeros(1, np.float32)
    w = Weights(sd)
    MaskDecoder(w.take_prefix("sam_mask_decoder"))
    with pytest.raises(WeightError) as e:
        w.check_complete()
    msg = str(e.value)
    assert "iou_token.weight" in msg and "mask_tokens.weight" in msg and "extra.weight" in msg
