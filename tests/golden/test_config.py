"""golden_model.config against the official SAM 2 package: same files, same defaults, same built model."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from golden_model import config as gc
from golden_model.config import CONFIG_FILES, ConfigError, load_config, parse_config, read_yaml

sam2 = pytest.importorskip("sam2")
OFFICIAL_DIR = Path(sam2.__file__).resolve().parent / "configs" / "sam2.1"
NAMES = list(CONFIG_FILES)


@pytest.mark.parametrize("name", NAMES)
def test_vendored_yaml_is_byte_identical_to_official(name):
    ours = (gc.CONFIG_DIR / CONFIG_FILES[name]).read_bytes()
    assert ours == (OFFICIAL_DIR / CONFIG_FILES[name]).read_bytes()


def test_every_official_sam21_config_is_vendored():
    assert sorted(p.name for p in OFFICIAL_DIR.glob("*.yaml")) == sorted(CONFIG_FILES.values())


def _defaults(fn, names):
    sig = inspect.signature(fn)
    return {n: sig.parameters[n].default for n in names}


def _norm(d):
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}


def test_constructor_defaults_are_the_official_ones():
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_video_predictor import SAM2VideoPredictor
    assert _norm(_defaults(Hiera.__init__, gc.HIERA_DEFAULTS)) == _norm(gc.HIERA_DEFAULTS)
    assert _defaults(FpnNeck.__init__, gc.FPN_NECK_DEFAULTS) == gc.FPN_NECK_DEFAULTS
    assert _defaults(PositionEmbeddingSine.__init__, gc.SINE_PE_DEFAULTS) == gc.SINE_PE_DEFAULTS
    assert _defaults(SAM2Base.__init__, gc.SAM2BASE_DEFAULTS) == gc.SAM2BASE_DEFAULTS
    assert _defaults(SAM2VideoPredictor.__init__, gc.VIDEO_PREDICTOR_DEFAULTS) == gc.VIDEO_PREDICTOR_DEFAULTS


def test_postprocessing_overrides_are_build_sams():
    """The override strings in sam2/build_sam.py, parsed, equal ours."""
    import sam2.build_sam as bs
    src = inspect.getsource(bs)
    for key, value in {**gc.POSTPROCESSING_MASK_DECODER, **gc.POSTPROCESSING_VIDEO}.items():
        prefix = "sam_mask_decoder_extra_args." if key in gc.POSTPROCESSING_MASK_DECODER else ""
        text = str(value).lower() if isinstance(value, bool) else str(value)
        assert f'"++model.{prefix}{key}={text}"' in src, key


@pytest.mark.oracle
@pytest.mark.parametrize("name", NAMES)
def test_config_matches_the_official_built_model(name):
    from sam2.build_sam import build_sam2_video_predictor
    from tests.golden.oracle import CONFIGS
    official = build_sam2_video_predictor(CONFIGS[name], ckpt_path=None, device="cpu")
    cfg = load_config(name)
    trunk, neck, enc = official.image_encoder.trunk, official.image_encoder.neck, official.image_encoder
    t = cfg.image_encoder.trunk
    assert list(t.stage_ends) == trunk.stage_ends
    assert tuple(t.global_att_blocks) == tuple(trunk.global_att_blocks)
    assert tuple(t.window_spec) == tuple(trunk.window_spec)
    assert tuple(t.window_pos_embed_bkg_spatial_size) == tuple(trunk.window_pos_embed_bkg_spatial_size)
    assert list(t.channel_list) == trunk.channel_list
    assert trunk.patch_embed.proj.out_channels == t.embed_dim
    assert trunk.blocks[0].attn.num_heads == t.num_heads
    assert tuple(trunk.q_stride) == t.q_stride
    n = cfg.image_encoder.neck
    assert list(n.backbone_channel_list) == neck.backbone_channel_list
    assert list(n.fpn_top_down_levels) == neck.fpn_top_down_levels
    assert (n.d_model, n.fpn_interp_model, n.fuse_type) == (neck.d_model, neck.fpn_interp_model, neck.fuse_type)
    assert n.position_encoding.num_pos_feats == 2 * neck.position_encoding.num_pos_feats
    assert n.position_encoding.temperature == neck.position_encoding.temperature
    assert cfg.image_encoder.scalp == enc.scalp
    opts = cfg.model_options()
    checked = 0
    for key, value in opts.items():
        if key in gc.POSTPROCESSING_MASK_DECODER:
            assert getattr(official.sam_mask_decoder, key) == value, key
            checked += 1
        elif isinstance(getattr(official, key, None), (bool, int, float, str)):  # tensors share some names
            assert getattr(official, key) == value, key
            checked += 1
    assert checked >= 30, f"only {checked} options compared"


def test_without_postprocessing_matches_plain_defaults():
    cfg = load_config("tiny", apply_postprocessing=False)
    opts = cfg.model_options()
    assert "dynamic_multimask_via_stability" not in opts
    assert opts["binarize_mask_from_pts_for_mem_enc"] is False and opts["fill_hole_area"] == 0


def test_exponent_only_floats_are_floats_like_omegaconf():
    cfg = load_config("tiny")
    assert cfg.memory_encoder["fuser"]["layer"]["layer_scale_init_value"] == pytest.approx(1e-6)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown model 'huge'.*tiny"):
        load_config("huge")


def test_malformed_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    bad.write_text("foo: 1\n")
    with pytest.raises(ConfigError, match="no `model:`"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml(tmp_path / "missing.yaml")


def test_inconsistent_configs_are_refused():
    data = read_yaml(gc.CONFIG_DIR / CONFIG_FILES["tiny"])
    data["model"]["image_encoder"]["neck"]["backbone_channel_list"] = [768, 384, 192, 64]
    with pytest.raises(ConfigError, match="does not match the trunk"):
        parse_config(data, "tiny")
    data = read_yaml(gc.CONFIG_DIR / CONFIG_FILES["tiny"])
    data["model"]["image_encoder"]["trunk"]["bogus"] = 1
    with pytest.raises(ConfigError, match="unknown keys.*bogus"):
        parse_config(data, "tiny")
    data = read_yaml(gc.CONFIG_DIR / CONFIG_FILES["tiny"])
    data["model"]["image_encoder"]["trunk"]["_target_"] = "some.OtherNet"
    with pytest.raises(ConfigError, match="only the official"):
        parse_config(data, "tiny")
