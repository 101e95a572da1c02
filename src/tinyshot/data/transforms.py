"""Image <-> tensor conversion written with PIL/numpy/torch (torchvision is unavailable here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def pil_to_tensor(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """RGB float tensor (3,H,W) in [0,1]; resized (bicubic) to size x size when given."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def images_to_tensor(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """Batch (N,3,size,size) in [0,1]."""
    if len(images) == 0:
        s = size or 1
        return torch.empty(0, 3, s, s)
    return torch.stack([pil_to_tensor(im, size) for im in images])


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3,H,W) or (1,H,W) in [0,1] -> 8-bit RGB image (round-to-nearest, clipped)."""
    x = x.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    arr = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [0,1] -> (N,H,W,3) uint8."""
    x = x.detach().float().clamp(0, 1).cpu()
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
