"""The quantised model file: one .safetensors, strict and safe to load.

Contents: every constant of the integer graph as `const/<name>` (int8 weights, int32 biases,
int8 constant operands; float32 only for host nodes and LayerNorm's source gamma/beta) and every
node's integer parameters as `param/<node>/<key>` (requantiser multipliers and shifts, attention
parameters, golden_model.intvec parameter arrays). The metadata holds the format tag, model,
image size, preset, key tile, estimator and the graph (JSON, with every tensor's scale).

Loading checks everything against the graph and names each problem: missing, unexpected, or
wrongly typed tensors; a file for another model or preset is refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from golden_model.checkpoint import CheckpointError, load_safetensors_with_metadata, save_safetensors
from golden_model.quant.graph import Graph, GraphError, check_arrays
from golden_model.quant.quantize import QuantModel

FORMAT = "sam2fpga-int8-v1"


class QuantFileError(ValueError):
    """A quantised model file that cannot be used: the message names what is wrong."""


def expected_params(graph: Graph) -> dict[str, tuple[tuple, str]]:
    """{param/<node>/<key>: (shape or None, dtype)} of every node's integer parameters."""
    from golden_model import intvec
    vec_keys = {
        "layernorm": intvec.LayerNormParams.make(np.ones(4), np.zeros(4), 1.0, 1.0, 1e-5).to_arrays(),
        "gelu": intvec.LutParams.gelu(0.05, 0.05).to_arrays(),
        "add": intvec.AddParams.make(1.0, 1.0, 1.0).to_arrays(),
        "rescale": intvec.RescaleParams.make(1.0, 1.0).to_arrays(),
    }
    out = {}
    for n in graph.nodes:
        keys: dict[str, str] = {}
        if n.attrs.get("host"):
            continue
        if n.op in ("linear", "conv", "depthwise", "conv_transpose"):
            keys = {"multiplier": "int64", "shift": "int64"}
        elif n.op == "attention":
            keys = {"quant": "int64"}
        elif n.op == "rope":        # golden_model.quant.video: requantiser + the excluded tokens' rescale
            from golden_model.quant.video import rope_arrays
            keys = {k: str(v.dtype) for k, v in rope_arrays(1.0, 1.0).items()}
        elif n.op in vec_keys:
            keys = {k: str(v.dtype) for k, v in vec_keys[n.op].items()}
            if n.op == "add" and n.inputs[1] in graph.constants:
                keys["b_scale"] = "float64"
        out.update({f"param/{n.name}/{k}": (None, dt) for k, dt in keys.items()})
    return out


def save_quantised(qm: QuantModel, path: str | Path) -> Path:
    tensors = {f"const/{k}": v for k, v in qm.graph.constants.items()}
    for node, arrays in qm.params.items():
        tensors.update({f"param/{node}/{k}": np.asarray(v) for k, v in arrays.items()})
    meta = {"format": FORMAT, "model": qm.graph.model, "image_size": str(qm.graph.image_size),
            "preset": qm.preset, "key_tile": str(qm.key_tile), "estimator": qm.estimator,
            "graph": qm.graph.to_json()}
    return save_safetensors(path, tensors, meta)


def load_quantised(path: str | Path, *, model: str | None = None, preset: str | None = None) -> QuantModel:
    """A QuantModel from `path`, refusing a file for another `model` or `preset` (when given)."""
    path = Path(path)
    if not path.is_file():
        raise QuantFileError(f"quantised model not found: {path}")
    try:
        tensors, meta = load_safetensors_with_metadata(path)
    except (CheckpointError, OSError) as e:
        raise QuantFileError(f"{path}: not a readable .safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise QuantFileError(f"{path}: not a sam2fpga int8 model (format {meta.get('format')!r}, expected {FORMAT!r})")
    if model is not None and meta.get("model") != model:
        raise QuantFileError(f"{path}: quantised for model {meta.get('model')!r}, not {model!r}")
    if preset is not None and meta.get("preset") != preset:
        raise QuantFileError(f"{path}: quantised for preset {meta.get('preset')!r} (its attention key tile), "
                             f"not {preset!r}; re-run `sam2fpga quantize --preset {preset}`")
    consts = {k[len("const/"):]: v for k, v in tensors.items() if k.startswith("const/")}
    params_flat = {k: v for k, v in tensors.items() if k.startswith("param/")}
    others = sorted(k for k in tensors if not k.startswith(("const/", "param/")))
    try:
        graph = Graph.from_json(meta["graph"], consts)
        key_tile = int(meta["key_tile"])
    except GraphError as e:
        raise QuantFileError(f"{path}: {e}") from e
    except (KeyError, ValueError, TypeError) as e:   # json errors are ValueErrors
        raise QuantFileError(f"{path}: malformed metadata ({type(e).__name__}: {e})") from e
    problems = check_arrays(params_flat, expected_params(graph), "parameters", check_shapes=False)
    if others:
        problems.append(f"unexpected tensors ({len(others)}): {', '.join(others[:20])}")
    if problems:
        raise QuantFileError(f"{path} does not match its graph:\n  " + "\n  ".join(problems))
    params: dict[str, dict[str, np.ndarray]] = {}
    for k, v in params_flat.items():
        _, node, key = k.split("/", 2)
        params.setdefault(node, {})[key] = v
    qm = QuantModel(graph, params, key_tile, meta.get("preset", ""), meta.get("estimator", ""))
    _check_params_build(qm, path)
    return qm


def _check_params_build(qm: QuantModel, path) -> None:
    """Every element-wise op's parameters must rebuild (intvec validates ranges and shapes)."""
    from golden_model import intvec
    classes = {"layernorm": intvec.LayerNormParams, "gelu": intvec.LutParams, "add": intvec.AddParams,
               "rescale": intvec.RescaleParams}
    from golden_model.quant.video import check_rope_arrays
    for n in qm.graph.nodes:
        if (n.op in classes or n.op == "rope") and not n.attrs.get("host"):
            try:
                if n.op == "rope":
                    check_rope_arrays(qm.params[n.name])
                else:
                    classes[n.op].from_arrays({k: v for k, v in qm.params[n.name].items() if k != "b_scale"})
            except (ValueError, KeyError, TypeError) as e:
                raise QuantFileError(f"{path}: parameters of node {n.name!r} are invalid: {e}") from e


def describe(qm: QuantModel) -> str:
    g = qm.graph
    return (f"SAM 2.1 {g.model} int8 ({g.image_size} px input, preset {qm.preset}, attention key tile "
            f"{qm.key_tile}, {qm.estimator} calibration)")
