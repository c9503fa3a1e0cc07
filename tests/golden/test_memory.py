"""Memory encoder and memory attention, module by module, against the official SAM 2 modules."""
import numpy as np
import pytest

from golden_model.memory_encoder import MemoryEncoder, mask_for_memory, add_no_object_embedding
from golden_model.weights import Weights

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module", params=["tiny", "small"])
def official(request):
    from tests.golden.oracle import official_model
    return request.param, official_model(request.param, seed=3)


def golden_weights(model, prefix: str) -> Weights:
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items() if k.startswith(prefix + ".")}
    return Weights(sd)


def rel_err(golden, ref) -> float:
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    assert golden.shape == ref.shape, (golden.shape, ref.shape)
    return float(np.abs(golden - ref).max() / max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("hw", [(8, 8), (12, 10)])
def test_memory_encoder_matches_official(official, hw):
    _, model = official
    w = golden_weights(model, "memory_encoder")
    enc = MemoryEncoder(w.take_prefix("memory_encoder"))
    w.check_complete()
    rng = np.random.default_rng(hw[0])
    h, ww = hw
    pix = rng.standard_normal((1, 256, h, ww)).astype(np.float32)
    logits = (8 * rng.standard_normal((1, 1, 16 * h, 16 * ww))).astype(np.float32)
    for binarize in (False, True):
        mask = mask_for_memory(logits, scale=model.sigmoid_scale_for_mem_enc,
                               bias=model.sigmoid_bias_for_mem_enc, binarize=binarize)
        feats, pos = enc(pix, mask, skip_mask_sigmoid=True)
        with torch.no_grad():
            t = torch.from_numpy(logits)
            tm = (t > 0).float() if binarize else torch.sigmoid(t)
            tm = tm * model.sigmoid_scale_for_mem_enc + model.sigmoid_bias_for_mem_enc
            ref = model.memory_encoder(torch.from_numpy(pix), tm, skip_mask_sigmoid=True)
        assert rel_err(feats, ref["vision_features"]) < 1e-4
        assert rel_err(pos, ref["vision_pos_enc"][0]) < 1e-6
    # plain sigmoid path of the encoder itself
    feats, _ = enc(pix, logits)
    with torch.no_grad():
        ref = model.memory_encoder(torch.from_numpy(pix), torch.from_numpy(logits))
    assert rel_err(feats, ref["vision_features"]) < 1e-4


def test_encode_new_memory_matches_official(official):
    """The whole SAM2Base._encode_new_memory: binarised clicked frame, object absent -> no-object embedding."""
    _, model = official
    w = golden_weights(model, "memory_encoder")
    enc = MemoryEncoder(w.take_prefix("memory_encoder"))
    no_obj = model.no_obj_embed_spatial.detach().numpy()
    rng = np.random.default_rng(7)
    h = 8
    pix = rng.standard_normal((2, 256, h, h)).astype(np.float32)
    logits = (5 * rng.standard_normal((2, 1, 16 * h, 16 * h))).astype(np.float32)
    scores = np.array([[2.5], [-1.0]], np.float32)
    for from_pts in (False, True):
        with torch.no_grad():
            ref_f, ref_p = model._encode_new_memory(
                [torch.from_numpy(pix).flatten(2).permute(2, 0, 1)], [(h, h)], torch.from_numpy(logits),
                torch.from_numpy(scores), is_mask_from_pts=from_pts)
        binarize = model.binarize_mask_from_pts_for_mem_enc and from_pts
        mask = mask_for_memory(logits, scale=model.sigmoid_scale_for_mem_enc,
                               bias=model.sigmoid_bias_for_mem_enc, binarize=binarize)
        feats, pos = enc(pix, mask, skip_mask_sigmoid=True)
        feats = add_no_object_embedding(feats, scores, no_obj)
        assert rel_err(feats, ref_f) < 1e-4
        assert rel_err(pos, ref_p[0]) < 1e-6
