"""SAM 2 video tracking in NumPy: the memory bank and the video predictor API.

Mirrors SAM2Base's tracking half (_prepare_memory_conditioned_features,
_encode_new_memory, _track_step, _use_mask_as_output in sam2/modeling/sam2_base.py)
and SAM2VideoPredictor (init_state, add_new_points_or_box, add_new_mask,
propagate_in_video with reverse and start_frame_idx, reset_state) for any number of
objects: one image-encoder pass per frame shared by all, one memory bank per object.
Not carried over: clear_all_prompts_in_frame, remove_object, non_overlap_masks and
fill_hole_area (hole filling needs the official CUDA extension; off in the oracle tests).

The image path (image encoder, prompt encoder, mask decoder, object pointer) is
another module's job: `Tracker` takes any `image_model` with
  forward_image(img (1, 3, S, S)) -> {"backbone_fpn": [NCHW x3], "vision_pos_enc": [NCHW x3]}
      (levels 0 and 1 already projected by the decoder's conv_s0 / conv_s1)
  forward_sam_heads(backbone_features, point_inputs=None, mask_inputs=None,
                    high_res_features=None, multimask_output=False)
      -> (low_res_multimasks, high_res_multimasks, ious, low_res_masks,
          high_res_masks, obj_ptr, object_score_logits)
exactly as SAM2Base.forward_image / _forward_sam_heads. Everything memory-side
(memory encoder, memory attention, temporal encodings, no-memory and no-object
embeddings) lives here and takes its weights by official key.

Memory frames are stored rounded to bfloat16, as the official predictor stores them.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from golden_model import nn
from golden_model.memory_attention import MemoryAttention, MemoryAttentionConfig
from golden_model.memory_encoder import (MemoryEncoder, MemoryEncoderConfig, add_no_object_embedding,
                                         mask_for_memory)
from golden_model.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_antialias, resize_bilinear, rgb8

F32 = np.float32
NO_OBJ_SCORE = -1024.0          # mask logits of an absent object (sam2_base.NO_OBJ_SCORE)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class TrackerConfig:
    """SAM2Base's tracking options; defaults are the sam2.1 configs as the official video
    predictor builds them (apply_postprocessing=True turns binarize_mask_from_pts_for_mem_enc on)."""
    image_size: int = 1024
    backbone_stride: int = 16
    hidden_dim: int = 256
    mem_dim: int = 64
    num_maskmem: int = 7
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = True
    use_mask_input_as_output_without_sam: bool = True
    max_cond_frames_in_attn: int = -1
    directly_add_no_mem_embed: bool = True
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    memory_temporal_stride_for_eval: int = 1
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    pred_obj_scores: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    no_obj_embed_spatial: bool = True
    # SAM2VideoPredictor options
    add_all_frames_to_correct_as_cond: bool = False
    clear_non_cond_mem_around_input: bool = False    # True is refused: sam2 1.1.0 fails with it
    memory_encoder: MemoryEncoderConfig = field(default_factory=MemoryEncoderConfig)
    memory_attention: MemoryAttentionConfig = field(default_factory=MemoryAttentionConfig)

    @classmethod
    def from_mapping(cls, options) -> "TrackerConfig":
        """Take the options this class knows from a flat model config (unknown keys are ignored);
        nested `memory_encoder` / `memory_attention` yaml sections, when present, configure those modules."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("memory_encoder", "memory_attention")}
        cfg = replace(cls(), **{k: v for k, v in options.items() if k in known})
        if options.get("memory_encoder") is not None:
            cfg = replace(cfg, memory_encoder=MemoryEncoderConfig.from_yaml(options["memory_encoder"]))
        if options.get("memory_attention") is not None:
            cfg = replace(cfg, memory_attention=MemoryAttentionConfig.from_yaml(options["memory_attention"]))
        return cfg

    @classmethod
    def from_config(cls, config) -> "TrackerConfig":
        """From golden_model.config.SAM2Config: flat options plus the memory modules' yaml sections; the
        widths as SAM2Base derives them (hidden_dim: the neck's d_model, mem_dim: the memory's out_dim)."""
        return cls.from_mapping({**config.model_options(), "memory_encoder": config.memory_encoder,
                                 "memory_attention": config.memory_attention,
                                 "hidden_dim": int(config.image_encoder.neck.d_model),
                                 "mem_dim": int(config.memory_encoder["out_dim"])})


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), kept in float32: torch's .to(torch.bfloat16)."""
    u = np.ascontiguousarray(x, F32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    rounded = np.where(np.isnan(x), u | np.uint32(0x00400000), rounded)  # keep NaNs NaN (quiet)
    return rounded.astype(np.uint32).view(F32)


def get_1d_sine_pe(pos: np.ndarray, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """sam2_utils.get_1d_sine_pe: (N,) positions -> (N, dim), sines then cosines (not interleaved)."""
    half = dim // 2
    dim_t = np.arange(half, dtype=F32)
    dim_t = np.power(np.float64(temperature), (F32(2) * np.floor_divide(dim_t, F32(2)) / F32(half))
                     .astype(np.float64)).astype(F32)
    pe = np.asarray(pos, F32)[:, None] / dim_t
    return np.concatenate([np.sin(pe), np.cos(pe)], axis=-1)


def select_closest_cond_frames(frame_idx: int, cond_outputs: dict, max_cond_frame_num: int):
    """Up to max_cond_frame_num conditioning frames closest in time: the nearest before, the nearest
    at-or-after, then the temporally closest others. Returns (selected, unselected) dicts."""
    if max_cond_frame_num == -1 or len(cond_outputs) <= max_cond_frame_num:
        return cond_outputs, {}
    if max_cond_frame_num < 2:
        raise ValueError("max_cond_frames_in_attn must allow 2+ conditioning frames")
    selected = {}
    before = max((t for t in cond_outputs if t < frame_idx), default=None)
    if before is not None:
        selected[before] = cond_outputs[before]
    after = min((t for t in cond_outputs if t >= frame_idx), default=None)
    if after is not None:
        selected[after] = cond_outputs[after]
    remain = max_cond_frame_num - len(selected)
    rest = sorted((t for t in cond_outputs if t not in selected), key=lambda t: abs(t - frame_idx))[:remain]
    selected.update((t, cond_outputs[t]) for t in rest)
    return selected, {t: v for t, v in cond_outputs.items() if t not in selected}


class Tracker:
    """SAM2Base's memory half around an image model: one tracking step per frame."""

    def __init__(self, weights, image_model, cfg: TrackerConfig = TrackerConfig()):
        self.cfg, self.image_model = cfg, image_model
        c, m = cfg.hidden_dim, cfg.mem_dim
        if cfg.memory_encoder.out_dim != m or cfg.memory_attention.kv_in_dim != m:
            raise ValueError("mem_dim must equal the memory encoder's out_dim and the attention's kv_in_dim")
        self.memory_encoder = MemoryEncoder(weights.take_prefix("memory_encoder"), cfg.memory_encoder)
        self.memory_attention = MemoryAttention(weights.take_prefix("memory_attention"), cfg.memory_attention)
        self.maskmem_tpos_enc = weights.take("maskmem_tpos_enc", (cfg.num_maskmem, 1, 1, m)).reshape(-1, m)
        self.no_mem_embed = weights.take("no_mem_embed", (1, 1, c)).reshape(c)
        self.no_mem_pos_enc = weights.take("no_mem_pos_enc", (1, 1, c)).reshape(c)
        self.no_obj_embed_spatial = weights.take("no_obj_embed_spatial", (1, m)) if cfg.no_obj_embed_spatial else None
        self.obj_ptr_tpos_proj = None
        if cfg.use_obj_ptrs_in_encoder and cfg.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = (weights.take("obj_ptr_tpos_proj.weight", (m, c)),
                                      weights.take("obj_ptr_tpos_proj.bias", (m,)))
        self.mask_downsample = None
        if cfg.use_obj_ptrs_in_encoder:  # mask prompt (image scale 0..1) -> SAM logit scale at stride 4
            self.mask_downsample = (weights.take("mask_downsample.weight", (1, 1, 4, 4)),
                                    weights.take("mask_downsample.bias", (1,)))

    # ------------------------------------------------------------------ memory side
    def prepare_memory_conditioned_features(self, frame_idx, is_init_cond_frame, vision_feat, vision_pos,
                                            output_dict, num_frames, track_in_reverse=False):
        """vision_feat/pos (B, HW, C) of the lowest-resolution level -> pix_feat_with_mem (B, C, H, W)."""
        cfg = self.cfg
        b, hw, c = vision_feat.shape
        side = math.isqrt(hw)
        if cfg.num_maskmem == 0:
            return vision_feat.transpose(0, 2, 1).reshape(b, c, side, side)
        num_obj_ptr_tokens = 0
        if is_init_cond_frame:
            if cfg.directly_add_no_mem_embed:
                return (vision_feat + self.no_mem_embed).transpose(0, 2, 1).reshape(b, c, side, side)
            if cfg.mem_dim != c:  # the official expand() of a (1, 1, C) embedding to mem_dim fails likewise
                raise ValueError("a no-memory token on initial frames needs mem_dim == hidden_dim")
            memory = np.broadcast_to(self.no_mem_embed, (b, 1, c))
            memory_pos = np.broadcast_to(self.no_mem_pos_enc, (b, 1, c))
        else:
            memory, memory_pos = [], []
            t_pos_and_prevs, selected, unselected = self.memory_frames(frame_idx, output_dict, track_in_reverse)
            for t_pos, prev in t_pos_and_prevs:
                feats = prev["maskmem_features"]
                memory.append(feats.reshape(b, cfg.mem_dim, -1).transpose(0, 2, 1))
                enc = np.broadcast_to(prev["maskmem_pos_enc"], feats.shape).reshape(b, cfg.mem_dim, -1)
                memory_pos.append(enc.transpose(0, 2, 1) + self.maskmem_tpos_enc[cfg.num_maskmem - t_pos - 1])
            if cfg.use_obj_ptrs_in_encoder:
                ptrs, ptr_pos = self._object_pointers(frame_idx, selected, unselected, output_dict, num_frames,
                                                      track_in_reverse, b, c)
                if ptrs is not None:
                    memory.append(ptrs)
                    memory_pos.append(ptr_pos)
                    num_obj_ptr_tokens = ptrs.shape[1]
            memory = np.concatenate(memory, axis=1)
            memory_pos = np.concatenate(memory_pos, axis=1)
        out = self.memory_attention(vision_feat, memory, vision_pos, memory_pos, num_obj_ptr_tokens)
        return out.transpose(0, 2, 1).reshape(b, c, side, side)

    def memory_frames(self, frame_idx, output_dict, track_in_reverse=False):
        """The memory frames a non-initial frame attends to, as SAM2Base._prepare_memory_conditioned_features
        picks them: ([(t_pos, output)] conditioning frames first (t_pos 0), then up to num_maskmem - 1
        recent frames; frames without an output left out), selected and unselected conditioning outputs."""
        cfg = self.cfg
        cond_outputs = output_dict["cond_frame_outputs"]
        if not cond_outputs:
            raise RuntimeError("tracking a frame needs at least one conditioning frame")
        selected, unselected = select_closest_cond_frames(frame_idx, cond_outputs, cfg.max_cond_frames_in_attn)
        t_pos_and_prevs = [(0, out) for out in selected.values()]
        stride = cfg.memory_temporal_stride_for_eval
        for t_pos in range(1, cfg.num_maskmem):
            t_rel = cfg.num_maskmem - t_pos          # frames before the current one
            if t_rel == 1:
                prev = frame_idx + t_rel if track_in_reverse else frame_idx - t_rel
            elif not track_in_reverse:
                prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
            else:
                prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
            out = output_dict["non_cond_frame_outputs"].get(prev, unselected.get(prev))
            t_pos_and_prevs.append((t_pos, out))
        return [(t, o) for t, o in t_pos_and_prevs if o is not None], selected, unselected

    def object_pointer_list(self, frame_idx, selected, unselected, output_dict, num_frames, reverse):
        """The object pointers a frame attends to: [(temporal position, obj_ptr)], conditioning frames first,
        then up to max_obj_ptrs_in_encoder - 1 recent frames; and the position normaliser t_diff_max."""
        cfg = self.cfg
        sign = -1 if reverse else 1
        max_ptrs = min(num_frames, cfg.max_obj_ptrs_in_encoder)
        if cfg.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond = {t: o for t, o in selected.items() if (t >= frame_idx if reverse else t <= frame_idx)}
        else:
            ptr_cond = selected
        pos_and_ptrs = [((frame_idx - t) * sign if cfg.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t),
                         o["obj_ptr"]) for t, o in ptr_cond.items()]
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            o = output_dict["non_cond_frame_outputs"].get(t, unselected.get(t))
            if o is not None:
                pos_and_ptrs.append((t_diff, o["obj_ptr"]))
        return pos_and_ptrs, max_ptrs - 1

    def bank_features(self, feats: np.ndarray) -> np.ndarray:
        """A memory frame as the bank stores it: rounded to bfloat16, as the official predictor."""
        return to_bfloat16(feats)

    def _object_pointers(self, frame_idx, selected, unselected, output_dict, num_frames, reverse, b, c):
        """Object pointers of conditioning frames and up to max-1 recent frames, split into mem_dim tokens,
        with their (signed) temporal sine encoding: ((B, tokens, mem_dim), (B, tokens, mem_dim))."""
        cfg = self.cfg
        pos_and_ptrs, t_diff_max = self.object_pointer_list(frame_idx, selected, unselected, output_dict,
                                                            num_frames, reverse)
        if not pos_and_ptrs:
            return None, None
        pos_list = np.array([p for p, _ in pos_and_ptrs], np.int64)
        ptrs = np.stack([p for _, p in pos_and_ptrs], axis=0)            # (P, B, C)
        m = cfg.mem_dim
        if cfg.add_tpos_enc_to_obj_ptrs:
            tpos_dim = c if cfg.proj_tpos_enc_in_obj_ptrs else m
            pos = get_1d_sine_pe((pos_list / t_diff_max).astype(F32), tpos_dim)
            if self.obj_ptr_tpos_proj is not None:
                pos = nn.linear(pos, *self.obj_ptr_tpos_proj)
            pos = np.broadcast_to(pos[:, None, :], (len(pos_list), b, m))
        else:
            pos = np.zeros((len(pos_list), b, m), F32)
        if m < c:  # split each pointer into c // m tokens
            split = c // m
            ptrs = ptrs.reshape(-1, b, split, m).transpose(0, 2, 1, 3).reshape(-1, b, m)
            pos = np.repeat(pos, split, axis=0)
        return np.ascontiguousarray(ptrs.transpose(1, 0, 2)), np.ascontiguousarray(pos.transpose(1, 0, 2))

    def encode_new_memory(self, vision_feat, pred_masks_high_res, object_score_logits, is_mask_from_pts):
        """SAM2Base._encode_new_memory: (features (B, mem_dim, H, W), pos (B, mem_dim, H, W))."""
        cfg = self.cfg
        b, hw, c = vision_feat.shape
        side = math.isqrt(hw)
        pix_feat = vision_feat.transpose(0, 2, 1).reshape(b, c, side, side)
        mask = mask_for_memory(pred_masks_high_res, scale=cfg.sigmoid_scale_for_mem_enc,
                               bias=cfg.sigmoid_bias_for_mem_enc,
                               binarize=cfg.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts)
        feats, pos = self.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)
        feats = add_no_object_embedding(feats, object_score_logits, self.no_obj_embed_spatial)
        return feats, pos

    # ------------------------------------------------------------------ one frame
    def use_mask_as_output(self, backbone_features, high_res_features, mask_inputs):
        """A mask prompt taken as the output (+-10 logits); the pointer still comes from the SAM heads."""
        cfg = self.cfg
        out_scale, out_bias = F32(20.0), F32(-10.0)
        m = mask_inputs.astype(F32)
        high = m * out_scale + out_bias
        low = resize_antialias(high, (high.shape[-2] // 4, high.shape[-1] // 4))
        ious = np.ones((m.shape[0], 1), F32)
        if not cfg.use_obj_ptrs_in_encoder:
            obj_ptr = np.zeros((m.shape[0], cfg.hidden_dim), F32)
        else:
            w, bias = self.mask_downsample
            obj_ptr = self.image_model.forward_sam_heads(
                backbone_features=backbone_features, mask_inputs=nn.conv2d(m, w, bias, stride=4),
                high_res_features=high_res_features)[5]
        present = (m.reshape(m.shape[0], -1) > 0).any(axis=1)[:, None].astype(F32)
        object_score_logits = out_scale * present + out_bias
        if cfg.pred_obj_scores:
            if cfg.fixed_no_obj_ptr:
                obj_ptr = present * obj_ptr
            obj_ptr = obj_ptr + (1 - present) * self.image_model.no_obj_ptr.reshape(1, -1)
        return low, high, ious, low, high, obj_ptr, object_score_logits

    def use_multimask(self, is_init_cond_frame, point_inputs) -> bool:
        cfg = self.cfg
        n = 0 if point_inputs is None else point_inputs["point_labels"].shape[1]
        return (cfg.multimask_output_in_sam and (is_init_cond_frame or cfg.multimask_output_for_tracking)
                and cfg.multimask_min_pt_num <= n <= cfg.multimask_max_pt_num)

    def track_step(self, frame_idx, is_init_cond_frame, features, point_inputs, mask_inputs, output_dict,
                   num_frames, track_in_reverse=False, run_mem_encoder=True, prev_sam_mask_logits=None) -> dict:
        """SAM2Base.track_step on one frame's FrameFeatures: the frame's output dict."""
        cfg = self.cfg
        high_res = features.high_res
        if mask_inputs is not None and cfg.use_mask_input_as_output_without_sam:
            sam_outputs = self.use_mask_as_output(features.pix_feat(), high_res, mask_inputs)
        else:
            pix_feat = self.prepare_memory_conditioned_features(
                frame_idx, is_init_cond_frame, features.vision_feat, features.vision_pos, output_dict,
                num_frames, track_in_reverse)
            if prev_sam_mask_logits is not None:
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("previous mask logits go with new points only")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self.image_model.forward_sam_heads(
                backbone_features=pix_feat, point_inputs=point_inputs, mask_inputs=mask_inputs,
                high_res_features=high_res,
                multimask_output=self.use_multimask(is_init_cond_frame, point_inputs))
        _, _, _, low_res_masks, high_res_masks, obj_ptr, object_score_logits = sam_outputs
        out = {"point_inputs": point_inputs, "mask_inputs": mask_inputs, "pred_masks": low_res_masks,
               "pred_masks_high_res": high_res_masks, "obj_ptr": obj_ptr,
               "object_score_logits": object_score_logits, "maskmem_features": None, "maskmem_pos_enc": None}
        if run_mem_encoder and cfg.num_maskmem > 0:
            out["maskmem_features"], out["maskmem_pos_enc"] = self.encode_new_memory(
                features.vision_feat, high_res_masks, object_score_logits, point_inputs is not None)
        return out


@dataclass
class FrameFeatures:
    """One frame's backbone output, flattened as SAM2Base._prepare_backbone_features does."""
    vision_feat: np.ndarray          # (B, HW, C) lowest-resolution level
    vision_pos: np.ndarray           # (B, HW, C)
    high_res: list | None            # [level 0, level 1] NCHW (already conv_s0 / conv_s1 projected)
    size: tuple[int, int]

    def pix_feat(self) -> np.ndarray:
        b, _, c = self.vision_feat.shape
        return self.vision_feat.transpose(0, 2, 1).reshape(b, c, *self.size)


def frame_features(backbone_out: dict, num_feature_levels: int = 3) -> FrameFeatures:
    fpn = backbone_out["backbone_fpn"][-num_feature_levels:]
    pos = backbone_out["vision_pos_enc"][-num_feature_levels:]
    top, top_pos = fpn[-1], pos[-1]
    b, c, h, w = top.shape
    # .copy(), not np.ascontiguousarray: a runner's lazy array view (sw.runtime.device_tensor.Resident) stays one
    flat = lambda x: x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1).copy()  # noqa: E731
    return FrameFeatures(flat(top), flat(np.broadcast_to(top_pos, top.shape)),
                         list(fpn[:-1]) if num_feature_levels > 1 else None, (h, w))


# ---------------------------------------------------------------------- frames
def list_frames(directory) -> list[Path]:
    """Image files (jpg/jpeg/png, any case) in `directory`, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"frames directory {d} does not exist or is not a directory")
    frames = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise ValueError(f"no frames (.jpg/.jpeg/.png) in {d}")
    return frames


def load_frame(source, image_size: int) -> tuple[np.ndarray, int, int]:
    """A frame as the official loader prepares it: RGB, PIL-resized to image_size^2, /255, ImageNet
    normalised: ((3, S, S) float32, video height, video width)."""
    from PIL import Image, UnidentifiedImageError
    try:
        img = Image.open(source) if isinstance(source, (str, Path)) else Image.fromarray(np.asarray(source))
        img.load()
    except (OSError, UnidentifiedImageError, TypeError, ValueError) as e:
        raise ValueError(f"cannot read frame {source if isinstance(source, (str, Path)) else '(array)'}: {e}") from e
    width, height = img.size
    try:
        rgb = Image.fromarray(rgb8(img))      # 16-bit scaled to 8 bits, not clipped
    except ValueError as e:
        raise ValueError(f"cannot use frame {source if isinstance(source, (str, Path)) else '(array)'}: {e}") from e
    arr = np.array(rgb.resize((image_size, image_size)))
    x = arr.transpose(2, 0, 1).astype(F32) / F32(255)
    x = (x - np.asarray(IMAGENET_MEAN, F32)[:, None, None]) / np.asarray(IMAGENET_STD, F32)[:, None, None]
    return x.astype(F32), height, width


def _empty_bank() -> dict:
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


@dataclass
class ObjectState:
    """One object's slice of SAM2VideoPredictor's inference_state: its prompts, its own memory bank
    (outputs with memories and object pointers) and the frames it has been tracked on."""
    point_inputs: dict = field(default_factory=dict)      # frame -> {"point_coords", "point_labels"}
    mask_inputs: dict = field(default_factory=dict)       # frame -> (1, 1, S, S) mask
    output_dict: dict = field(default_factory=_empty_bank)
    temp_output_dict: dict = field(default_factory=_empty_bank)   # prompt outputs not yet in the bank
    frames_tracked: dict = field(default_factory=dict)    # frame -> {"reverse": bool}

    def output(self, frame_idx: int) -> dict | None:
        """The newest output on a frame (temporary prompt outputs first), or None if untracked."""
        for d in (self.temp_output_dict, self.output_dict):
            for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                if frame_idx in d[key]:
                    return d[key][frame_idx]
        return None


@dataclass
class VideoState:
    """What SAM2VideoPredictor keeps in its inference_state: the frames, one ObjectState per object
    (in the order objects were first prompted: the official obj_idx), the image features of recently
    used frames (shared by all objects) and the memory position encoding (the same for every frame)."""
    frames: list                         # paths or HxWx3 uint8 arrays
    video_height: int
    video_width: int
    objects: dict = field(default_factory=dict)           # obj_id -> ObjectState
    cached_features: OrderedDict = field(default_factory=OrderedDict)
    maskmem_pos_enc: np.ndarray | None = None
    image_encoder_calls: int = 0         # image-encoder passes so far (one per frame, whatever the object count)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def obj_ids(self) -> list:
        return list(self.objects)


class VideoPredictor:
    """SAM2VideoPredictor in NumPy: any number of objects, each with its own memory bank and object
    pointers, tracked one at a time (batch 1, as the official) on image features computed once per frame.

    Prompts may go on any frame: on a frame the object has not been tracked on they make it a
    conditioning frame (SAM on that frame, no memory); on a tracked frame they correct the tracked
    mask (memory used, the previous mask logits go in with the clicks) and the frame stays a
    non-conditioning frame unless add_all_frames_to_correct_as_cond. Prompt outputs wait in
    temp_output_dict; propagate_in_video encodes their memories first, then tracks."""

    def __init__(self, tracker: Tracker, feature_cache_size: int = 1):
        if tracker.cfg.clear_non_cond_mem_around_input:
            # sam2 1.1.0 calls a method it does not define (_clear_obj_non_cond_mem_around_input) when
            # this is on, so there is no official behaviour to follow
            raise ValueError("clear_non_cond_mem_around_input is not supported (sam2 1.1.0 fails with it on)")
        self.tracker, self.cfg = tracker, tracker.cfg
        self.feature_cache_size = max(1, feature_cache_size)  # 1 = the official (the last frame used)

    # ---------------------------------------------------------------- state
    def init_state(self, frames) -> VideoState:
        """frames: a directory of images (sorted by name), a list of image paths, or a list of HxWx3 uint8 arrays."""
        if isinstance(frames, (str, Path)):
            frames = list_frames(frames)
        frames = list(frames)
        if not frames:
            raise ValueError("a video needs at least one frame")
        _, h, w = load_frame(frames[0], 8)
        state = VideoState(frames=frames, video_height=h, video_width=w)
        self._features(state, 0)  # warm up on frame 0, as the official init_state does
        return state

    def reset_state(self, state: VideoState) -> None:
        """Forget every object and prompt (the cached image features stay)."""
        state.objects.clear()

    def _features(self, state: VideoState, frame_idx: int) -> FrameFeatures:
        """The frame's image features: computed once and shared by every object (an LRU cache of
        feature_cache_size frames; the official keeps the last frame used)."""
        cache = state.cached_features
        if frame_idx in cache:
            cache.move_to_end(frame_idx)
            return cache[frame_idx]
        img, h, w = load_frame(state.frames[frame_idx], self.cfg.image_size)
        if (h, w) != (state.video_height, state.video_width):
            raise ValueError(f"frame {frame_idx} is {w}x{h}, the video is {state.video_width}x{state.video_height}")
        feats = frame_features(self.tracker.image_model.forward_image(img[None]))
        state.image_encoder_calls += 1
        cache[frame_idx] = feats
        while len(cache) > self.feature_cache_size:
            cache.popitem(last=False)
        return feats

    def _check_frame(self, state, frame_idx):
        if not (isinstance(frame_idx, (int, np.integer)) and 0 <= frame_idx < state.num_frames):
            raise ValueError(f"frame index {frame_idx} is outside the video (0..{state.num_frames - 1})")

    # ---------------------------------------------------------------- prompts
    def add_new_points_or_box(self, state: VideoState, frame_idx: int, obj_id, points=None, labels=None,
                              clear_old_points: bool = True, normalize_coords: bool = True, box=None):
        """Clicks on a frame (x, y in video pixels; label 1 positive, 0 negative) and/or a box
        (x0, y0, x1, y1, sent first as two points labelled 2 and 3) for object `obj_id` (a new id adds
        an object): returns (frame_idx, obj_ids, video-resolution mask logits (objects, 1, H, W)), every
        object's newest output on that frame (-1024 where an object has none)."""
        self._check_frame(state, frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is None and box is None:
            raise ValueError("give points (with labels) or a box")
        pts = np.zeros((0, 2), F32) if points is None else np.asarray(points, F32).reshape(-1, 2)
        lab = np.zeros((0,), np.int32) if labels is None else np.asarray(labels, np.int32).reshape(-1)
        if len(pts) != len(lab):
            raise ValueError(f"need one label per point, got {len(pts)} points and {len(lab)} labels")
        if box is not None:
            if not clear_old_points:
                raise ValueError("a box must come before any point: use clear_old_points=True")
            pts = np.concatenate([np.asarray(box, F32).reshape(2, 2), pts])
            lab = np.concatenate([np.array([2, 3], np.int32), lab])
        obj = state.objects.setdefault(obj_id, ObjectState())
        if normalize_coords:
            pts = pts / np.array([state.video_width, state.video_height], F32)
        pts = (pts * F32(self.cfg.image_size))[None]
        lab = lab[None]
        old = None if clear_old_points else obj.point_inputs.get(frame_idx)
        if old is not None:
            pts = np.concatenate([old["point_coords"], pts], axis=1)
            lab = np.concatenate([old["point_labels"], lab], axis=1)
        point_inputs = {"point_coords": pts, "point_labels": lab}
        obj.point_inputs[frame_idx] = point_inputs
        obj.mask_inputs.pop(frame_idx, None)
        return self._interact(state, obj_id, frame_idx, point_inputs, None)

    add_new_points = add_new_points_or_box  # the official's deprecated name

    def add_new_mask(self, state: VideoState, frame_idx: int, obj_id, mask):
        """A binary mask (H, W; non-zero = object) for object `obj_id` on a frame: returns as
        add_new_points_or_box. Masks not S x S are resized (antialiased bilinear, >= 0.5)."""
        self._check_frame(state, frame_idx)
        m = np.asarray(mask)
        if m.ndim != 2:
            raise ValueError(f"a mask must be 2-D (H, W), got shape {m.shape}")
        obj = state.objects.setdefault(obj_id, ObjectState())
        m = m.astype(bool).astype(F32)[None, None]
        s = self.cfg.image_size
        if m.shape[-2:] != (s, s):
            m = (resize_antialias(m, (s, s)) >= 0.5).astype(F32)
        obj.mask_inputs[frame_idx] = m
        obj.point_inputs.pop(frame_idx, None)
        return self._interact(state, obj_id, frame_idx, None, m)

    def _interact(self, state, obj_id, frame_idx, point_inputs, mask_inputs):
        obj = state.objects[obj_id]
        is_init = frame_idx not in obj.frames_tracked
        reverse = False if is_init else obj.frames_tracked[frame_idx]["reverse"]
        is_cond = is_init or self.cfg.add_all_frames_to_correct_as_cond
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        prev_logits = None
        if point_inputs is not None:  # clicks refine the object's newest mask on this frame
            prev = obj.temp_output_dict[key].get(frame_idx)
            if prev is None:
                prev = obj.output_dict["cond_frame_outputs"].get(frame_idx)
            if prev is None:
                prev = obj.output_dict["non_cond_frame_outputs"].get(frame_idx)
            if prev is not None and prev["pred_masks"] is not None:
                prev_logits = np.clip(prev["pred_masks"], -32.0, 32.0)
        out = self._run_single_frame(state, obj, frame_idx, is_init, point_inputs, mask_inputs, reverse,
                                     run_mem_encoder=False, prev_sam_mask_logits=prev_logits)
        obj.temp_output_dict[key][frame_idx] = out
        return frame_idx, state.obj_ids, self._consolidated_masks(state, frame_idx, key)

    def _consolidated_masks(self, state, frame_idx, key) -> np.ndarray:
        """_consolidate_temp_output_across_obj at video resolution: each object's temporary output under
        `key` on the frame, else its banked one (conditioning first), else NO_OBJ_SCORE."""
        masks = np.full((len(state.objects), 1, state.video_height, state.video_width), NO_OBJ_SCORE, F32)
        for i, obj in enumerate(state.objects.values()):
            out = obj.temp_output_dict[key].get(frame_idx)
            for bank_key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                if out is None:
                    out = obj.output_dict[bank_key].get(frame_idx)
            if out is not None:
                masks[i:i + 1] = self.video_res_masks(state, out["pred_masks"])
        return masks

    def _run_single_frame(self, state, obj, frame_idx, is_init, point_inputs, mask_inputs, reverse, run_mem_encoder,
                          prev_sam_mask_logits=None) -> dict:
        features = self._features(state, frame_idx)
        out = self.tracker.track_step(frame_idx, is_init, features, point_inputs, mask_inputs, obj.output_dict,
                                      state.num_frames, reverse, run_mem_encoder, prev_sam_mask_logits)
        compact = {"maskmem_features": None, "maskmem_pos_enc": None, "pred_masks": out["pred_masks"],
                   "obj_ptr": out["obj_ptr"], "object_score_logits": out["object_score_logits"]}
        if out["maskmem_features"] is not None:
            compact["maskmem_features"] = self.tracker.bank_features(out["maskmem_features"])
            compact["maskmem_pos_enc"] = self._shared_pos_enc(state, out["maskmem_pos_enc"])
        return compact

    def _shared_pos_enc(self, state, pos):
        """The memory position encoding is the same on every frame and object: keep one copy (as the official)."""
        if state.maskmem_pos_enc is None:
            state.maskmem_pos_enc = np.array(pos[0:1])
        return state.maskmem_pos_enc

    def video_res_masks(self, state, masks) -> np.ndarray:
        if masks.shape[-2:] == (state.video_height, state.video_width):
            return masks
        return resize_bilinear(masks, (state.video_height, state.video_width))

    # ---------------------------------------------------------------- tracking
    def _preflight(self, state):
        """propagate_in_video_preflight: encode the memories of prompted frames and move them into each
        object's bank; a frame that became conditioning leaves the non-conditioning bank."""
        if not state.objects:
            raise RuntimeError("no points or masks given yet; add a prompt before propagating")
        s = self.cfg.image_size
        for obj_id, obj in state.objects.items():
            for key in ("non_cond_frame_outputs", "cond_frame_outputs"):
                for frame_idx, out in obj.temp_output_dict[key].items():
                    if out["maskmem_features"] is None:
                        high = resize_bilinear(out["pred_masks"], (s, s))
                        features = self._features(state, frame_idx)
                        feats, pos = self.tracker.encode_new_memory(features.vision_feat, high,
                                                                    out["object_score_logits"], True)
                        out["maskmem_features"] = self.tracker.bank_features(feats)
                        out["maskmem_pos_enc"] = self._shared_pos_enc(state, pos)
                    obj.output_dict[key][frame_idx] = out
                obj.temp_output_dict[key].clear()
            if not obj.output_dict["cond_frame_outputs"]:
                raise RuntimeError(f"no points or masks on any conditioning frame for object {obj_id!r}")
            for frame_idx in obj.output_dict["cond_frame_outputs"]:
                obj.output_dict["non_cond_frame_outputs"].pop(frame_idx, None)

    def propagate_in_video(self, state: VideoState, start_frame_idx: int | None = None,
                           max_frame_num_to_track: int | None = None, reverse: bool = False):
        """Track every object through the video: yields (frame_idx, obj_ids, video-resolution logits
        (objects, 1, H, W)). Starts at start_frame_idx (default: the earliest conditioning frame of any
        object) and goes forward, or backward with reverse (from frame 0 backward: nothing, as the
        official). Each frame is encoded once; each object then takes its own tracking step, except on
        its conditioning frames, whose prompt output is returned as it is."""
        self._preflight(state)
        n = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(t for obj in state.objects.values() for t in obj.output_dict["cond_frame_outputs"])
        self._check_frame(state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = n
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else []
        else:
            end = min(start_frame_idx + max_frame_num_to_track, n - 1)
            order = range(start_frame_idx, end + 1)
        for frame_idx in order:
            masks = []
            for obj in state.objects.values():
                if frame_idx in obj.output_dict["cond_frame_outputs"]:
                    pred_masks = obj.output_dict["cond_frame_outputs"][frame_idx]["pred_masks"]
                else:
                    out = self._run_single_frame(state, obj, frame_idx, False, None, None, reverse,
                                                 run_mem_encoder=True)
                    obj.output_dict["non_cond_frame_outputs"][frame_idx] = out
                    pred_masks = out["pred_masks"]
                obj.frames_tracked[frame_idx] = {"reverse": reverse}
                masks.append(pred_masks)
            yield frame_idx, state.obj_ids, self.video_res_masks(state, np.concatenate(masks, axis=0))

    def release_old_outputs(self, state: VideoState, frame_idx: int, reverse: bool = False) -> int:
        """Drop each object's non-conditioning outputs that no frame after `frame_idx` (in the tracking direction)
        can read; returns how many. The official predictor keeps every frame's output (for re-prompting),
        so memory grows with the video (1.3 MB a frame at 1024 x 1024); tracking reads only the last
        num_maskmem - 1 memories (stride apart) and max_obj_ptrs_in_encoder - 1 object pointers, so a long
        forward run that calls this after each frame stays flat, with bit-identical results.
        Conditioning (prompted) frames are always kept."""
        cfg = self.cfg
        reach = max(cfg.num_maskmem * cfg.memory_temporal_stride_for_eval, cfg.max_obj_ptrs_in_encoder)
        sign = -1 if reverse else 1
        released = 0
        for obj in state.objects.values():
            outs = obj.output_dict["non_cond_frame_outputs"]
            old = [t for t in outs if (frame_idx - t) * sign >= reach]
            for t in old:
                del outs[t]
            released += len(old)
        return released

    def object_score_logits(self, state: VideoState, frame_idx: int, obj_id) -> float:
        """An object's presence logit on a frame it has an output on (> 0: the object is there)."""
        obj = state.objects.get(obj_id)
        out = None if obj is None else obj.output(frame_idx)
        if out is None:
            raise KeyError(f"object {obj_id!r} has no output on frame {frame_idx}")
        return float(np.asarray(out["object_score_logits"]).reshape(-1)[0])
