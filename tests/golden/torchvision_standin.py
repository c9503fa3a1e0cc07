"""A torch-only stand-in for the three torchvision transforms the official image predictor uses.

torchvision is not installable beside this project's torch, but
`sam2.utils.transforms` imports `ToTensor, Resize, Normalize` from it (and
TorchScripts the last two). `install()` puts a minimal `torchvision.transforms`
into sys.modules with the same numerics as torchvision >= 0.17 on tensors:
  ToTensor   uint8 HWC ndarray -> float CHW / 255 (other dtypes: CHW, unscaled)
  Resize     F.interpolate(bilinear, align_corners=False, antialias=True)
  Normalize  (x - mean) / std per channel
Call it before importing sam2.sam2_image_predictor; a real torchvision wins if present.
Test-only: never import this outside tests/ and benchmarks/.
"""
from __future__ import annotations

import sys
import types
from typing import List


def _build():
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ToTensor:
        def __call__(self, pic):
            if not isinstance(pic, np.ndarray) or pic.ndim not in (2, 3):
                raise TypeError(f"stand-in ToTensor takes an HW or HWC ndarray, got {type(pic)}")
            if pic.ndim == 2:
                pic = pic[:, :, None]
            img = torch.from_numpy(pic.transpose((2, 0, 1))).contiguous()
            if img.dtype == torch.uint8:
                return img.to(dtype=torch.get_default_dtype()).div(255)
            return img

    class Resize(nn.Module):
        def __init__(self, size: List[int]):
            super().__init__()
            self.size = [int(s) for s in size]

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            squeeze = img.dim() == 3
            x = img.unsqueeze(0) if squeeze else img
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
            return x.squeeze(0) if squeeze else x

    class Normalize(nn.Module):
        def __init__(self, mean: List[float], std: List[float]):
            super().__init__()
            self.mean = [float(m) for m in mean]
            self.std = [float(s) for s in std]

        def forward(self, tensor: torch.Tensor) -> torch.Tensor:
            mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
            std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device)
            return (tensor - mean[:, None, None]) / std[:, None, None]

    return ToTensor, Resize, Normalize


def install() -> None:
    """Make `from torchvision.transforms import Normalize, Resize, ToTensor` work (no-op with a real torchvision)."""
    try:
        import torchvision.transforms  # noqa: F401
        return
    except ImportError:
        pass
    to_tensor, resize, normalize = _build()
    tv = types.ModuleType("torchvision")
    tv.__doc__ = "torch-only stand-in (tests/golden/torchvision_standin.py)"
    tr = types.ModuleType("torchvision.transforms")
    tr.ToTensor, tr.Resize, tr.Normalize = to_tensor, resize, normalize
    tv.transforms = tr
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = tr
