"""The SAM 2 model object in NumPy: the SAM2Base equivalent (sam2/modeling/sam2_base.py).

    model = SAM2Model.from_checkpoint("tiny", "sam2.1_hiera_tiny.pt")   # strict: every key used, shapes checked
    model = SAM2Model("tiny", seed=0)                                   # seeded random weights

Parts, each taking its weights by official key:
  image_encoder       Hiera + FPN neck (golden_model.image_encoder)
  sam_prompt_encoder  golden_model.prompt_encoder.PromptEncoder
  sam_mask_decoder    golden_model.mask_decoder.MaskDecoder (owns conv_s0 / conv_s1)
  obj_ptr_proj, no_obj_ptr   object pointer from the SAM output token (here)
  tracker             the memory half: memory encoder, memory attention, temporal
                      encodings, no_mem_embed, ... (golden_model.video.Tracker),
                      which drives this object through forward_image / forward_sam_heads.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from golden_model import nn
from golden_model.mask_decoder import MLP, Linear, MaskDecoder, MaskDecoderConfig
from golden_model.prompt_encoder import PromptEncoder
from golden_model.transforms import resize_antialias, resize_bilinear
from golden_model.weights import Weights

F32 = np.float32
NO_OBJ_SCORE = -1024.0      # mask logits of an absent object (sam2_base.NO_OBJ_SCORE)
MASK_IN_CHANS = 16          # SAM's prompt-encoder mask channels (fixed in SAM2Base._build_sam_heads)


def head_options(config) -> dict:
    """SAM2Base options of a model config as a flat dict (the keys of the official yaml's `model:`)."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    if hasattr(config, "model_options"):
        return dict(config.model_options())
    if hasattr(config, "__dataclass_fields__"):
        return {k: getattr(config, k) for k in config.__dataclass_fields__}
    return dict(vars(config))


class SAM2Model:
    """SAM2Base: image encoder + SAM heads (+ the tracker's memory parts), strict by official keys.

    `config`: golden_model.config.load_config(name) unless given (a SAM2Config, or a flat dict of
    SAM2Base options; {} means the sam2.1 defaults). `image_encoder`: normally built here from the
    config; tests may pass another object with the same call (img (B, 3, S, S) -> {"vision_features",
    "vision_pos_enc", "backbone_fpn"}), in which case the weights must not hold image_encoder.* keys."""

    def __init__(self, name: str = "tiny", *, state_dict=None, seed: int | None = None,
                 apply_postprocessing: bool = True, image_encoder=None, config=None):
        if (state_dict is None) == (seed is None):
            raise ValueError("SAM2Model needs either a state_dict (checkpoint) or a seed (random weights)")
        self.name = name
        if config is None:
            from golden_model.config import load_config
            config = load_config(name, apply_postprocessing=apply_postprocessing)
        opts = head_options(config)
        self.config, self.options = config, opts
        self.weights = weights = Weights(state_dict) if state_dict is not None else Weights(seed=seed)

        self.image_size = int(opts.get("image_size", 1024))
        self.backbone_stride = int(opts.get("backbone_stride", 16))
        neck = getattr(getattr(config, "image_encoder", None), "neck", None)
        self.hidden_dim = c = int(neck.d_model) if neck is not None else int(opts.get("hidden_dim", 256))
        self.use_high_res_features_in_sam = bool(opts.get("use_high_res_features_in_sam", True))
        self.num_feature_levels = 3 if self.use_high_res_features_in_sam else 1
        self.directly_add_no_mem_embed = bool(opts.get("directly_add_no_mem_embed", True))
        self.pred_obj_scores = bool(opts.get("pred_obj_scores", True))
        self.use_obj_ptrs_in_encoder = bool(opts.get("use_obj_ptrs_in_encoder", True))
        self.soft_no_obj_ptr = bool(opts.get("soft_no_obj_ptr", False))
        self.fixed_no_obj_ptr = bool(opts.get("fixed_no_obj_ptr", True))

        if image_encoder is None:
            from golden_model.image_encoder import build_image_encoder
            image_encoder = build_image_encoder(weights.take_prefix("image_encoder"), config)
        self.image_encoder = image_encoder

        side = self.image_size // self.backbone_stride
        self.sam_prompt_encoder = PromptEncoder(weights.take_prefix("sam_prompt_encoder"), embed_dim=c,
                                                image_embedding_size=(side, side),
                                                input_image_size=(self.image_size, self.image_size),
                                                mask_in_chans=MASK_IN_CHANS)
        dec_fields = MaskDecoderConfig.__dataclass_fields__
        # build_sam2(apply_postprocessing=True) turns dynamic multimask on; MaskDecoder's own default is off
        dec_cfg = replace(MaskDecoderConfig(), transformer_dim=c,
                          use_high_res_features=self.use_high_res_features_in_sam,
                          dynamic_multimask_via_stability=bool(opts.get("dynamic_multimask_via_stability",
                                                                        apply_postprocessing)),
                          **{k: v for k, v in opts.items()
                             if k in dec_fields and k not in ("transformer_dim", "use_high_res_features",
                                                              "dynamic_multimask_via_stability")})
        self.sam_mask_decoder = MaskDecoder(weights.take_prefix("sam_mask_decoder"), dec_cfg)

        self.obj_ptr_proj = None   # identity when the config has no object pointers
        if self.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = (MLP(weights.take_prefix("obj_ptr_proj"), c, c, c, 3)
                                 if opts.get("use_mlp_for_obj_ptr_proj", True)
                                 else Linear(weights.take_prefix("obj_ptr_proj"), c, c))
        self.no_obj_ptr = (weights.take("no_obj_ptr", (1, c))
                           if self.pred_obj_scores and self.use_obj_ptrs_in_encoder else None)

        # The memory half (owned by golden_model.video): it takes its own keys, no_mem_embed among them.
        from golden_model.video import Tracker, TrackerConfig
        # A full SAM2Config also carries the memory modules' yaml sections: read them from there.
        tracker_cfg = (TrackerConfig.from_config(config) if hasattr(config, "memory_attention")
                       else TrackerConfig.from_mapping(opts))
        self.tracker = Tracker(weights, self, tracker_cfg)
        if state_dict is not None:
            weights.check_complete()

    @classmethod
    def from_checkpoint(cls, name: str, path: str | Path, **kwargs) -> "SAM2Model":
        """An official checkpoint file ({"model": state_dict}), read without unpickling code."""
        from golden_model.checkpoint import load_state_dict
        return cls(name, state_dict=load_state_dict(path), **kwargs)

    @property
    def no_mem_embed(self) -> np.ndarray:
        return self.tracker.no_mem_embed

    # ------------------------------------------------------------ image side
    def forward_image(self, img_batch: np.ndarray) -> dict:
        """SAM2Base.forward_image: backbone outputs, levels 0 and 1 projected by conv_s0 / conv_s1 once."""
        out = self.image_encoder(np.asarray(img_batch, F32))
        out = dict(out)
        fpn = list(out["backbone_fpn"])
        if self.use_high_res_features_in_sam:
            fpn[0], fpn[1] = self.sam_mask_decoder.project_high_res(fpn[0], fpn[1])
        out["backbone_fpn"] = fpn
        return out

    def prepare_backbone_features(self, backbone_out: dict):
        """SAM2Base._prepare_backbone_features: the last num_feature_levels levels flattened to (HW, B, C)."""
        fpn = backbone_out["backbone_fpn"][-self.num_feature_levels:]
        pos = backbone_out["vision_pos_enc"][-self.num_feature_levels:]
        feat_sizes = [(x.shape[-2], x.shape[-1]) for x in pos]
        vision_feats = [x.reshape(x.shape[0], x.shape[1], -1).transpose(2, 0, 1) for x in fpn]
        vision_pos = [x.reshape(x.shape[0], x.shape[1], -1).transpose(2, 0, 1) for x in pos]
        return backbone_out, vision_feats, vision_pos, feat_sizes

    # ------------------------------------------------------------ SAM heads
    def forward_sam_heads(self, backbone_features, point_inputs=None, mask_inputs=None,
                          high_res_features=None, multimask_output=False):
        """SAM2Base._forward_sam_heads. Returns (low_res_multimasks, high_res_multimasks, ious,
        low_res_masks, high_res_masks, obj_ptr, object_score_logits)."""
        b = backbone_features.shape[0]
        side = self.image_size // self.backbone_stride
        if backbone_features.shape[1:] != (self.hidden_dim, side, side):
            raise ValueError(f"backbone features must be (B, {self.hidden_dim}, {side}, {side}), "
                             f"got {backbone_features.shape}")
        if point_inputs is not None:
            coords = np.asarray(point_inputs["point_coords"], F32)
            labels = np.asarray(point_inputs["point_labels"], np.int32)
        else:  # no points: one padding point
            coords = np.zeros((b, 1, 2), F32)
            labels = -np.ones((b, 1), np.int32)
        mask_prompt = None
        if mask_inputs is not None:
            mask_inputs = np.asarray(mask_inputs, F32)
            if mask_inputs.ndim != 4 or mask_inputs.shape[:2] != (b, 1):
                raise ValueError(f"mask_inputs must be (B, 1, H, W), got {mask_inputs.shape}")
            size = self.sam_prompt_encoder.mask_input_size
            mask_prompt = mask_inputs if mask_inputs.shape[-2:] == size else resize_antialias(mask_inputs, size)
        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        out = self.sam_mask_decoder(backbone_features, self.sam_prompt_encoder.get_dense_pe(), sparse, dense,
                                    multimask_output, repeat_image=False, high_res_features=high_res_features)
        low_res_multimasks, ious, sam_tokens, obj = out.masks, out.iou_pred, out.sam_tokens_out, out.object_score_logits
        if self.pred_obj_scores:
            is_obj = obj > 0
            low_res_multimasks = np.where(is_obj[:, None, None], low_res_multimasks, F32(NO_OBJ_SCORE))
        low_res_multimasks = low_res_multimasks.astype(F32, copy=False)
        high_res_multimasks = resize_bilinear(low_res_multimasks, (self.image_size, self.image_size))
        sam_token = sam_tokens[:, 0]
        if multimask_output:
            best = np.argmax(ious, axis=-1)
            rows = np.arange(b)
            low_res_masks = low_res_multimasks[rows, best][:, None]
            high_res_masks = high_res_multimasks[rows, best][:, None]
            if sam_tokens.shape[1] > 1:
                sam_token = sam_tokens[rows, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
        obj_ptr = self.obj_ptr_proj(sam_token) if self.obj_ptr_proj is not None else sam_token
        if self.pred_obj_scores and self.no_obj_ptr is not None:
            lam = nn.sigmoid(obj) if self.soft_no_obj_ptr else is_obj.astype(F32)
            if self.fixed_no_obj_ptr:
                obj_ptr = lam * obj_ptr
            obj_ptr = obj_ptr + (F32(1) - lam) * self.no_obj_ptr
        return low_res_multimasks, high_res_multimasks, ious, low_res_masks, high_res_masks, obj_ptr, obj

