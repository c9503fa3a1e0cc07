"""The official SAM 2 (PyPI sam2==1.1.0, torch 2.13 CPU) as a test-only oracle.

`official_model(name, seed)` builds a config from the official files with
seeded random weights, every parameter and buffer perturbed so no path hides
behind an all-zero or all-one tensor; `official_checkpoint` saves it in the
official layout ({"model": state_dict}) for the golden loader.
Never import this outside tests/ and benchmarks/.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def _randomise(model, seed: int) -> None:
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() == 0:
                continue
            if p.dim() >= 2:                   # weights: keep activations O(1)
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("weight"):       # norm scales around 1
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:                                # biases, scalars, embeddings
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def official_model(name: str = "tiny", seed: int = 0, video: bool = False,
                   apply_postprocessing: bool = True, image_size: int | None = None):
    """An official SAM 2 model of config `name` with seeded random weights (eval mode, CPU).
    `image_size` overrides the config's input resolution (1024); 256 makes video tests ~16x cheaper."""
    import torch
    from sam2.build_sam import build_sam2, build_sam2_video_predictor
    torch.manual_seed(seed)
    size = [f"++model.image_size={image_size}"] if image_size else []
    if video:
        model = build_sam2_video_predictor(CONFIGS[name], ckpt_path=None, device="cpu",
                                           apply_postprocessing=apply_postprocessing,
                                           hydra_overrides_extra=["++model.fill_hole_area=0"] + size)
    else:
        model = build_sam2(CONFIGS[name], ckpt_path=None, device="cpu",
                           apply_postprocessing=apply_postprocessing, hydra_overrides_extra=size)
    _randomise(model, seed)
    return model.eval()


@lru_cache(maxsize=None)
def official_checkpoint(name: str, seed: int, directory: str) -> Path:
    """Save `official_model(name, seed)` as an official-layout .pt under `directory`."""
    import torch
    path = Path(directory) / f"sam2.1_{name}_seed{seed}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": official_model(name, seed).state_dict()}, path)
    return path


def golden_image_encoder(official, name: str):
    """The golden image encoder and high-res projection loaded strictly from an official model's tensors."""
    from golden_model.config import load_config
    from golden_model.image_encoder import HighResProjection, build_image_encoder
    from golden_model.weights import Weights
    sd = {k: v.numpy() for k, v in official.state_dict().items()
          if k.startswith("image_encoder.") or k.startswith("sam_mask_decoder.conv_s")}
    w = Weights(sd)
    enc = build_image_encoder(w.take_prefix("image_encoder"), load_config(name))
    hr = HighResProjection(w.take_prefix("sam_mask_decoder"))
    w.check_complete()
    return enc, hr
