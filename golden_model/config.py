"""SAM 2 hyperparameters, read from the official sam2.1 config files vendored in golden_model/configs/.

    cfg = load_config("tiny")            # tiny | small | base_plus | large (| micro: a test-size model)
    cfg.image_encoder.trunk.stages       # (1, 2, 7, 2), straight from sam2.1_hiera_t.yaml
    cfg.model_options()                  # flat SAM2Base options (yaml `model:` scalars + defaults + overrides)

Nothing here retypes a yaml value. What the yaml leaves out is the official
constructors' defaults (Hiera, FpnNeck, SAM2Base, SAM2VideoPredictor); those are
listed once below and tests/golden/test_config.py checks them against the
official signatures. `apply_postprocessing` adds the overrides that
sam2/build_sam.py applies (dynamic multimask via stability; for the video
predictor also binarised click masks for the memory encoder and hole filling).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_FILES = {
    "tiny": "sam2.1_hiera_t.yaml",
    "small": "sam2.1_hiera_s.yaml",
    "base_plus": "sam2.1_hiera_b+.yaml",
    "large": "sam2.1_hiera_l.yaml",
}

#: Scaled-down models for tests, NOT official SAM 2.1 sizes: (official base, yaml edits deep-merged into
#: its `model:` section). The same graph code and op kinds as the base, small enough for Verilator.
#: `micro`: tiny's layout (4 stages, windowed, global and q-pooled attention, every SAM head and memory
#: module) at a few channels: Hiera 8 -> 64 channels (1, 1, 2, 1 blocks, block 3 global, windows 4, 2,
#: 4, 2 so that a 64 px input's stride-4 grid tiles them), neck / decoder / memory attention 32, memory
#: 16, 2 decoder heads, one memory-attention layer and fuser block, 3 memory frames, 64 px input.
#: Not offered by the CLI's --model.
SCALED_CONFIGS = {
    "micro": ("tiny", {
        "image_encoder": {"trunk": {"embed_dim": 8, "stages": [1, 1, 2, 1], "global_att_blocks": [3],
                                    "window_spec": [4, 2, 4, 2], "window_pos_embed_bkg_spatial_size": [4, 4]},
                          "neck": {"d_model": 32, "backbone_channel_list": [64, 32, 16, 8],
                                   "position_encoding": {"num_pos_feats": 32}}},
        "memory_attention": {"d_model": 32, "num_layers": 1,
                             "layer": {"d_model": 32, "dim_feedforward": 64,
                                       "self_attention": {"embedding_dim": 32},
                                       "cross_attention": {"embedding_dim": 32, "kv_in_dim": 16}}},
        "memory_encoder": {"in_dim": 32, "out_dim": 16, "position_encoding": {"num_pos_feats": 16},
                           "fuser": {"layer": {"dim": 32}, "num_layers": 1}},
        "num_maskmem": 3, "image_size": 64,
        # golden_model.mask_decoder.MaskDecoderConfig names (SAM2Base fixes these for the official sizes)
        "sam_mask_decoder_extra_args": {"transformer_mlp_dim": 64, "transformer_num_heads": 2,
                                        "iou_head_hidden_dim": 32},
    }),
}

# Official constructor defaults for arguments the yaml files do not set.
HIERA_DEFAULTS = dict(embed_dim=96, num_heads=1, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                      window_pos_embed_bkg_spatial_size=(14, 14), drop_path_rate=0.0, q_pool=3, q_stride=(2, 2),
                      dim_mul=2.0, head_mul=2.0, window_spec=(8, 4, 14, 7), return_interm_layers=True)
FPN_NECK_DEFAULTS = dict(kernel_size=1, stride=1, padding=0, fuse_type="sum")
SINE_PE_DEFAULTS = dict(temperature=10000, normalize=True, scale=None)
SAM2BASE_DEFAULTS = dict(backbone_stride=16, binarize_mask_from_pts_for_mem_enc=False, max_cond_frames_in_attn=-1,
                         memory_temporal_stride_for_eval=1, non_overlap_masks_for_mem_enc=False,
                         max_obj_ptrs_in_encoder=16, soft_no_obj_ptr=False)
VIDEO_PREDICTOR_DEFAULTS = dict(fill_hole_area=0, non_overlap_masks=False, clear_non_cond_mem_around_input=False,
                                add_all_frames_to_correct_as_cond=False)

# sam2/build_sam.py, apply_postprocessing=True.
POSTPROCESSING_MASK_DECODER = dict(dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                                   dynamic_multimask_stability_thresh=0.98)
POSTPROCESSING_VIDEO = dict(binarize_mask_from_pts_for_mem_enc=True, fill_hole_area=8)


class ConfigError(ValueError):
    """A config file is missing, malformed or describes a model this code cannot build."""


@dataclass(frozen=True)
class HieraConfig:
    """sam2.modeling.backbones.hieradet.Hiera arguments."""
    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int]
    window_spec: tuple[int, ...]
    q_pool: int
    q_stride: tuple[int, int]
    dim_mul: float
    head_mul: float
    drop_path_rate: float
    return_interm_layers: bool

    @property
    def stage_ends(self) -> tuple[int, ...]:
        return tuple(sum(self.stages[:i]) - 1 for i in range(1, len(self.stages) + 1))

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Output channels per stage, lowest resolution first (as FpnNeck.backbone_channel_list)."""
        dims = [int(self.embed_dim * self.dim_mul ** i) for i in range(len(self.stages))]
        return tuple(dims[::-1])


@dataclass(frozen=True)
class PositionEncodingConfig:
    """sam2.modeling.position_encoding.PositionEmbeddingSine arguments."""
    num_pos_feats: int
    temperature: float
    normalize: bool
    scale: float | None


@dataclass(frozen=True)
class FpnNeckConfig:
    """sam2.modeling.backbones.image_encoder.FpnNeck arguments."""
    d_model: int
    backbone_channel_list: tuple[int, ...]
    fpn_top_down_levels: tuple[int, ...]
    fpn_interp_model: str
    fuse_type: str
    kernel_size: int
    stride: int
    padding: int
    position_encoding: PositionEncodingConfig


@dataclass(frozen=True)
class ImageEncoderConfig:
    trunk: HieraConfig
    neck: FpnNeckConfig
    scalp: int


@dataclass(frozen=True)
class SAM2Config:
    """One model size: the parsed official yaml plus what build_sam2 adds."""
    name: str
    path: Path
    image_encoder: ImageEncoderConfig
    memory_attention: MappingProxyType   # the yaml section, nested dicts (owned by golden_model.memory_attention)
    memory_encoder: MappingProxyType     # the yaml section (owned by golden_model.memory_encoder)
    options: MappingProxyType            # flat SAM2Base/SAM2VideoPredictor options
    sam_mask_decoder_extra_args: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def model_options(self) -> dict[str, Any]:
        """Flat options: yaml `model:` scalars, constructor defaults, postprocessing overrides
        (the mask-decoder extra args flattened in, as MaskDecoder keyword names)."""
        return {**self.options, **self.sam_mask_decoder_extra_args}

    @property
    def image_size(self) -> int:
        return int(self.options["image_size"])


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-6` as a float (YAML 1.1 wants a dot; OmegaConf, which the
    official code uses, accepts exponent-only floats)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"config {path} has no `model:` mapping")
    return data


def _section(node: dict, key: str, where: str, target_suffix: str | None = None) -> dict:
    value = node.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: missing section `{key}`")
    if target_suffix and not str(value.get("_target_", "")).endswith(target_suffix):
        raise ConfigError(f"{where}.{key}: _target_ {value.get('_target_')!r} is not {target_suffix}; "
                          f"only the official SAM 2 architecture is supported")
    return value


def _args(section: dict, defaults: dict, required: tuple[str, ...], where: str) -> dict:
    """Constructor arguments: defaults overridden by the yaml; unknown or missing keys are errors."""
    given = {k: v for k, v in section.items() if k != "_target_"}
    unknown = set(given) - set(defaults) - set(required)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    missing = [k for k in required if k not in given]
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    return {**defaults, **given}


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _frozen(d: dict) -> MappingProxyType:
    return MappingProxyType({k: _frozen(v) if isinstance(v, dict) else v for k, v in d.items()})


def parse_config(data: dict, name: str = "", path: Path | None = None, *,
                 apply_postprocessing: bool = True) -> SAM2Config:
    """A SAM2Config from a parsed official yaml document."""
    where = str(path or name or "config")
    model = data["model"]
    enc = _section(model, "image_encoder", where, "ImageEncoder")
    trunk_y = _section(enc, "trunk", where + ".image_encoder", "Hiera")
    neck_y = _section(enc, "neck", where + ".image_encoder", "FpnNeck")
    pe_y = _section(neck_y, "position_encoding", where + ".image_encoder.neck", "PositionEmbeddingSine")

    trunk = HieraConfig(**_tuples(_args(trunk_y, HIERA_DEFAULTS, (), where + ".trunk")))
    pe_args = _args(pe_y, SINE_PE_DEFAULTS, ("num_pos_feats",), where + ".position_encoding")
    neck_args = _tuples(_args(neck_y, {**FPN_NECK_DEFAULTS, "fpn_interp_model": "bilinear",
                                       "fpn_top_down_levels": None},
                              ("d_model", "backbone_channel_list", "position_encoding"), where + ".neck"))
    neck_args["position_encoding"] = PositionEncodingConfig(**pe_args)
    if neck_args["fpn_top_down_levels"] is None:
        neck_args["fpn_top_down_levels"] = tuple(range(len(neck_args["backbone_channel_list"])))
    neck = FpnNeckConfig(**neck_args)
    image_encoder = ImageEncoderConfig(trunk=trunk, neck=neck, scalp=int(enc.get("scalp", 0)))
    _check_image_encoder(image_encoder, where)

    options = dict(SAM2BASE_DEFAULTS)
    options.update(VIDEO_PREDICTOR_DEFAULTS)
    options.update({k: v for k, v in model.items() if not isinstance(v, dict) and k != "_target_"})
    extra = dict(model.get("sam_mask_decoder_extra_args") or {})
    if apply_postprocessing:
        extra.update(POSTPROCESSING_MASK_DECODER)
        options.update(POSTPROCESSING_VIDEO)
    return SAM2Config(name=name, path=path or Path(name), image_encoder=image_encoder,
                      memory_attention=_frozen(_section(model, "memory_attention", where)),
                      memory_encoder=_frozen(_section(model, "memory_encoder", where)),
                      options=MappingProxyType(options), sam_mask_decoder_extra_args=MappingProxyType(extra))


def _check_image_encoder(cfg: ImageEncoderConfig, where: str) -> None:
    t, n = cfg.trunk, cfg.neck
    if len(t.stages) != len(t.window_spec):
        raise ConfigError(f"{where}: {len(t.stages)} stages but {len(t.window_spec)} window sizes")
    if not 0 <= t.q_pool <= len(t.stages) - 1:
        raise ConfigError(f"{where}: q_pool={t.q_pool} needs 0..{len(t.stages) - 1}")
    if tuple(n.backbone_channel_list) != t.channel_list:
        raise ConfigError(f"{where}: neck backbone_channel_list {n.backbone_channel_list} does not match "
                          f"the trunk's channels {t.channel_list}")
    if n.fpn_interp_model not in ("nearest", "bilinear") or n.fuse_type not in ("sum", "avg"):
        raise ConfigError(f"{where}: unsupported FPN interpolation {n.fpn_interp_model!r} / fuse {n.fuse_type!r}")
    if n.position_encoding.num_pos_feats % 2:
        raise ConfigError(f"{where}: position encoding needs an even num_pos_feats")


def load_config(name: str, *, apply_postprocessing: bool = True) -> SAM2Config:
    """The config of model `name` (tiny, small, base_plus, large) from the vendored official yaml
    (or a test-size SCALED_CONFIGS model: its base's yaml with the edits).

    With apply_postprocessing (the official builders' default) the options carry
    build_sam2's mask-decoder overrides and build_sam2_video_predictor's memory
    ones (binarize_mask_from_pts_for_mem_enc, fill_hole_area); the image path
    never reads the latter."""
    if name in SCALED_CONFIGS:
        base, edits = SCALED_CONFIGS[name]
        path = CONFIG_DIR / CONFIG_FILES[base]
        data = read_yaml(path)
        data["model"] = _merged(data["model"], edits)
        return parse_config(data, name, path, apply_postprocessing=apply_postprocessing)
    if name not in CONFIG_FILES:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join([*CONFIG_FILES, *SCALED_CONFIGS])}")
    path = CONFIG_DIR / CONFIG_FILES[name]
    return parse_config(read_yaml(path), name, path, apply_postprocessing=apply_postprocessing)


def _merged(base: dict, edits: dict) -> dict:
    """`base` with `edits` deep-merged in (mappings merged key by key, anything else replaced)."""
    out = dict(base)
    for k, v in edits.items():
        out[k] = _merged(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out
