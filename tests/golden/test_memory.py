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


# ---------------------------------------------------------------- memory attention
from golden_model.memory_attention import MemoryAttention, RoPEAttention, MemoryAttentionConfig, \
    apply_rope, axial_rope  # noqa: E402


def _memory_inputs(rng, side, n_frames, n_ptr_tokens, batch=1):
    L, M = side * side, n_frames * side * side + n_ptr_tokens
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f(batch, L, 256), f(batch, L, 256), f(batch, M, 64), f(batch, M, 64)


def _official_memory_attention(model, curr, curr_pos, mem, mem_pos, n_ptr):
    t = lambda a: torch.from_numpy(a).transpose(0, 1)  # noqa: E731  batch-first -> seq-first
    with torch.no_grad():
        out = model.memory_attention(curr=[t(curr)], curr_pos=[t(curr_pos)], memory=t(mem),
                                     memory_pos=t(mem_pos), num_obj_ptr_tokens=n_ptr)
    return out.transpose(0, 1)


@pytest.mark.parametrize("side,n_frames,n_ptr,batch", [(8, 1, 0, 1), (8, 3, 16, 2), (6, 7, 64, 1)])
def test_memory_attention_matches_official(official, side, n_frames, n_ptr, batch):
    _, model = official
    w = golden_weights(model, "memory_attention")
    att = MemoryAttention(w.take_prefix("memory_attention"))
    w.check_complete()
    curr, pos, mem, mpos = _memory_inputs(np.random.default_rng(side + n_ptr), side, n_frames, n_ptr, batch)
    ref = _official_memory_attention(model, curr, pos, mem, mpos, n_ptr)
    got = att(curr, mem, pos, mpos, num_obj_ptr_tokens=n_ptr)
    assert rel_err(got, ref) < 1e-4


def test_axial_rope_at_64x64_matches_official():
    """The rotation table and its application (with k repeat and excluded pointer tokens) at the real 64x64 size."""
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis
    cis = compute_axial_cis(dim=256, end_x=64, end_y=64, theta=10000.0)
    cos, sin = axial_rope(256, 64, 64, 10000.0)
    assert np.abs(cos - cis.real.numpy()).max() < 1e-6 and np.abs(sin - cis.imag.numpy()).max() < 1e-6
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 4096, 256)).astype(np.float32)
    k = rng.standard_normal((1, 1, 2 * 4096, 256)).astype(np.float32)
    rq, rk = apply_rotary_enc(torch.from_numpy(q), torch.from_numpy(k), cis, repeat_freqs_k=True)
    assert rel_err(apply_rope(q[0, 0], cos, sin), rq[0, 0]) < 1e-6
    assert rel_err(apply_rope(k[0, 0], cos, sin), rk[0, 0]) < 1e-6


def test_cross_attention_at_64x64_matches_official(official):
    """One RoPE cross-attention at the official 64x64 size: 2 memory frames + 16 pointer tokens."""
    _, model = official
    mod = model.memory_attention.layers[0].cross_attn_image
    w = Weights({k: v.detach().numpy() for k, v in mod.state_dict().items()})
    att = RoPEAttention(w, MemoryAttentionConfig(), kv_in_dim=64, rope_k_repeat=True)
    w.check_complete()
    rng = np.random.default_rng(1)
    q = rng.standard_normal((4096, 256)).astype(np.float32)
    k = rng.standard_normal((2 * 4096 + 16, 64)).astype(np.float32)
    v = rng.standard_normal((2 * 4096 + 16, 64)).astype(np.float32)
    with torch.no_grad():
        ref = mod(torch.from_numpy(q)[None], torch.from_numpy(k)[None], torch.from_numpy(v)[None],
                  num_k_exclude_rope=16)[0]
    assert rel_err(att(q, k, v, num_k_exclude_rope=16), ref) < 1e-4


def test_memory_attention_rejects_bad_shapes(official):
    _, model = official
    att = MemoryAttention(golden_weights(model, "memory_attention").take_prefix("memory_attention"))
    curr, pos, mem, mpos = _memory_inputs(np.random.default_rng(0), 4, 1, 0)
    with pytest.raises(ValueError, match="memory must be"):
        att(curr, mem[..., :32], pos, mpos[..., :32])
    with pytest.raises(ValueError, match="square"):
        att(curr[:, :15], mem, pos[:, :15], mpos)
    with pytest.raises(ValueError, match="multiple"):
        att(curr, mem[:, :-3], pos, mpos[:, :-3])


@pytest.mark.parametrize("name", ["tiny", "small", "base_plus", "large"])
def test_tracker_config_from_vendored_yaml(name):
    """Every size's memory encoder/attention sections parse, and equal the sam2.1 values the defaults carry;
    the video options carry build_sam2_video_predictor's binarised click masks."""
    from golden_model.config import load_config
    from golden_model.memory_encoder import MemoryEncoderConfig
    from golden_model.video import TrackerConfig
    cfg = TrackerConfig.from_config(load_config(name))
    assert cfg.memory_encoder == MemoryEncoderConfig() and cfg.memory_attention == MemoryAttentionConfig()
    assert cfg == TrackerConfig()
    plain = TrackerConfig.from_config(load_config(name, apply_postprocessing=False))
    assert not plain.binarize_mask_from_pts_for_mem_enc
