"""SAM 2 memory attention in NumPy: condition the current frame's features on the memory bank.

Mirrors sam2/modeling/memory_attention.py (MemoryAttention, MemoryAttentionLayer)
and RoPEAttention / compute_axial_cis / apply_rotary_enc from
sam2/modeling/{sam/transformer.py, position_encoding.py}, with the rotary
encoding done in real arithmetic: each (even, odd) channel pair is rotated by
cos/sin of its axial angle, which is exactly the official complex product.

Layout: batch first, (B, L, C) float32. Weights by official keys (`memory_attention.*`).

Speed: cross-attention values come from 64-channel memories (kv_in_dim), so
softmax(QK^T) @ (X Wv^T + bv) is computed as (softmax(QK^T) @ X) Wv^T + bv
(rows of softmax sum to one): the big product runs on 64 channels, not 256.
Queries are processed in blocks so the score matrix stays cache- and RAM-friendly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from golden_model import nn

F32 = np.float32
QUERY_BLOCK = 512  # queries per score block: 512 x 28,736 keys x 4 B = 59 MB


@dataclass(frozen=True)
class MemoryAttentionConfig:
    """The sam2.1 configs' memory attention (identical for tiny, small, base_plus, large)."""
    d_model: int = 256
    num_layers: int = 4
    dim_feedforward: int = 2048
    activation: str = "relu"
    num_heads: int = 1
    kv_in_dim: int = 64                      # cross-attention keys/values: memory channels
    rope_theta: float = 10000.0
    feat_sizes: tuple[int, int] = (64, 64)
    pos_enc_at_input: bool = True
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    pos_enc_at_cross_attn_queries: bool = False

    @classmethod
    def from_yaml(cls, section) -> "MemoryAttentionConfig":
        """From the `memory_attention:` section of an official config (nested mappings)."""
        try:
            layer, sa, ca = section["layer"], section["layer"]["self_attention"], section["layer"]["cross_attention"]
            cfg = cls(d_model=int(section["d_model"]), num_layers=int(section["num_layers"]),
                      dim_feedforward=int(layer["dim_feedforward"]), activation=str(layer["activation"]),
                      num_heads=int(ca.get("num_heads", 1)), kv_in_dim=int(ca.get("kv_in_dim") or section["d_model"]),
                      rope_theta=float(ca.get("rope_theta", 10000.0)),
                      feat_sizes=tuple(int(v) for v in ca.get("feat_sizes", (64, 64))),
                      pos_enc_at_input=bool(section["pos_enc_at_input"]),
                      pos_enc_at_attn=bool(layer["pos_enc_at_attn"]),
                      pos_enc_at_cross_attn_keys=bool(layer["pos_enc_at_cross_attn_keys"]),
                      pos_enc_at_cross_attn_queries=bool(layer["pos_enc_at_cross_attn_queries"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"memory_attention config: missing or malformed entry {e}") from e
        for name, att in (("self_attention", sa), ("cross_attention", ca)):
            if not str(att.get("_target_", "")).endswith("RoPEAttention") or int(att.get("downsample_rate", 1)) != 1 \
                    or int(att.get("num_heads", 1)) != cfg.num_heads or int(att["embedding_dim"]) != cfg.d_model \
                    or float(att.get("rope_theta", 10000.0)) != cfg.rope_theta:
                raise ValueError(f"memory_attention config: {name} must be a RoPEAttention like the official ones")
        if sa.get("kv_in_dim") not in (None, cfg.d_model) or sa.get("rope_k_repeat", False) \
                or not ca.get("rope_k_repeat", False):
            raise ValueError("memory_attention config: unsupported self/cross attention key settings")
        return cfg


@lru_cache(maxsize=8)
def axial_rope(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """compute_axial_cis as (cos, sin), each (end_x*end_y, dim//2) float32: the first dim//4
    columns rotate by x position, the rest by y position (token t is at x = t % end_x, y = t // end_x)."""
    if dim % 4:
        raise ValueError(f"axial RoPE needs a head dim divisible by 4, got {dim}")
    exps = np.arange(0, dim, 4, dtype=F32)[: dim // 4] / F32(dim)
    # torch raises the python-float theta to float32 powers with a correctly rounded result
    freqs = (F32(1.0) / np.power(np.float64(theta), exps.astype(np.float64)).astype(F32)).astype(F32)
    t = np.arange(end_x * end_y, dtype=F32)
    t_x = np.mod(t, F32(end_x))
    t_y = np.floor(t / F32(end_x))
    angles = np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1).astype(F32)
    cos, sin = np.cos(angles), np.sin(angles)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate channel pairs (2i, 2i+1) of x (..., N, D) by the angles of cos/sin (N, D/2)
    (a multiple of N tokens repeats the table, as rope_k_repeat does for memory frames)."""
    n, half = x.shape[-2], x.shape[-1] // 2
    if n % cos.shape[0]:
        raise ValueError(f"RoPE: {n} tokens is not a multiple of the {cos.shape[0]}-position table")
    reps = n // cos.shape[0]
    if reps > 1:
        cos, sin = np.tile(cos, (reps, 1)), np.tile(sin, (reps, 1))
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty(x.shape, F32)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    assert out.shape[-1] == 2 * half
    return out


def _rotate_halves(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, axis: int) -> np.ndarray:
    """RoPE on a split layout (all pair-first channels, then all pair-second channels along `axis`):
    the same products and sums as apply_rope on the interleaved layout, on contiguous halves."""
    a, b = np.split(x, 2, axis=axis)
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=axis)


def _softmax_blocks(q: np.ndarray, kt: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax(q kt) v for one head, q already scaled, keys transposed (D, Lk); query blocks bound
    the score memory, and one score buffer is reused across blocks (fresh 59 MB arrays page-fault)."""
    out = np.empty((q.shape[0], v.shape[1]), F32)
    scores = np.empty((min(QUERY_BLOCK, q.shape[0]), kt.shape[1]), F32)
    for s in range(0, q.shape[0], QUERY_BLOCK):
        qb = q[s:s + QUERY_BLOCK]
        sb = scores[:qb.shape[0]]
        np.matmul(qb, kt, out=sb)
        sb -= sb.max(axis=1, keepdims=True)
        np.exp(sb, out=sb)
        denom = sb.sum(axis=1, keepdims=True)
        o = sb @ v
        o /= denom
        out[s:s + QUERY_BLOCK] = o
    return out


class RoPEAttention:
    """sam2 RoPEAttention (downsample_rate 1, eval mode): projections, axial RoPE on q and on
    all keys but the last `num_k_exclude_rope`, scaled dot-product attention, out projection."""

    def __init__(self, w, cfg: MemoryAttentionConfig, *, kv_in_dim: int, rope_k_repeat: bool):
        d = cfg.d_model
        self.cfg, self.kv_in_dim, self.rope_k_repeat = cfg, kv_in_dim, rope_k_repeat
        self.heads = cfg.num_heads
        if d % self.heads:
            raise ValueError("num_heads must divide d_model")
        self.q_w, self.q_b = w.take("q_proj.weight", (d, d)), w.take("q_proj.bias", (d,))
        self.k_w, self.k_b = w.take("k_proj.weight", (d, kv_in_dim)), w.take("k_proj.bias", (d,))
        self.v_w, self.v_b = w.take("v_proj.weight", (d, kv_in_dim)), w.take("v_proj.bias", (d,))
        self.o_w, self.o_b = w.take("out_proj.weight", (d, d)), w.take("out_proj.bias", (d,))
        # Scores only need q.k per head, so the q and k channels may be reordered alike: each head's
        # (even, odd) RoPE pairs become (first half, second half), making the rotation contiguous.
        # The 1/sqrt(head_dim) scale (a power of two here) is folded into the q projection.
        hd = d // self.heads
        order = np.concatenate([h * hd + np.r_[0:hd:2, 1:hd:2] for h in range(self.heads)])
        scale = F32(1.0 / math.sqrt(hd))
        self._qw, self._qb = self.q_w[order] * scale, self.q_b[order] * scale
        self._kw, self._kb = np.ascontiguousarray(self.k_w[order]), self.k_b[order]

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, num_k_exclude_rope: int = 0) -> np.ndarray:
        """q (Lq, d), k and v (Lk, kv_in_dim) for one batch element -> (Lq, d)."""
        lq, lk = q.shape[0], k.shape[0]
        side = math.isqrt(lq)
        if side * side != lq:
            raise ValueError(f"RoPE attention needs a square query map, got {lq} tokens")
        if lq != lk - num_k_exclude_rope and not self.rope_k_repeat:
            raise ValueError("keys differ in number from queries but rope_k_repeat is off")
        n_rope = lk - num_k_exclude_rope
        if n_rope % lq:
            raise ValueError(f"RoPE: {n_rope} keys is not a multiple of the {lq}-position table")
        hd = self.cfg.d_model // self.heads
        cos, sin = axial_rope(hd, side, side, self.cfg.rope_theta)
        qp = nn.linear(q, self._qw, self._qb)
        kt = self._kw @ k.astype(F32, copy=False).T                    # (d, Lk): keys already transposed
        kt += self._kb[:, None]
        # value path: project after attention when that is cheaper (kv_in_dim < head width)
        late_v = self.heads == 1 and self.kv_in_dim < hd
        vp = v.astype(F32, copy=False) if late_v else nn.linear(v, self.v_w, self.v_b)
        reps = n_rope // lq
        outs = []
        for h in range(self.heads):
            sl = slice(h * hd, (h + 1) * hd)
            qh = _rotate_halves(qp[:, sl], cos, sin, axis=1)
            kh = kt[sl]
            if n_rope:
                kh[:, :n_rope] = _rotate_halves(kh[:, :n_rope], _tiled_t(cos, reps), _tiled_t(sin, reps), axis=0)
            outs.append(_softmax_blocks(qh, kh, vp if late_v else vp[:, sl]))
        out = outs[0] if self.heads == 1 else np.concatenate(outs, axis=1)
        if late_v:
            out = nn.linear(out, self.v_w, self.v_b)
        return nn.linear(out, self.o_w, self.o_b)


_TILED: dict = {}


def _tiled_t(table: np.ndarray, reps: int) -> np.ndarray:
    """The RoPE table transposed (D/2, N*reps), repeated once per memory frame; cached per table."""
    key = (id(table), reps)
    if key not in _TILED:
        if len(_TILED) > 16:
            _TILED.clear()
        _TILED[key] = (table, np.ascontiguousarray(np.tile(table.T, (1, reps))))
    return _TILED[key][1]


class MemoryAttentionLayer:
    """Pre-norm self-attention, cross-attention to the memory, ReLU FFN; each with a residual."""

    def __init__(self, w, cfg: MemoryAttentionConfig):
        d, f = cfg.d_model, cfg.dim_feedforward
        self.cfg = cfg
        self.self_attn = RoPEAttention(w.take_prefix("self_attn"), cfg, kv_in_dim=d, rope_k_repeat=False)
        self.cross_attn = RoPEAttention(w.take_prefix("cross_attn_image"), cfg, kv_in_dim=cfg.kv_in_dim,
                                        rope_k_repeat=True)
        self.l1_w, self.l1_b = w.take("linear1.weight", (f, d)), w.take("linear1.bias", (f,))
        self.l2_w, self.l2_b = w.take("linear2.weight", (d, f)), w.take("linear2.bias", (d,))
        self.norms = [(w.take(f"norm{i}.weight", (d,)), w.take(f"norm{i}.bias", (d,))) for i in (1, 2, 3)]
        if cfg.activation == "relu":
            self.act = nn.relu
        elif cfg.activation == "gelu":
            self.act = nn.gelu
        else:
            raise ValueError(f"memory attention activation must be relu or gelu, not {cfg.activation!r}")

    def __call__(self, tgt, memory, pos, query_pos, num_k_exclude_rope: int = 0):
        cfg = self.cfg
        t2 = nn.layer_norm(tgt, *self.norms[0])
        qk = t2 + query_pos if cfg.pos_enc_at_attn else t2
        tgt = tgt + self.self_attn(qk, qk, t2)
        t2 = nn.layer_norm(tgt, *self.norms[1])
        tgt = tgt + self.cross_attn(t2 + query_pos if cfg.pos_enc_at_cross_attn_queries else t2,
                                    memory + pos if cfg.pos_enc_at_cross_attn_keys else memory,
                                    memory, num_k_exclude_rope)
        t2 = nn.layer_norm(tgt, *self.norms[2])
        return tgt + nn.linear(self.act(nn.linear(t2, self.l1_w, self.l1_b)), self.l2_w, self.l2_b)


class MemoryAttention:
    """curr (B, L, d) with curr_pos, memory (B, M, kv_in_dim) with memory_pos -> (B, L, d);
    the last `num_obj_ptr_tokens` memory tokens are object pointers (no RoPE)."""

    def __init__(self, w, cfg: MemoryAttentionConfig = MemoryAttentionConfig()):
        self.cfg = cfg
        self.layers = [MemoryAttentionLayer(w.take_prefix(f"layers.{i}"), cfg) for i in range(cfg.num_layers)]
        self.norm_w = w.take("norm.weight", (cfg.d_model,))
        self.norm_b = w.take("norm.bias", (cfg.d_model,))

    def __call__(self, curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens: int = 0) -> np.ndarray:
        cfg = self.cfg
        if curr.ndim != 3 or curr.shape[-1] != cfg.d_model:
            raise ValueError(f"memory attention: curr must be (B, L, {cfg.d_model}), got {curr.shape}")
        if memory.ndim != 3 or memory.shape[-1] != cfg.kv_in_dim or memory.shape[0] != curr.shape[0]:
            raise ValueError(f"memory attention: memory must be (B={curr.shape[0]}, M, {cfg.kv_in_dim}), "
                             f"got {memory.shape}")
        if curr_pos.shape != curr.shape or memory_pos.shape != memory.shape:
            raise ValueError("memory attention: position encodings must match their features' shapes")
        out = []
        for b in range(curr.shape[0]):
            x = curr[b].astype(F32, copy=False)
            if cfg.pos_enc_at_input:
                x = x + F32(0.1) * curr_pos[b]
            mem, mpos = memory[b].astype(F32, copy=False), memory_pos[b].astype(F32, copy=False)
            for layer in self.layers:
                x = layer(x, mem, mpos, curr_pos[b], num_obj_ptr_tokens)
            out.append(nn.layer_norm(x, self.norm_w, self.norm_b))
        return np.stack(out)
