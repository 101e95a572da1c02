"""A tiny separable few-shot problem: 3 colour classes at 16 px, plus base and synthetic sets."""

from __future__ import annotations

import pytest
import torch

SIZE = 16
WAYS = 3


def colour_images(labels: torch.Tensor, g: torch.Generator, noise: float = 0.25) -> torch.Tensor:
    """uint8 images whose dominant colour channel (and a stripe) encodes the class."""
    n = labels.numel()
    x = torch.rand(n, 3, SIZE, SIZE, generator=g) * noise
    for c in range(WAYS):
        m = labels == c
        x[m, c] += 0.6
        x[m, :, c * 5 : c * 5 + 4, :] += 0.2
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def teacher_probs(images: torch.Tensor, scale: float = 8.0) -> torch.Tensor:
    """A fixed 'teacher': softmax over mean channel intensities."""
    m = images.float().div(255).mean(dim=(2, 3))
    return torch.softmax(scale * m, dim=1)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(123)
    sup_y = torch.arange(WAYS).repeat_interleave(5)
    support = (colour_images(sup_y, g), sup_y)
    # "Base" images: other content (random hues), soft-labelled by the teacher.
    base_x = (torch.rand(120, 3, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    base = (base_x, teacher_probs(base_x))
    syn_y = torch.randint(0, WAYS, (90,), generator=g)
    syn_x = colour_images(syn_y, g, noise=0.45)
    synthetic = (syn_x, teacher_probs(syn_x))
    val_y = torch.arange(WAYS).repeat_interleave(20)
    val = (colour_images(val_y, g, noise=0.45), val_y)
    return {
        "support": support,
        "base": base,
        "synthetic": synthetic,
        "syn_hard": (syn_x, syn_y),
        "val": val,
    }
