"""SAM2ImagePredictor on a graph runner (float or integer): same preprocessing, prompts and outputs.

    predictor = GraphPredictor(graph, IntRunner(graph, qparams))
    predictor.set_image(rgb)
    masks, ious, low_res = predictor.predict(point_coords=[[x, y]], point_labels=[1])

Everything around the graph is golden_model.predictor.ImagePredictor's code: resize +
normalise, coordinate transforms, the box-as-two-points rule, MaskDecoder's output
selection (multimask / dynamic stability), the final bilinear upsample and threshold.
Mask prompts (mask_input: low-res logits (1, 4h, 4w), e.g. a previous call's) run the graph's mask
branch (builder.MASK_INPUT); a graph (or quantised file) without it names what it lacks.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from golden_model.mask_decoder import MaskDecoder, MaskDecoderConfig
from golden_model.predictor import LOW_RES_CLAMP, ImageFeatures, ImagePredictor, PromptError, points_with_box
from golden_model.quant.builder import MASK_INPUT, require_mask_path

F32 = np.float32


def best_low_res(out: dict) -> np.ndarray:
    """The multimask output with the highest predicted IoU of a decode() environment, clamped as
    ImagePredictor's low-res logits: the mask prompt of a refinement, (1, 1, h, w)."""
    best = 1 + int(np.argmax(out["iou_pred"][0, 1:]))
    return np.clip(out["masks"][:, best:best + 1], -LOW_RES_CLAMP, LOW_RES_CLAMP).astype(F32)


def mask_feed(graph, mask, what: str = "the int8 graph") -> dict:
    """{MASK_INPUT: mask} for the graph runner: (1, 1, 4h, 4w) logits -> channels-last; a graph without the
    mask branch, or a mask of another size, is refused naming what is wrong."""
    require_mask_path(graph, what)
    shape = graph.tensors[MASK_INPUT].shape
    mask = np.asarray(mask, F32)
    if mask.shape != (1, 1) + shape[1:3]:
        raise PromptError(f"mask prompt must be (1, 1, {shape[1]}, {shape[2]}) low-res logits, got {mask.shape}")
    return {MASK_INPUT: np.ascontiguousarray(mask.transpose(0, 2, 3, 1))}


class _DecoderOutputs:
    """MaskDecoder's output selection without its weights."""
    stability_scores = MaskDecoder.stability_scores
    dynamic_multimask_via_stability = MaskDecoder.dynamic_multimask_via_stability
    select_outputs = MaskDecoder.select_outputs

    def __init__(self, cfg: MaskDecoderConfig):
        self.cfg = cfg


class GraphPredictor(ImagePredictor):
    def __init__(self, graph, runner, mask_threshold: float = 0.0):
        super().__init__(SimpleNamespace(image_size=graph.image_size), mask_threshold)
        self.graph, self.runner = graph, runner
        self.decoder = _DecoderOutputs(MaskDecoderConfig(**graph.meta["decoder_cfg"]))
        self.env: dict = {}

    def image_input(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB -> the graph's input: normalised (1, S, S, 3) float32."""
        return np.ascontiguousarray(self.preprocess(image).transpose(0, 2, 3, 1))

    def set_image(self, image: np.ndarray, observe=None) -> None:
        image = np.asarray(image)
        self.features, self.env = None, {}        # the last image's tensors dropped first (a runner's in DDR freed)
        self.env = self.runner.run({"image": self.image_input(image)}, stages=("image_encoder",), observe=observe)
        self.features = ImageFeatures(image_embed=None, high_res_feats=[],
                                      orig_hw=(int(image.shape[0]), int(image.shape[1])))

    def decode(self, coords, labels, observe=None, mask=None) -> dict:
        """The decoder stages for one prompt set (coords in the S x S input frame; `mask` an optional mask
        prompt (1, 1, 4h, 4w)): the environment with every tensor of the image and decoder stages (masks
        (1, 4, h, w), iou_pred, hs, ...)."""
        feeds = {"point_coords": np.asarray(coords, F32), "point_labels": np.asarray(labels, F32)}
        if mask is not None:
            feeds.update(mask_feed(self.graph, mask))
        return self.runner.run(feeds, stages=("prompt_encoder", "mask_decoder"), env=self.env, observe=observe)

    def decode_click(self, click, observe=None, mask=None) -> dict:
        """decode() for one foreground click (x, y) in pixels of the image set last."""
        h, w = self.features.orig_hw
        coords = np.array([[click]], F32) * F32(self.graph.image_size) / np.array([w, h], F32)
        return self.decode(coords, np.ones((1, 1), F32), observe, mask)

    def _predict(self, coords, labels, boxes, mask_input, multimask_output, return_logits):
        points = points_with_box(coords, labels, boxes)
        if points is None and mask_input is None:
            raise PromptError("the int8 graph needs a point, a box or a mask prompt")
        if points is None:      # a mask prompt alone: no sparse prompt (the official's points=None)
            points = np.zeros((1, 0, 2), F32), np.zeros((1, 0), F32)
        if points[0].shape[0] != 1 or (mask_input is not None and np.shape(mask_input)[0] != 1):
            raise PromptError("the int8 graph takes one prompt set at a time")
        out = self.decode(*points, mask=mask_input)
        s = self.graph.meta["obj_token"]
        hs = out["hs"]
        n = self.graph.meta["num_mask_tokens"]
        obj = out.get("obj_score", np.full((1, 1), 10.0, F32))
        sel = self.decoder.select_outputs(out["masks"], out["iou_pred"], hs[:, s + 1:s + 1 + n], obj, multimask_output)
        return self._finish(sel.masks.astype(F32), sel.iou_pred, return_logits)
