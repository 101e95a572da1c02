"""Tiny synthetic few-shot data for the model tests: classes differ by stripe orientation."""

from __future__ import annotations

import numpy as np
import pytest

from tinyshot.data.base import ArrayDataset


def stripes_dataset(
    n_classes: int = 6, per_class: int = 20, size: int = 16, noise: float = 0.35, seed: int = 0
) -> ArrayDataset:
    """Class c = sinusoidal stripes at angle pi*c/n, random colour and phase, Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs, labels = [], []
    for c in range(n_classes):
        ang = np.pi * c / n_classes
        for _ in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            base = 0.5 + 0.5 * np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 2 * np.pi / 5 + phase)
            col = rng.uniform(0.3, 1.0, 3)
            im = base[..., None] * col + rng.normal(0, noise, (size, size, 3))
            imgs.append((np.clip(im, 0, 1) * 255).astype(np.uint8))
            labels.append(c)
    return ArrayDataset(
        np.stack(imgs), np.array(labels), [f"class{c}" for c in range(n_classes)], "stripes", "base"
    )


@pytest.fixture
def stripes() -> ArrayDataset:
    return stripes_dataset()
