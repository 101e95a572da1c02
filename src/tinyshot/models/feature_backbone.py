"""`FeatureBackbone`, the base class of every teacher feature extractor: [0,1] RGB images ->
(B, feature_dim) features. Single backbones (models.backbones) and ensembles of them
(models.ensemble) both derive from it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.errors import ConfigError


class FeatureBackbone(nn.Module):
    """Base class: resize to input_size, normalise, extract (B, feature_dim) features."""

    feature_dim: int
    input_size: int
    name: str  # how it was asked for (name, folder or hub id)
    pretrained: bool = True  # False for random-init toy backbones
    arch_id: str  # what checkpoints are checked against (architecture, not the weights' origin)

    def __init__(self, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if input_size < 16:
            raise ConfigError(f"backbone input_size must be >= 16 px, got {input_size}")
        self.input_size = int(input_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"backbone expects (B,3,H,W) images, got shape {tuple(x.shape)}")
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = self.resize(x)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """To input_size x input_size; a backbone trained on another resize overrides it."""
        size = (self.input_size, self.input_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extract(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(self.prepare(x))

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "backbone_arch": self.arch_id,
            "feature_dim": self.feature_dim,
            "input_size": self.input_size,
        }
