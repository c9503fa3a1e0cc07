"""SAM 2's prompt encoder in NumPy (official: sam2/modeling/sam/prompt_encoder.py).

Points, boxes and masks become the mask decoder's inputs:
  * sparse embeddings (B, N, C): a random-Fourier position code of each point
    (or box corner) plus a learned embedding per label; label -1 (padding) is
    replaced by `not_a_point_embed`;
  * dense embeddings (B, C, h, w): the mask prompt through two 2x2/s2 convs
    (LayerNorm2d + GELU after each) and a 1x1 conv, or `no_mask_embed` everywhere.
Weights are taken by the official keys under the prefix given (`sam_prompt_encoder.`).
"""
from __future__ import annotations

import numpy as np

from golden_model import nn

F32 = np.float32

#: Point labels as the official code uses them.
LABEL_PAD, LABEL_NEG, LABEL_POS, LABEL_BOX_TL, LABEL_BOX_BR = -1, 0, 1, 2, 3
NUM_POINT_EMBEDDINGS = 4  # negative, positive, box top-left, box bottom-right


class PositionEmbeddingRandom:
    """Random spatial frequencies: pe(x) = [sin(2 pi (2x-1) G), cos(2 pi (2x-1) G)], G (2, C/2)."""

    def __init__(self, weights, num_pos_feats: int):
        self.gaussian = weights.take("positional_encoding_gaussian_matrix", (2, num_pos_feats))

    def _encode(self, coords01: np.ndarray) -> np.ndarray:
        c = (F32(2) * coords01.astype(F32) - F32(1)) @ self.gaussian
        c = F32(2 * np.pi) * c
        return np.concatenate([np.sin(c), np.cos(c)], axis=-1)

    def grid(self, h: int, w: int) -> np.ndarray:
        """Encoding of every cell centre of an h x w grid, (C, h, w)."""
        y = (np.cumsum(np.ones((h, w), F32), axis=0) - F32(0.5)) / F32(h)
        x = (np.cumsum(np.ones((h, w), F32), axis=1) - F32(0.5)) / F32(w)
        return self._encode(np.stack([x, y], axis=-1)).transpose(2, 0, 1)

    def at(self, coords: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """Encoding of pixel coordinates (..., 2) as (x, y) in an image of size image_hw."""
        c = np.array(coords, dtype=F32, copy=True)
        c[..., 0] = c[..., 0] / F32(image_hw[1])
        c[..., 1] = c[..., 1] / F32(image_hw[0])
        return self._encode(c)


class PromptEncoder:
    def __init__(self, weights, *, embed_dim: int = 256, image_embedding_size: tuple[int, int] = (64, 64),
                 input_image_size: tuple[int, int] = (1024, 1024), mask_in_chans: int = 16):
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(weights.take_prefix("pe_layer"), embed_dim // 2)
        self.point_embeddings = [weights.take(f"point_embeddings.{i}.weight", (1, embed_dim))[0]
                                 for i in range(NUM_POINT_EMBEDDINGS)]
        self.not_a_point_embed = weights.take("not_a_point_embed.weight", (1, embed_dim))[0]
        self.no_mask_embed = weights.take("no_mask_embed.weight", (1, embed_dim))[0]
        c4, c = mask_in_chans // 4, mask_in_chans
        md = weights.take_prefix("mask_downscaling")
        self.mask_conv0 = (md.take("0.weight", (c4, 1, 2, 2)), md.take("0.bias", (c4,)))
        self.mask_norm1 = (md.take("1.weight", (c4,)), md.take("1.bias", (c4,)))
        self.mask_conv3 = (md.take("3.weight", (c, c4, 2, 2)), md.take("3.bias", (c,)))
        self.mask_norm4 = (md.take("4.weight", (c,)), md.take("4.bias", (c,)))
        self.mask_conv6 = (md.take("6.weight", (embed_dim, c, 1, 1)), md.take("6.bias", (embed_dim,)))
        self._dense_pe = None

    def get_dense_pe(self) -> np.ndarray:
        """Position code of the image embedding grid, (1, C, h, w); computed once."""
        if self._dense_pe is None:
            self._dense_pe = self.pe_layer.grid(*self.image_embedding_size)[None]
        return self._dense_pe

    def embed_points(self, points: np.ndarray, labels: np.ndarray, pad: bool) -> np.ndarray:
        """points (B, N, 2) pixel (x, y) in the 1024 input frame, labels (B, N) in {-1, 0, 1, 2, 3}."""
        points = np.asarray(points, F32) + F32(0.5)  # pixel centres
        labels = np.asarray(labels)
        if pad:
            b = points.shape[0]
            points = np.concatenate([points, np.zeros((b, 1, 2), F32)], axis=1)
            labels = np.concatenate([labels, -np.ones((b, 1), labels.dtype)], axis=1)
        emb = self.pe_layer.at(points, self.input_image_size)
        lab = labels[..., None]
        emb = np.where(lab == LABEL_PAD, self.not_a_point_embed, emb)
        for i in range(NUM_POINT_EMBEDDINGS):
            emb = np.where(lab == i, emb + self.point_embeddings[i], emb)
        return emb.astype(F32, copy=False)

    def embed_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """boxes (B, 4) as x0, y0, x1, y1 -> (B, 2, C): corner codes plus the corner embeddings."""
        corners = (np.asarray(boxes, F32) + F32(0.5)).reshape(-1, 2, 2)
        emb = self.pe_layer.at(corners, self.input_image_size)
        emb[:, 0] += self.point_embeddings[LABEL_BOX_TL]
        emb[:, 1] += self.point_embeddings[LABEL_BOX_BR]
        return emb

    def embed_masks(self, masks: np.ndarray) -> np.ndarray:
        """masks (B, 1, 4h, 4w) logits -> (B, C, h, w)."""
        masks = np.asarray(masks, F32)
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2:] != self.mask_input_size:
            raise ValueError(f"mask prompt must be (B, 1, {self.mask_input_size[0]}, "
                             f"{self.mask_input_size[1]}), got {masks.shape}")
        x = nn.conv2d(masks, *self.mask_conv0, stride=2)
        x = nn.gelu(nn.layer_norm_2d(x, *self.mask_norm1))
        x = nn.conv2d(x, *self.mask_conv3, stride=2)
        x = nn.gelu(nn.layer_norm_2d(x, *self.mask_norm4))
        return nn.conv2d(x, *self.mask_conv6)

    def __call__(self, points=None, boxes=None, masks=None) -> tuple[np.ndarray, np.ndarray]:
        """points: (coords (B, N, 2), labels (B, N)) or None; boxes (B, 4) or None; masks (B, 1, 4h, 4w) or None.
        Returns sparse (B, N', C) and dense (B, C, h, w) embeddings, as the official forward."""
        if points is not None:
            bs = np.shape(points[0])[0]
        elif boxes is not None:
            bs = np.shape(boxes)[0]
        elif masks is not None:
            bs = np.shape(masks)[0]
        else:
            bs = 1
        parts = [np.zeros((bs, 0, self.embed_dim), F32)]
        if points is not None:
            parts.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        sparse = np.concatenate(parts, axis=1)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = np.broadcast_to(self.no_mask_embed[None, :, None, None], (bs, self.embed_dim, h, w))
        return sparse, dense
