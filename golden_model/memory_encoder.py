"""SAM 2 memory encoder in NumPy: (frame features, predicted mask) -> one memory frame.

Mirrors sam2/modeling/memory_encoder.py (MaskDownSampler, CXBlock, Fuser,
MemoryEncoder) and the mask preparation of SAM2Base._encode_new_memory
(sigmoid / binarise, scale and bias, no-object embedding). Layout NCHW, float32.
Weights come by their official state-dict keys (`memory_encoder.*`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from golden_model import nn

F32 = np.float32


@dataclass(frozen=True)
class MemoryEncoderConfig:
    """The sam2.1 configs' memory encoder (identical for tiny, small, base_plus, large)."""
    in_dim: int = 256              # channels of the image features (pix_feat)
    out_dim: int = 64              # channels of a memory frame (mem_dim)
    ds_kernel_size: int = 3        # mask downsampler: conv kernel, stride, padding
    ds_stride: int = 2
    ds_padding: int = 1
    ds_total_stride: int = 16      # 1024 mask -> 64x64, like the image features
    fuser_layers: int = 2          # CXBlocks
    fuser_kernel_size: int = 7
    fuser_padding: int = 3
    pos_temperature: float = 10000.0

    @classmethod
    def from_yaml(cls, section) -> "MemoryEncoderConfig":
        """From the `memory_encoder:` section of an official config (nested mappings)."""
        try:
            ds, fuser, layer, pe = (section["mask_downsampler"], section["fuser"], section["fuser"]["layer"],
                                    section["position_encoding"])
            cfg = cls(in_dim=int(section.get("in_dim", 256)), out_dim=int(section["out_dim"]),
                      ds_kernel_size=int(ds.get("kernel_size", 4)), ds_stride=int(ds.get("stride", 4)),
                      ds_padding=int(ds.get("padding", 0)), ds_total_stride=int(ds.get("total_stride", 16)),
                      fuser_layers=int(fuser["num_layers"]), fuser_kernel_size=int(layer.get("kernel_size", 7)),
                      fuser_padding=int(layer.get("padding", 3)),
                      pos_temperature=float(pe.get("temperature", 10000)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"memory_encoder config: missing or malformed entry {e}") from e
        if int(pe["num_pos_feats"]) != cfg.out_dim or not pe.get("normalize", True) or pe.get("scale") is not None:
            raise ValueError("memory_encoder config: only a normalised sine encoding of out_dim features is supported")
        if int(layer.get("dim", cfg.in_dim)) != cfg.in_dim or not layer.get("use_dwconv", True):
            raise ValueError("memory_encoder config: the fuser must be depthwise CXBlocks of in_dim channels")
        return cfg


def sine_position_encoding(num_pos_feats: int, h: int, w: int, temperature: float = 10000.0) -> np.ndarray:
    """PositionEmbeddingSine(num_pos_feats, normalize=True, scale=2*pi) for an h x w map:
    (num_pos_feats, h, w) float32, y half first then x half, each sin/cos interleaved.
    Float32 throughout, in the official order of operations."""
    if num_pos_feats % 2:
        raise ValueError("sine position encoding needs an even number of features")
    npf = num_pos_feats // 2
    scale = F32(2 * math.pi)
    eps = F32(1e-6)
    y = np.arange(1, h + 1, dtype=F32)
    x = np.arange(1, w + 1, dtype=F32)
    y = y / (y[-1] + eps) * scale
    x = x / (x[-1] + eps) * scale
    dim_t = np.arange(npf, dtype=F32)
    dim_t = np.power(F32(temperature), F32(2) * np.floor_divide(dim_t, F32(2)) / F32(npf)).astype(F32)

    def interleave(p):  # p: (n, npf) -> sin on even columns, cos on odd ones, in place order
        out = np.empty_like(p)
        out[:, 0::2] = np.sin(p[:, 0::2])
        out[:, 1::2] = np.cos(p[:, 1::2])
        return out

    pos_y = interleave(y[:, None] / dim_t)  # (h, npf)
    pos_x = interleave(x[:, None] / dim_t)  # (w, npf)
    pe = np.empty((2 * npf, h, w), F32)
    pe[:npf] = pos_y.T[:, :, None]
    pe[npf:] = pos_x.T[:, None, :]
    return pe


def depthwise_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: int) -> np.ndarray:
    """Depthwise conv (groups = channels, stride 1) as kh*kw shifted multiply-adds:
    far faster in NumPy than a windowed einsum for 7x7 kernels."""
    n, c, h, w = x.shape
    _, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    y = np.zeros((n, c, ho, wo), F32)
    tmp = np.empty_like(y)
    for i in range(kh):
        for j in range(kw):
            np.multiply(xp[:, :, i:i + ho, j:j + wo], weight[None, :, 0, i, j, None, None], out=tmp)
            y += tmp
    if bias is not None:
        y += bias[None, :, None, None]
    return y


class MaskDownSampler:
    """Conv(stride s) -> LayerNorm2d -> GELU, repeated until total_stride, then a 1x1 conv."""

    def __init__(self, w, cfg: MemoryEncoderConfig):
        num_layers = int(math.log2(cfg.ds_total_stride) // math.log2(cfg.ds_stride))
        if cfg.ds_stride ** num_layers != cfg.ds_total_stride:
            raise ValueError("mask downsampler: total_stride must be a power of stride")
        self.stride, self.padding = cfg.ds_stride, cfg.ds_padding
        k = cfg.ds_kernel_size
        self.stages = []
        cin = 1
        for i in range(num_layers):
            cout = cin * cfg.ds_stride ** 2
            conv, norm = 3 * i, 3 * i + 1   # Sequential indices: conv, norm, act
            self.stages.append((w.take(f"encoder.{conv}.weight", (cout, cin, k, k)),
                                w.take(f"encoder.{conv}.bias", (cout,)),
                                w.take(f"encoder.{norm}.weight", (cout,)),
                                w.take(f"encoder.{norm}.bias", (cout,))))
            cin = cout
        last = 3 * num_layers
        self.proj_w = w.take(f"encoder.{last}.weight", (cfg.in_dim, cin, 1, 1))
        self.proj_b = w.take(f"encoder.{last}.bias", (cfg.in_dim,))

    def __call__(self, m: np.ndarray) -> np.ndarray:
        for cw, cb, nw, nb in self.stages:
            m = nn.conv2d(m, cw, cb, stride=self.stride, padding=self.padding)
            m = nn.gelu(nn.layer_norm_2d(m, nw, nb, eps=1e-6))
        return nn.conv2d(m, self.proj_w, self.proj_b)


class CXBlock:
    """ConvNeXt block: depthwise conv -> LayerNorm2d -> Linear(4x) -> GELU -> Linear -> gamma, residual."""

    def __init__(self, w, dim: int, kernel_size: int, padding: int):
        self.padding = padding
        self.dw_w = w.take("dwconv.weight", (dim, 1, kernel_size, kernel_size))
        self.dw_b = w.take("dwconv.bias", (dim,))
        self.norm_w = w.take("norm.weight", (dim,))
        self.norm_b = w.take("norm.bias", (dim,))
        self.fc1_w = w.take("pwconv1.weight", (4 * dim, dim))
        self.fc1_b = w.take("pwconv1.bias", (4 * dim,))
        self.fc2_w = w.take("pwconv2.weight", (dim, 4 * dim))
        self.fc2_b = w.take("pwconv2.bias", (dim,))
        self.gamma = w.take("gamma", (dim,))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = depthwise_conv2d(x, self.dw_w, self.dw_b, self.padding)
        y = nn.layer_norm_2d(y, self.norm_w, self.norm_b, eps=1e-6)
        y = np.ascontiguousarray(y.transpose(0, 2, 3, 1))          # NHWC for the pointwise MLP
        y = nn.linear(nn.gelu(nn.linear(y, self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)
        y = (self.gamma * y).transpose(0, 3, 1, 2)
        return x + y


class MemoryEncoder:
    """pix_feat (N, in_dim, H, W) + mask (N, 1, 16H, 16W) -> (features (N, out_dim, H, W), pos (N, out_dim, H, W))."""

    def __init__(self, w, cfg: MemoryEncoderConfig = MemoryEncoderConfig()):
        self.cfg = cfg
        self.mask_downsampler = MaskDownSampler(w.take_prefix("mask_downsampler"), cfg)
        self.pix_w = w.take("pix_feat_proj.weight", (cfg.in_dim, cfg.in_dim, 1, 1))
        self.pix_b = w.take("pix_feat_proj.bias", (cfg.in_dim,))
        self.fuser = [CXBlock(w.take_prefix(f"fuser.layers.{i}"), cfg.in_dim, cfg.fuser_kernel_size,
                              cfg.fuser_padding) for i in range(cfg.fuser_layers)]
        self.out_w = self.out_b = None
        if cfg.out_dim != cfg.in_dim:
            self.out_w = w.take("out_proj.weight", (cfg.out_dim, cfg.in_dim, 1, 1))
            self.out_b = w.take("out_proj.bias", (cfg.out_dim,))
        self._pos_cache: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, pix_feat: np.ndarray, masks: np.ndarray, skip_mask_sigmoid: bool = False):
        if pix_feat.ndim != 4 or pix_feat.shape[1] != self.cfg.in_dim:
            raise ValueError(f"memory encoder: pix_feat must be (N, {self.cfg.in_dim}, H, W), got {pix_feat.shape}")
        n, _, h, w = pix_feat.shape
        s = self.cfg.ds_total_stride
        if masks.shape != (n, 1, h * s, w * s):
            raise ValueError(f"memory encoder: masks must be {(n, 1, h * s, w * s)}, got {masks.shape}")
        masks = masks.astype(F32, copy=False)
        if not skip_mask_sigmoid:
            masks = _sigmoid(masks)
        x = nn.conv2d(pix_feat.astype(F32, copy=False), self.pix_w, self.pix_b) + self.mask_downsampler(masks)
        for block in self.fuser:
            x = block(x)
        if self.out_w is not None:
            x = nn.conv2d(x, self.out_w, self.out_b)
        return x, np.broadcast_to(self.position_encoding(h, w), x.shape)

    def position_encoding(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._pos_cache:
            self._pos_cache[(h, w)] = sine_position_encoding(self.cfg.out_dim, h, w, self.cfg.pos_temperature)
        return self._pos_cache[(h, w)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """nn.sigmoid without the overflow warning: absent objects carry -1024 logits, exp(1024) = inf gives 0."""
    with np.errstate(over="ignore"):
        return nn.sigmoid(x)


def mask_for_memory(high_res_logits: np.ndarray, *, scale: float, bias: float, binarize: bool) -> np.ndarray:
    """SAM2Base._encode_new_memory's mask preparation: sigmoid (or >0 when binarising
    clicked frames), then scale and bias, applied only when they are not the identity."""
    m = high_res_logits.astype(F32, copy=False)
    m = (m > 0).astype(F32) if binarize else _sigmoid(m)
    if scale != 1.0:
        m = m * F32(scale)
    if bias != 0.0:
        m = m + F32(bias)
    return m


def add_no_object_embedding(features: np.ndarray, object_score_logits: np.ndarray,
                            no_obj_embed_spatial: np.ndarray | None) -> np.ndarray:
    """Add the no-object embedding (1, C) to memory frames (N, C, H, W) whose object score is <= 0."""
    if no_obj_embed_spatial is None:
        return features
    absent = (np.asarray(object_score_logits).reshape(-1) <= 0).astype(F32)  # 1 - is_obj_appearing
    return features + absent[:, None, None, None] * no_obj_embed_spatial.reshape(1, -1, 1, 1)
