"""What the generator trainer consumes: `CaptionedImages` (uint8 images, one caption each), the
caption wording shared by every recipe, and `pad_to`. Recipes build on this module only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinyshot.errors import DataError

CAPTION_TEMPLATE = "a photo of a {}"
GENERIC_CAPTION = "a photo of an object"


@dataclass
class CaptionedImages:
    """What the trainer consumes: uint8 images (N, H, W) or (N, H, W, C) and one caption each."""

    images: np.ndarray
    captions: list[str]
    recipe: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise DataError(
                f"recipe {self.recipe}: images must be uint8 (N,H,W) or (N,H,W,C), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if len(self.captions) != len(self.images):
            raise DataError(
                f"recipe {self.recipe}: {len(self.images)} images but {len(self.captions)} captions"
            )
        if len(self.images) == 0:
            raise DataError(f"recipe {self.recipe}: no images")

    def __len__(self) -> int:
        return len(self.images)

    def to_tensor(self) -> torch.Tensor:
        """(N, C, H, W) uint8 with C in {1, 3}; grey images stay 1-channel until batching."""
        x = torch.from_numpy(np.ascontiguousarray(self.images))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
        if x.shape[1] not in (1, 3):
            raise DataError(f"recipe {self.recipe}: images need 1 or 3 channels, got {x.shape[1]}")
        return x


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, h, w) images centrally to size x size; padding keeps pixels exact."""
    n, h, w = images.shape[:3]
    if h > size or w > size:
        raise DataError(f"images are {h}x{w}, larger than the model's {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size, *images.shape[3:]), dtype=images.dtype)
    out[:, top : top + h, left : left + w] = images
    return out
