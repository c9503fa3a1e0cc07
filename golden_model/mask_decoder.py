"""SAM 2's mask decoder in NumPy (official: sam2/modeling/sam/mask_decoder.py, transformer.py).

Output tokens ([obj-score,] IoU, 4 mask tokens) + prompt tokens attend to the image
embedding through a two-way transformer; the image side is upscaled 4x (two 2x2/s2
transposed convs, with the projected high-res backbone features added when the
config uses them), and each mask token, through its hypernetwork MLP, gives the
per-pixel weights of one mask. Weights are taken by official keys under the
prefix given (`sam_mask_decoder.`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden_model import nn

F32 = np.float32


class Linear:
    def __init__(self, weights, in_dim: int, out_dim: int):
        self.weight = weights.take("weight", (out_dim, in_dim))
        self.bias = weights.take("bias", (out_dim,))

    def __call__(self, x):
        return nn.linear(x, self.weight, self.bias)


class LayerNorm:
    def __init__(self, weights, dim: int, eps: float = 1e-5):
        self.weight, self.bias, self.eps = weights.take("weight", (dim,)), weights.take("bias", (dim,)), eps

    def __call__(self, x):
        return nn.layer_norm(x, self.weight, self.bias, self.eps)


class MLP:
    """sam2_utils.MLP: `num_layers` linears, activation between them, optional sigmoid at the end."""

    def __init__(self, weights, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int,
                 activation=nn.relu, sigmoid_output: bool = False):
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = [Linear(weights.take_prefix(f"layers.{i}"), dims[i], dims[i + 1]) for i in range(num_layers)]
        self.activation, self.sigmoid_output = activation, sigmoid_output

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return nn.sigmoid(x) if self.sigmoid_output else x


class Attention:
    """transformer.Attention: projections to embedding_dim / downsample_rate, multi-head SDPA, out projection."""

    def __init__(self, weights, embedding_dim: int, num_heads: int, downsample_rate: int = 1):
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the internal dim {internal}")
        self.num_heads = num_heads
        self.q_proj = Linear(weights.take_prefix("q_proj"), embedding_dim, internal)
        self.k_proj = Linear(weights.take_prefix("k_proj"), embedding_dim, internal)
        self.v_proj = Linear(weights.take_prefix("v_proj"), embedding_dim, internal)
        self.out_proj = Linear(weights.take_prefix("out_proj"), internal, embedding_dim)

    def _heads(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(0, 2, 1, 3)

    def __call__(self, q, k, v):
        out = nn.attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v)))
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, h * d))


class TwoWayAttentionBlock:
    def __init__(self, weights, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int,
                 skip_first_layer_pe: bool):
        self.self_attn = Attention(weights.take_prefix("self_attn"), dim, num_heads)
        self.norm1 = LayerNorm(weights.take_prefix("norm1"), dim)
        self.cross_attn_token_to_image = Attention(weights.take_prefix("cross_attn_token_to_image"), dim,
                                                   num_heads, downsample_rate)
        self.norm2 = LayerNorm(weights.take_prefix("norm2"), dim)
        self.mlp = MLP(weights.take_prefix("mlp"), dim, mlp_dim, dim, 2)
        self.norm3 = LayerNorm(weights.take_prefix("norm3"), dim)
        self.norm4 = LayerNorm(weights.take_prefix("norm4"), dim)
        self.cross_attn_image_to_token = Attention(weights.take_prefix("cross_attn_image_to_token"), dim,
                                                   num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def __call__(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:  # first layer: the queries are the prompts themselves
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer:
    def __init__(self, weights, *, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8,
                 mlp_dim: int = 2048, attention_downsample_rate: int = 2):
        self.layers = [TwoWayAttentionBlock(weights.take_prefix(f"layers.{i}"), embedding_dim, num_heads, mlp_dim,
                                            attention_downsample_rate, skip_first_layer_pe=(i == 0))
                       for i in range(depth)]
        self.final_attn_token_to_image = Attention(weights.take_prefix("final_attn_token_to_image"), embedding_dim,
                                                   num_heads, attention_downsample_rate)
        self.norm_final_attn = LayerNorm(weights.take_prefix("norm_final_attn"), embedding_dim)

    def __call__(self, image_embedding, image_pe, point_embedding):
        """image_embedding, image_pe (B, C, h, w); point_embedding (B, N, C) -> (queries (B, N, C), keys (B, hw, C))."""
        b, c, h, w = image_embedding.shape
        keys = image_embedding.reshape(b, c, h * w).transpose(0, 2, 1)
        key_pe = image_pe.reshape(image_pe.shape[0], c, h * w).transpose(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


@dataclass(frozen=True)
class MaskDecoderConfig:
    """The MaskDecoder's hyperparameters as SAM2Base builds it (the SAM-head part of a model config)."""
    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    use_high_res_features: bool = True
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    dynamic_multimask_via_stability: bool = True   # build_sam2(apply_postprocessing=True) turns this on
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    transformer_depth: int = 2
    transformer_num_heads: int = 8
    transformer_mlp_dim: int = 2048
    attention_downsample_rate: int = 2


@dataclass
class DecoderOutput:
    masks: np.ndarray              # (B, M, 4h, 4w) low-res mask logits (M = 3 multimask, else 1)
    iou_pred: np.ndarray           # (B, M)
    sam_tokens_out: np.ndarray     # (B, 1 or 3, C) mask tokens for the object pointer
    object_score_logits: np.ndarray  # (B, 1)


class MaskDecoder:
    def __init__(self, weights, cfg: MaskDecoderConfig = MaskDecoderConfig()):
        self.cfg = cfg
        d = cfg.transformer_dim
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(weights.take_prefix("transformer"), depth=cfg.transformer_depth,
                                             embedding_dim=d, num_heads=cfg.transformer_num_heads,
                                             mlp_dim=cfg.transformer_mlp_dim,
                                             attention_downsample_rate=cfg.attention_downsample_rate)
        self.iou_token = weights.take("iou_token.weight", (1, d))
        self.mask_tokens = weights.take("mask_tokens.weight", (self.num_mask_tokens, d))
        self.obj_score_token = weights.take("obj_score_token.weight", (1, d)) if cfg.pred_obj_scores else None
        up = weights.take_prefix("output_upscaling")
        self.upscale_conv0 = (up.take("0.weight", (d, d // 4, 2, 2)), up.take("0.bias", (d // 4,)))
        self.upscale_norm1 = (up.take("1.weight", (d // 4,)), up.take("1.bias", (d // 4,)))
        self.upscale_conv3 = (up.take("3.weight", (d // 4, d // 8, 2, 2)), up.take("3.bias", (d // 8,)))
        if cfg.use_high_res_features:
            self.conv_s0 = (weights.take("conv_s0.weight", (d // 8, d, 1, 1)), weights.take("conv_s0.bias", (d // 8,)))
            self.conv_s1 = (weights.take("conv_s1.weight", (d // 4, d, 1, 1)), weights.take("conv_s1.bias", (d // 4,)))
        self.output_hypernetworks_mlps = [MLP(weights.take_prefix(f"output_hypernetworks_mlps.{i}"), d, d, d // 8, 3)
                                          for i in range(self.num_mask_tokens)]
        self.iou_prediction_head = MLP(weights.take_prefix("iou_prediction_head"), d, cfg.iou_head_hidden_dim,
                                       self.num_mask_tokens, cfg.iou_head_depth,
                                       sigmoid_output=cfg.iou_prediction_use_sigmoid)
        self.pred_obj_score_head = None
        if cfg.pred_obj_scores:
            self.pred_obj_score_head = (MLP(weights.take_prefix("pred_obj_score_head"), d, d, 1, 3)
                                        if cfg.pred_obj_scores_mlp
                                        else Linear(weights.take_prefix("pred_obj_score_head"), d, 1))

    def project_high_res(self, feat_s0: np.ndarray, feat_s1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """conv_s0 / conv_s1 on the level-0 / level-1 backbone features (SAM2Base.forward_image does this once
        per image so clicks do not repeat it)."""
        return nn.conv2d(feat_s0, *self.conv_s0), nn.conv2d(feat_s1, *self.conv_s1)

    def predict_masks(self, image_embeddings, image_pe, sparse, dense, repeat_image: bool, high_res_features=None):
        """All 4 masks and IoUs: (masks (B, 4, 4h, 4w), iou (B, 4), mask tokens (B, 4, C), object score (B, 1))."""
        s = 1 if self.cfg.pred_obj_scores else 0
        parts = ([self.obj_score_token] if s else []) + [self.iou_token, self.mask_tokens]
        output_tokens = np.concatenate(parts, axis=0)
        b = sparse.shape[0]
        tokens = np.concatenate([np.broadcast_to(output_tokens[None], (b,) + output_tokens.shape), sparse], axis=1)
        if repeat_image:
            src = np.repeat(image_embeddings, b, axis=0)
        else:
            if image_embeddings.shape[0] != b:
                raise ValueError(f"{image_embeddings.shape[0]} image embeddings for {b} prompt sets")
            src = image_embeddings
        src = src + dense
        if image_pe.shape[0] != 1:
            raise ValueError("image_pe must have batch size 1 (get_dense_pe())")
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1:s + 1 + self.num_mask_tokens]

        src = keys.transpose(0, 2, 1).reshape(b, c, h, w)
        x = nn.conv_transpose2d_k2s2(src, *self.upscale_conv0)
        if self.cfg.use_high_res_features:
            if high_res_features is None:
                raise ValueError("this mask decoder needs the high-res features (feat_s0, feat_s1)")
            feat_s0, feat_s1 = high_res_features
            x = nn.gelu(nn.layer_norm_2d(x + feat_s1, *self.upscale_norm1))
            x = nn.gelu(nn.conv_transpose2d_k2s2(x, *self.upscale_conv3) + feat_s0)
        else:
            x = nn.gelu(nn.layer_norm_2d(x, *self.upscale_norm1))
            x = nn.gelu(nn.conv_transpose2d_k2s2(x, *self.upscale_conv3))
        hyper_in = np.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                            axis=1)
        _, cu, hu, wu = x.shape
        masks = (hyper_in @ x.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if s:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:  # no object head: "object present" (sigmoid(10) ~ 1), as the official code
            object_score_logits = np.full((b, 1), 10.0, F32)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def stability_scores(self, mask_logits: np.ndarray) -> np.ndarray:
        """IoU of the masks thresholded at +delta and -delta (1 where both are empty)."""
        flat = mask_logits.reshape(mask_logits.shape[:-2] + (-1,))
        delta = self.cfg.dynamic_multimask_stability_delta
        area_i = (flat > delta).sum(-1).astype(F32)
        area_u = (flat > -delta).sum(-1).astype(F32)
        return np.where(area_u > 0, area_i / np.maximum(area_u, 1), F32(1.0)).astype(F32)

    def dynamic_multimask_via_stability(self, all_masks, all_ious):
        """Single-mask output, falling back to the best multimask output when token 0's mask is unstable."""
        multi_masks, multi_ious = all_masks[:, 1:], all_ious[:, 1:]
        best = np.argmax(multi_ious, axis=-1)
        rows = np.arange(multi_ious.shape[0])
        best_masks = multi_masks[rows, best][:, None]
        best_ious = multi_ious[rows, best][:, None]
        single_masks, single_ious = all_masks[:, 0:1], all_ious[:, 0:1]
        stable = self.stability_scores(single_masks) >= self.cfg.dynamic_multimask_stability_thresh  # (B, 1)
        masks = np.where(stable[..., None, None], single_masks, best_masks)
        ious = np.where(stable, single_ious, best_ious)
        return masks, ious

    def __call__(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                 multimask_output: bool, repeat_image: bool, high_res_features=None) -> DecoderOutput:
        masks, iou_pred, mask_tokens_out, obj = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, repeat_image,
            high_res_features)
        return self.select_outputs(masks, iou_pred, mask_tokens_out, obj, multimask_output)

    def select_outputs(self, masks, iou_pred, mask_tokens_out, obj, multimask_output: bool) -> DecoderOutput:
        """MaskDecoder.forward after predict_masks: which masks, IoUs and token the caller gets."""
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.cfg.dynamic_multimask_via_stability:
            masks, iou_pred = self.dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]
        if multimask_output and self.cfg.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:  # the single-mask token is the object-memory token (official rationale: training always tracks it)
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return DecoderOutput(masks, iou_pred, sam_tokens_out, obj)
