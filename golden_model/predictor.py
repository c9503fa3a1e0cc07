"""The official SAM2ImagePredictor's behaviour in NumPy (sam2/sam2_image_predictor.py).

    predictor = ImagePredictor(model)          # model: golden_model.model.SAM2Model
    predictor.set_image(rgb_uint8_hwc)        # resize to 1024 (antialiased bilinear), normalise, encode once
    masks, ious, low_res = predictor.predict(point_coords=[[x, y]], point_labels=[1])

set_image: ToTensor, Resize((S, S)) (bilinear + antialias, as torchvision on a tensor),
Normalize(ImageNet mean/std), the image encoder, conv_s0/conv_s1 on the high-res levels,
and `no_mem_embed` added to the lowest-resolution features (SAM 2 trains images as
one-frame videos). predict: pixel coordinates are normalised by the original size and
scaled to S, a box becomes two points labelled 2 and 3 placed before the clicks, the
prompt encoder and mask decoder run, the low-res logits (256 x 256) are upsampled to
the original size with plain bilinear (align_corners=False) and thresholded at 0
(as 0./1. floats) unless return_logits. Low-res logits come back clamped to [-32, 32] (ready to be the
next call's mask_input).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden_model.transforms import normalize, resize_antialias, resize_bilinear, to_tensor

F32 = np.float32
LOW_RES_CLAMP = 32.0   # the official predictor clamps returned low-res logits to +-32


class PromptError(ValueError):
    """Prompts of the wrong shape or kind: the message says which."""


@dataclass
class ImageFeatures:
    image_embed: np.ndarray                 # (1, C, S/16, S/16), no_mem_embed added where the config says
    high_res_feats: list[np.ndarray]        # [(1, C/8, S/4, S/4), (1, C/4, S/8, S/8)] already projected
    orig_hw: tuple[int, int]


class ImagePredictor:
    def __init__(self, model, mask_threshold: float = 0.0):
        self.model = model
        self.mask_threshold = mask_threshold
        self.features: ImageFeatures | None = None

    # ----------------------------------------------------------------- image
    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB (H, W, 3) -> the normalised (1, 3, S, S) float32 network input."""
        s = self.model.image_size
        x = to_tensor(image)[None]
        return normalize(resize_antialias(x, (s, s)))

    def set_image(self, image: np.ndarray) -> None:
        image = np.asarray(image)
        self.features = None
        x = self.preprocess(image)
        backbone_out = self.model.forward_image(x)
        _, vision_feats, _, feat_sizes = self.model.prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        # (HW, 1, C) -> (1, C, H, W), per level
        feats = [f.transpose(1, 2, 0).reshape(1, -1, h, w) for f, (h, w) in zip(vision_feats, feat_sizes)]
        self.features = ImageFeatures(image_embed=feats[-1], high_res_feats=feats[:-1],
                                      orig_hw=(int(image.shape[0]), int(image.shape[1])))

    # ----------------------------------------------------------------- prompts
    def _transform_coords(self, coords: np.ndarray) -> np.ndarray:
        h, w = self.features.orig_hw
        c = np.array(coords, dtype=F32, copy=True)
        c[..., 0] = c[..., 0] / F32(w)
        c[..., 1] = c[..., 1] / F32(h)
        return c * F32(self.model.image_size)

    def _prep_prompts(self, point_coords, point_labels, box, mask_input):
        coords = labels = boxes = mask = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels must be given with point_coords")
            coords = self._transform_coords(np.asarray(point_coords, F32))
            labels = np.asarray(point_labels).astype(np.int32)
            if coords.shape[-1] != 2 or coords.shape[:-1] != labels.shape:
                raise PromptError(f"point_coords {coords.shape} must be (N, 2) with point_labels (N,), "
                                  f"got labels {labels.shape}")
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            box = np.asarray(box, F32)
            if box.shape[-1] != 4:
                raise PromptError(f"box must be x0, y0, x1, y1 (shape (4,) or (B, 4)), got {box.shape}")
            boxes = self._transform_coords(box.reshape(-1, 2, 2))
        if mask_input is not None:
            mask = np.asarray(mask_input, F32)
            if mask.ndim == 3:
                mask = mask[None]
        return coords, labels, boxes, mask

    # ----------------------------------------------------------------- predict
    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """Returns (masks (M, H, W) float32: 0./1., or logits with return_logits; ious (M,); low-res logits
        (M, 256, 256)), as the official predict(). M = 3 with multimask_output, else 1."""
        if self.features is None:
            raise RuntimeError("an image must be set with set_image(...) before predict(...)")
        coords, labels, boxes, mask = self._prep_prompts(point_coords, point_labels, box, mask_input)
        masks, ious, low_res = self._predict(coords, labels, boxes, mask, multimask_output, return_logits)
        return masks[0], ious[0], low_res[0]

    def _predict(self, coords, labels, boxes, mask_input, multimask_output, return_logits):
        points = points_with_box(coords, labels, boxes)
        model = self.model
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        batched = points is not None and points[0].shape[0] > 1
        out = model.sam_mask_decoder(self.features.image_embed, model.sam_prompt_encoder.get_dense_pe(), sparse, dense,
                                     multimask_output, repeat_image=batched,
                                     high_res_features=self.features.high_res_feats)
        return self._finish(out.masks, out.iou_pred, return_logits)

    def _finish(self, low_res, iou_pred, return_logits):
        """Low-res logits -> (masks at the original size, ious, clamped low-res logits)."""
        masks = resize_bilinear(low_res, self.features.orig_hw)
        low_res = np.clip(low_res, -LOW_RES_CLAMP, LOW_RES_CLAMP)
        if not return_logits:
            masks = (masks > self.mask_threshold).astype(F32)  # the official returns 0./1. floats
        return masks, iou_pred, low_res


def points_with_box(coords, labels, boxes):
    """(coords, labels) with a box's corners as two points labelled 2, 3 placed before any clicks (or None)."""
    points = (coords, labels) if coords is not None else None
    if boxes is None:
        return points
    box_labels = np.tile(np.array([[2, 3]], np.int32), (boxes.shape[0], 1))
    if points is None:
        return boxes, box_labels
    return np.concatenate([boxes, points[0]], axis=1), np.concatenate([box_labels, points[1]], axis=1)
