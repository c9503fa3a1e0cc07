"""Shared by the video tests: a synthetic clip, the official predictor's run, comparisons."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_moving_shape_clip(directory: Path, n_frames: int = 10, size=(160, 120), seed: int = 0) -> list[Path]:
    """A textured background with a bright ellipse moving right and down (jpg, named 00000.jpg ...)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = (rng.integers(0, 60, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]).astype(np.float32)
    base += 40 * np.sin(xx / 7.0)[..., None]
    paths = []
    directory.mkdir(parents=True, exist_ok=True)
    for t in range(n_frames):
        cx, cy = 40 + 6 * t, 45 + 3 * t
        inside = ((xx - cx) / 22.0) ** 2 + ((yy - cy) / 16.0) ** 2 <= 1.0
        img = base.copy()
        img[inside] = [230, 200, 40]
        p = directory / f"{t:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=95)
        paths.append(p)
    return paths


def memoize_official_image_encoder(model):
    """The official predictor re-encodes a frame whenever it is not the last one used; the results are
    deterministic, so the tests reuse them (keyed by the frame's content) to save time."""
    import hashlib
    cache = {}
    original = model.forward_image

    def forward_image(img):
        key = (hashlib.sha1(img.detach().contiguous().numpy().tobytes()).hexdigest(), tuple(img.shape))
        if key not in cache:
            cache[key] = original(img)
        out = cache[key]
        return {**out, "backbone_fpn": list(out["backbone_fpn"]), "vision_pos_enc": list(out["vision_pos_enc"])}

    model.forward_image = forward_image
    return model


def promote_bf16_memory(model):
    """sam2 1.1.0 on CPU fails ("mat1 and mat2 must have the same dtype") when a frame's memory is
    only bfloat16 memory frames, without any float32 object pointer for torch.cat to promote them:
    an object tracked on frames before its only conditioning frame. The promotion (exact: bf16 is a
    subset of f32) is what happens whenever pointers are there; this does it in the other case too."""
    original = model.memory_attention.forward

    def forward(*args, **kwargs):
        if kwargs.get("memory") is not None:
            kwargs["memory"] = kwargs["memory"].float()
        return original(*args, **kwargs)

    model.memory_attention.forward = forward
    return model


def one_torch_thread():
    """Generator for a fixture: torch on one thread while it lasts. The official model's small ops then
    cost ~10x less CPU on a busy machine (idle pool threads spin); 2 pytest workers use the 2 cores."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def memory_weights(model):
    """The official state dict's tensors that golden_model.video.Tracker owns."""
    from golden_model.weights import Weights
    own = ("memory_encoder.", "memory_attention.", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc",
           "no_obj_embed_spatial", "obj_ptr_tpos_proj.", "mask_downsample.")
    return Weights({k: v.detach().numpy() for k, v in model.state_dict().items() if k.startswith(own)})


def max_rel_err(golden, official) -> float:
    official = np.asarray(official)
    assert golden.shape == official.shape, (golden.shape, official.shape)
    return float(np.abs(golden - official).max() / max(1.0, np.abs(official).max()))


def torch_bank(bank):
    """A NumPy memory bank ({cond,non_cond}_frame_outputs) as the official predictor stores it (bf16 memories)."""
    import torch
    conv = {}
    for key, frames in bank.items():
        conv[key] = {t: {"maskmem_features": torch.from_numpy(o["maskmem_features"]).to(torch.bfloat16),
                         "maskmem_pos_enc": [torch.from_numpy(np.ascontiguousarray(o["maskmem_pos_enc"]))],
                         "pred_masks": torch.from_numpy(o["pred_masks"]),
                         "obj_ptr": torch.from_numpy(o["obj_ptr"]),
                         "object_score_logits": torch.from_numpy(o["object_score_logits"])}
                     for t, o in frames.items()}
    return conv


def golden_twin(official, name: str, image_size: int | None = None):
    """The golden SAM2Model with an official model's weights (and its image size, when not 1024)."""
    from dataclasses import replace
    from types import MappingProxyType

    from golden_model.config import load_config
    from golden_model.model import SAM2Model
    config = load_config(name)
    if image_size:
        config = replace(config, options=MappingProxyType({**config.options, "image_size": image_size}))
    return SAM2Model(name, state_dict={k: v.detach().numpy() for k, v in official.state_dict().items()},
                     config=config)
