"""SAM 2's image encoder in NumPy: Hiera trunk + FPN neck (sam2/modeling/backbones/).

    enc = build_image_encoder(weights.take_prefix("image_encoder"), load_config("tiny"))
    out = enc(img)     # img (B, 3, 1024, 1024) float32, normalised
    out["backbone_fpn"]    # [(B,256,256,256), (B,256,128,128), (B,256,64,64)] (scalp drops the 32x32 level)
    out["vision_pos_enc"]  # sine position encodings of the same shapes
    out["vision_features"] # == backbone_fpn[-1]

`HighResProjection` applies sam_mask_decoder.conv_s0 / conv_s1 to levels 0 and 1
as SAM2Base.forward_image does when use_high_res_features_in_sam.

Official behaviours kept on purpose (they change numbers):
- windows are zero-padded AFTER norm1 and padded tokens are attended to, unmasked;
- q-pooling (2x2 max, floor) pools padded windows, then the pooled map is cropped;
- the absolute position embedding is the background embedding bicubically
  interpolated to the token grid plus the window embedding tiled over it;
- FPN top-down fusion only on fpn_top_down_levels, nearest 2x upsampling.
The trunk works in NHWC (tokens last) so every Linear is one 2-D matmul.
"""
from __future__ import annotations

import numpy as np

from golden_model import nn
from golden_model.config import ConfigError, FpnNeckConfig, HieraConfig, ImageEncoderConfig, SAM2Config
from golden_model.memory_encoder import sine_position_encoding

F32 = np.float32
HIERA_NORM_EPS = 1e-6          # MultiScaleBlock: partial(nn.LayerNorm, eps=1e-6)
MLP_RATIO = 4.0                # MultiScaleBlock default
PATCH_KERNEL, PATCH_STRIDE, PATCH_PADDING = 7, 4, 3   # PatchEmbed defaults used by Hiera


class Linear:
    def __init__(self, w, d_in: int, d_out: int):
        self.weight = w.take("weight", (d_out, d_in))
        self.bias = w.take("bias", (d_out,))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return nn.linear(x, self.weight, self.bias)


class LayerNorm:
    def __init__(self, w, dim: int, eps: float):
        self.weight, self.bias, self.eps = w.take("weight", (dim,)), w.take("bias", (dim,)), eps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return nn.layer_norm(x, self.weight, self.bias, self.eps)


def window_partition(x: np.ndarray, ws: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWin, ws, ws, C), zero-padding H and W up to multiples of ws."""
    b, h, w, c = x.shape
    ph, pw = (-h) % ws, (-w) % ws
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    win = x.reshape(b, hp // ws, ws, wp // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(win).reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(win: np.ndarray, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    """Inverse of window_partition, cropping the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = win.shape[0] // ((hp // ws) * (wp // ws))
    x = win.reshape(b, hp // ws, wp // ws, ws, ws, -1).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return np.ascontiguousarray(x[:, :h, :w]) if (hp > h or wp > w) else x


class MultiScaleAttention:
    """Hiera attention: qkv, optional 2x2 max-pool of q (stage change), SDPA per head, proj."""

    def __init__(self, w, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None):
        self.num_heads, self.q_stride, self.dim_out = num_heads, q_stride, dim_out
        self.qkv = Linear(w.take_prefix("qkv"), dim, 3 * dim_out)
        self.proj = Linear(w.take_prefix("proj"), dim_out, dim_out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        b, h, w, _ = x.shape
        nh, hd = self.num_heads, self.dim_out // self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, hd)
        if self.q_stride:
            q = nn.max_pool2d_nhwc(qkv[:, :, 0].reshape(b, h, w, nh * hd), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, nh, hd).transpose(0, 2, 1, 3)
            k, v = np.ascontiguousarray(qkv[:, :, 1:].transpose(2, 0, 3, 1, 4))   # one copy: (B, nh, L, hd) each
        else:
            q, k, v = np.ascontiguousarray(qkv.transpose(2, 0, 3, 1, 4))
        out = nn.attention(q, k, v)
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, nh * hd)
        return self.proj(out)


class MLP:
    """sam2_utils.MLP with 2 layers and GELU (Hiera's block MLP)."""

    def __init__(self, w, dim: int, hidden: int):
        self.fc1 = Linear(w.take_prefix("layers.0"), dim, hidden)
        self.fc2 = Linear(w.take_prefix("layers.1"), hidden, dim)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fc2(nn.gelu_(self.fc1(x)))


class MultiScaleBlock:
    def __init__(self, w, dim: int, dim_out: int, num_heads: int, q_stride, window_size: int):
        self.dim, self.dim_out, self.window_size, self.q_stride = dim, dim_out, window_size, q_stride
        self.norm1 = LayerNorm(w.take_prefix("norm1"), dim, HIERA_NORM_EPS)
        self.attn = MultiScaleAttention(w.take_prefix("attn"), dim, dim_out, num_heads, q_stride)
        self.norm2 = LayerNorm(w.take_prefix("norm2"), dim_out, HIERA_NORM_EPS)
        self.mlp = MLP(w.take_prefix("mlp"), dim_out, int(dim_out * MLP_RATIO))
        self.proj = Linear(w.take_prefix("proj"), dim, dim_out) if dim != dim_out else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = nn.max_pool2d_nhwc(shortcut, self.q_stride)
        ws = self.window_size
        h, w = x.shape[1:3]
        if ws > 0:
            x, pad_hw = window_partition(x, ws)
        x = self.attn(x)
        if self.q_stride:
            ws = self.window_size // self.q_stride[0]
            h, w = shortcut.shape[1:3]
            pad_hw = (h + (-h) % ws, w + (-w) % ws) if ws > 0 else None
        if self.window_size > 0:
            x = window_unpartition(x, ws, pad_hw, (h, w))
        x += shortcut                    # x is the attention's fresh output: add in place
        y = self.mlp(self.norm2(x))
        y += x
        return y


class Hiera:
    """The trunk: patch embed, position embedding, blocks; returns stage-end features NHWC, high-res first
    (the official trunk returns them NCHW; the neck here takes NHWC so its 1x1 convs are plain GEMMs)."""

    def __init__(self, w, cfg: HieraConfig):
        self.cfg = cfg
        dim, heads = cfg.embed_dim, cfg.num_heads
        self.patch_w = w.take("patch_embed.proj.weight", (dim, 3, PATCH_KERNEL, PATCH_KERNEL))
        self.patch_b = w.take("patch_embed.proj.bias", (dim,))
        self.pos_embed = w.take("pos_embed", (1, dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = w.take("pos_embed_window", (1, dim, cfg.window_spec[0], cfg.window_spec[0]))
        stage_ends = cfg.stage_ends
        q_pool_blocks = [e + 1 for e in stage_ends[:-1]][:cfg.q_pool]
        self.stage_ends = stage_ends
        self.blocks = []
        cur_stage = 1
        for i in range(sum(cfg.stages)):
            dim_out = dim
            # the window size lags a block: a stage's first block still uses the previous stage's window
            window = cfg.window_spec[cur_stage - 1]
            if i in cfg.global_att_blocks:
                window = 0
            if i - 1 in stage_ends:
                dim_out, heads = int(dim * cfg.dim_mul), int(heads * cfg.head_mul)
                cur_stage += 1
            self.blocks.append(MultiScaleBlock(w.take_prefix(f"blocks.{i}"), dim, dim_out, heads,
                                               cfg.q_stride if i in q_pool_blocks else None, window))
            dim = dim_out
        self._pos_cache: dict[tuple[int, int], np.ndarray] = {}

    def position_embedding(self, h: int, w: int) -> np.ndarray:
        """(h, w, C): bicubic background embedding + tiled window embedding."""
        if (h, w) not in self._pos_cache:
            pe = nn.interpolate_bicubic(self.pos_embed, (h, w))
            win = self.pos_embed_window
            wh, ww = win.shape[-2:]
            if h % wh or w % ww:
                raise ValueError(f"Hiera: token grid {h}x{w} is not a multiple of the {wh}x{ww} window embedding")
            pe = pe + np.tile(win, (1, 1, h // wh, w // ww))
            self._pos_cache[(h, w)] = np.ascontiguousarray(pe[0].transpose(1, 2, 0))
        return self._pos_cache[(h, w)]

    def __call__(self, img: np.ndarray) -> list[np.ndarray]:
        x = nn.conv2d_nhwc_out(img, self.patch_w, self.patch_b, stride=PATCH_STRIDE, padding=PATCH_PADDING)
        x = x + self.position_embedding(*x.shape[1:3])
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == self.stage_ends[-1] or (i in self.stage_ends and self.cfg.return_interm_layers):
                outputs.append(x)       # NHWC; the neck consumes it as is
        return outputs


class FpnNeck:
    """Lateral 1x1 convs, top-down nearest-2x fusion on fpn_top_down_levels, sine position encodings."""

    def __init__(self, w, cfg: FpnNeckConfig):
        if cfg.kernel_size != 1 or cfg.stride != 1 or cfg.padding != 0:
            raise ConfigError("FpnNeck: only 1x1 lateral convolutions are implemented")
        if cfg.fpn_interp_model != "nearest":
            raise ConfigError(f"FpnNeck: interpolation {cfg.fpn_interp_model!r} not implemented (sam2.1 uses nearest)")
        pe = cfg.position_encoding
        if not pe.normalize or pe.scale is not None:
            raise ConfigError("FpnNeck: only the normalised sine encoding with the default scale is implemented")
        self.cfg = cfg
        self.convs = [(w.take(f"convs.{j}.conv.weight", (cfg.d_model, c, 1, 1)),
                       w.take(f"convs.{j}.conv.bias", (cfg.d_model,)))
                      for j, c in enumerate(cfg.backbone_channel_list)]
        self._pe_cache: dict[tuple[int, int], np.ndarray] = {}

    def position_encoding(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._pe_cache:
            pe = self.cfg.position_encoding
            self._pe_cache[(h, w)] = sine_position_encoding(pe.num_pos_feats, h, w, pe.temperature)
        return self._pe_cache[(h, w)]

    @staticmethod
    def _lateral(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """1x1 conv of NHWC x straight into NCHW: W (Cout, C) @ X^T (C, HW) per image, X^T read transposed
        by BLAS, so no layout copy of the big maps."""
        b, h, w, c = x.shape
        wgt = weight[:, :, 0, 0]
        out = np.empty((b, wgt.shape[0], h, w), np.result_type(x, weight))
        for i in range(b):
            np.matmul(wgt, x[i].reshape(h * w, c).T, out=out[i].reshape(wgt.shape[0], h * w))
        out += bias[:, None, None]
        return out

    def __call__(self, xs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """xs: trunk outputs NHWC, high-res first. Returns NCHW features and position encodings."""
        n = len(self.convs) - 1
        if len(xs) != n + 1:
            raise ValueError(f"FpnNeck: {len(xs)} trunk levels, {n + 1} expected")
        out, pos = [None] * (n + 1), [None] * (n + 1)
        prev = None
        for i in range(n, -1, -1):
            lateral = self._lateral(xs[i], *self.convs[n - i])
            if i in self.cfg.fpn_top_down_levels and prev is not None:
                prev = lateral + nn.upsample_nearest2x(prev)
                if self.cfg.fuse_type == "avg":
                    prev = prev / F32(2)
            else:
                prev = lateral
            out[i] = np.ascontiguousarray(prev)
            pe = self.position_encoding(*prev.shape[-2:])
            pos[i] = np.broadcast_to(pe[None], prev.shape)
        return out, pos


class ImageEncoder:
    """sam2 ImageEncoder: trunk + neck, minus the `scalp` lowest-resolution levels."""

    def __init__(self, w, cfg: ImageEncoderConfig):
        self.cfg = cfg
        self.trunk = Hiera(w.take_prefix("trunk"), cfg.trunk)
        self.neck = FpnNeck(w.take_prefix("neck"), cfg.neck)

    def __call__(self, img: np.ndarray) -> dict:
        img = np.asarray(img, F32)
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f"image encoder expects (B, 3, H, W), got {img.shape}")
        features, pos = self.neck(self.trunk(img))
        if self.cfg.scalp > 0:
            features, pos = features[:-self.cfg.scalp], pos[:-self.cfg.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


class HighResProjection:
    """sam_mask_decoder.conv_s0 / conv_s1 (1x1 convs d_model -> d_model/8, d_model/4) on FPN levels 0 and 1."""

    def __init__(self, w, d_model: int = 256):
        c0, c1 = d_model // 8, d_model // 4   # MaskDecoder's conv_s0 / conv_s1 widths
        self.conv_s0 = (w.take("conv_s0.weight", (c0, d_model, 1, 1)), w.take("conv_s0.bias", (c0,)))
        self.conv_s1 = (w.take("conv_s1.weight", (c1, d_model, 1, 1)), w.take("conv_s1.bias", (c1,)))

    def __call__(self, backbone_out: dict) -> dict:
        """SAM2Base.forward_image's projection: a new dict, levels 0 and 1 of backbone_fpn replaced."""
        fpn = list(backbone_out["backbone_fpn"])
        fpn[0] = nn.conv2d(fpn[0], *self.conv_s0)
        fpn[1] = nn.conv2d(fpn[1], *self.conv_s1)
        return {**backbone_out, "backbone_fpn": fpn}


def build_image_encoder(weights, config: SAM2Config | ImageEncoderConfig) -> ImageEncoder:
    """The image encoder of `config` taking `image_encoder.*` keys from `weights` (already prefixed)."""
    cfg = config.image_encoder if isinstance(config, SAM2Config) else config
    return ImageEncoder(weights, cfg)


def forward_image(encoder: ImageEncoder, high_res: HighResProjection | None, img: np.ndarray) -> dict:
    """SAM2Base.forward_image: encoder outputs, with conv_s0/conv_s1 applied when `high_res` is given."""
    out = encoder(img)
    return high_res(out) if high_res is not None else out
