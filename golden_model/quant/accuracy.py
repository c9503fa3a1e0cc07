"""int8 against float: mask IoU, predicted-IoU deltas, per-node SQNR.

    rows = compare_masks(qm, float_graph, images, n_prompts=3)     # one row per (image, click)
    sqnr = node_sqnr(qm, float_graph, image, click)                  # {tensor: dB}, end to end

Both sides run the same graph structure on the same input: the float interpreter on the
float graph and the integer interpreter on the quantised one. IoU is of the chosen mask
(the float side's best candidate by predicted IoU, the same index on the int side),
thresholded at logits > 0 at the original image size. `refined_iou`: the same click again with the
float side's best low-res mask as the mask prompt (the refinement loop), int8 vs float.
"""
from __future__ import annotations

import numpy as np

from golden_model.quant.graph import Graph
from golden_model.quant.interpret import FloatRunner
from golden_model.quant.intinterp import IntRunner
from golden_model.quant.predictor import GraphPredictor
from golden_model.quant.quantize import QuantModel, dequantize_tensor, quantize_tensor


def eval_clicks(image_hw, n: int) -> list[list[float]]:
    """`n` fixed clicks (x, y) per image: centre, then points at fixed fractions (reproducible, image-relative)."""
    h, w = image_hw
    spots = [(0.5, 0.5), (0.3, 0.65), (0.7, 0.35), (0.25, 0.3), (0.75, 0.7)]
    return [[fx * w, fy * h] for fx, fy in spots[:n]]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def compare_masks(qm: QuantModel, float_graph: Graph, images: dict, n_prompts: int = 3) -> list[dict]:
    """Per (image, click): mask IoU of int8 vs float (logits > 0), the predicted-IoU delta, and the IoU of the
    click refined with the float mask as a mask prompt (module docstring)."""
    fp = GraphPredictor(float_graph, FloatRunner(float_graph))
    ip = GraphPredictor(qm.graph, IntRunner(qm))
    rows = []
    for name, image in images.items():
        fp.set_image(image)
        ip.set_image(image)
        for click in eval_clicks(image.shape[:2], n_prompts):
            fl, fi, low = fp.predict(point_coords=[click], point_labels=[1], return_logits=True)
            ql, qi, _ = ip.predict(point_coords=[click], point_labels=[1], return_logits=True)
            best = int(np.argmax(fi))
            refined = [p.predict(point_coords=[click], point_labels=[1], mask_input=low[best:best + 1],
                                 multimask_output=False, return_logits=True)[0][0] for p in (fp, ip)]
            rows.append({"image": name, "click": f"{click[0]:.0f},{click[1]:.0f}",
                         "mask_iou": mask_iou(fl[best] > 0, ql[best] > 0),
                         "pred_iou_float": float(fi[best]), "pred_iou_delta": float(abs(qi[best] - fi[best])),
                         "same_choice": bool(int(np.argmax(qi)) == best),
                         "refined_iou": mask_iou(refined[0] > 0, refined[1] > 0)})
    return rows


def stage_split(qm: QuantModel, float_graph: Graph, images: dict, n_prompts: int = 3) -> list[dict]:
    """Which half loses the IoU: per (image, click), mask IoU and mask-logit SQNR against float of the int8
    graph, of the int8 image encoder feeding the float decoder (features dequantised) and of the float
    encoder feeding the int8 decoder (features quantised at their scales)."""
    fp = GraphPredictor(float_graph, FloatRunner(float_graph))
    ip = GraphPredictor(qm.graph, IntRunner(qm))
    feats = float_graph.meta["image_outputs"]
    rows = []
    for name, image in images.items():
        fp.set_image(image)
        ip.set_image(image)
        f_env, i_env = fp.env, ip.env
        envs = {"int8": (ip, i_env),
                "int8 encoder, float decoder": (fp, {k: dequantize_tensor(i_env[k], qm.graph.tensors[k]).astype(
                    np.float32) for k in feats}),
                "float encoder, int8 decoder": (ip, {k: quantize_tensor(f_env[k], qm.graph.tensors[k].scale,
                                                                        qm.graph.tensors[k].zero_point) for k in feats})}
        for click in eval_clicks(image.shape[:2], n_prompts):
            fp.env = f_env
            fl, fi, _ = fp.predict(point_coords=[click], point_labels=[1], return_logits=True)
            best = int(np.argmax(fi))
            for split, (pred, env) in envs.items():
                pred.env = env
                lg, _, _ = pred.predict(point_coords=[click], point_labels=[1], return_logits=True)
                rows.append({"split": split, "image": name, "mask_iou": mask_iou(fl[best] > 0, lg[best] > 0),
                             "logit_sqnr_db": sqnr_db(fl[best], lg[best])})
        fp.env, ip.env = f_env, i_env
    return rows


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - test|^2) (inf when equal)."""
    ref = np.asarray(ref, np.float64)
    err = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    sig = float(np.sum(ref ** 2))
    if err == 0:
        return float("inf")
    return 10 * np.log10(sig / err) if sig > 0 else float("-inf")


def _env(predictor: GraphPredictor, image, click) -> dict:
    predictor.set_image(image)
    return predictor.decode_click(click)


def node_sqnr(qm: QuantModel, float_graph: Graph, image: np.ndarray, click) -> dict[str, float]:
    """SQNR (dB) of every node output, int8 graph (dequantised) vs float graph, image + one click, end to end."""
    fenv = _env(GraphPredictor(float_graph, FloatRunner(float_graph)), image, click)
    ienv = _env(GraphPredictor(qm.graph, IntRunner(qm)), image, click)
    out = {}
    for node in float_graph.nodes:
        name = node.outputs[0]
        if name not in fenv:        # a branch not taken (the mask prompt's)
            continue
        spec = qm.graph.tensors[name]
        q = ienv[name]
        if spec.dtype == "int8":
            q = dequantize_tensor(q, spec)
        out[name] = sqnr_db(fenv[name], q)
    return out


def local_sqnr(qm: QuantModel, float_graph: Graph, image: np.ndarray, click) -> dict[str, float]:
    """SQNR (dB) of each integer node on its own: float inputs quantised at their scales, the node's
    integer op, against the float op on the float inputs (what that node alone costs)."""
    from golden_model.quant.intinterp import INT_OPS
    fenv = _env(GraphPredictor(float_graph, FloatRunner(float_graph)), image, click)
    runner = IntRunner(qm)
    g = qm.graph
    out = {}
    for node in g.nodes:
        name = node.outputs[0]
        if g.tensors[name].dtype != "int8" or node.op == "quantize" or name not in fenv:
            continue
        args = []
        for i in node.inputs:
            if i in g.constants:
                args.append(g.constants[i])
            elif g.tensors[i].dtype == "int8":
                args.append(quantize_tensor(fenv[i], g.tensors[i].scale, g.tensors[i].zero_point))
            else:
                args.append(fenv[i])
        q = dequantize_tensor(INT_OPS[node.op](node, args, runner), g.tensors[name])
        out[name] = sqnr_db(fenv[name], q)
    return out


def noise_floor(float_graph: Graph, images: dict, levels_db=(40, 30, 26), n_prompts: int = 3,
                seed: int = 0) -> list[dict]:
    """How sensitive the float model's masks are: IoU of float masks with white noise at each SQNR added
    to the image features (image embedding and high-res features) against the clean float masks. On
    random weights this bounds what any quantisation with that SQNR at the features can reach."""
    rng = np.random.default_rng(seed)
    clean = GraphPredictor(float_graph, FloatRunner(float_graph))
    noisy = GraphPredictor(float_graph, FloatRunner(float_graph))
    feats = float_graph.meta["image_outputs"]
    ious = {db: [] for db in levels_db}
    for image in images.values():
        clean.set_image(image)
        noisy.features = clean.features
        for db in levels_db:
            noisy.env = {}
            for k in feats:
                v = clean.env[k]
                sigma = np.sqrt(np.mean(np.square(v, dtype=np.float64))) * 10 ** (-db / 20)
                noisy.env[k] = (v + sigma * rng.standard_normal(v.shape)).astype(np.float32)
            for click in eval_clicks(image.shape[:2], n_prompts):
                fl, fi, _ = clean.predict(point_coords=[click], point_labels=[1], return_logits=True)
                nl, _, _ = noisy.predict(point_coords=[click], point_labels=[1], return_logits=True)
                best = int(np.argmax(fi))
                ious[db].append(mask_iou(fl[best] > 0, nl[best] > 0))
    return [{"feature_sqnr_db": db, "iou_median": float(np.median(v)), "iou_worst": float(np.min(v)),
             "cases": len(v)} for db, v in ious.items()]
