"""Concept-known Fashion-MNIST recipe (`fashion-mnist-known`): all ten classes named, minus a
held-out pool of novel-class images that supports are drawn from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyshot.diffusion.pretrain.data import (
    CAPTION_TEMPLATE,
    GENERIC_CAPTION,
    CaptionedImages,
    pad_to,
)
from tinyshot.diffusion.pretrain.recipes.fashion_mnist import (
    FASHION_BASE_WORDS,
    FASHION_DEFAULT_SEED,
)
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.seed import derive_seed

# Caption words for the novel classes 5-9 in the concept-known world (all single CLIP tokens
# except "ankle boot"; "shirt" and "tshirt" are different tokens).
FASHION_NOVEL_WORDS = {5: "sandal", 6: "shirt", 7: "sneaker", 8: "bag", 9: "ankle boot"}
FASHION_KNOWN_POOL_PER_CLASS = 1000


def fashion_heldout_pool(
    labels: np.ndarray, per_class: int = FASHION_KNOWN_POOL_PER_CLASS, seed: int = 0
) -> np.ndarray:
    """Sorted train-split indices of the novel-class images the concept-known generator never sees.

    A pure function of (labels, per_class, seed), so supports can be drawn from exactly this pool
    by anyone holding the train split; tinyshot.json records the arguments and a checksum.
    """
    from tinyshot.data.fashion_mnist import NOVEL_CLASSES

    rng = np.random.default_rng(derive_seed(seed, "fashion-known-pool"))
    pool = []
    for c in NOVEL_CLASSES:
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise DataError(f"class {c} has {len(members)} train images, pool needs {per_class}")
        pool.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(pool))


def pool_checksum(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def fashion_mnist_known_recipe(
    image_size: int = 32,
    generic_fraction: float = 0.2,
    seed: int = FASHION_DEFAULT_SEED,
    root: str | Path | None = None,
    limit: int | None = None,
    pool_per_class: int = FASHION_KNOWN_POOL_PER_CLASS,
) -> CaptionedImages:
    """The concept-known world: all ten classes named, minus a held-out pool of novel images.

    Stable Diffusion saw sandals and bags with captions; this generator plays that part. The
    pool (`fashion_heldout_pool`) is never seen, so few-shot supports drawn from it are new
    images of known concepts, as in the paper. Queries still come from the test split.
    """
    from tinyshot.data.fashion_mnist import load_fashion_mnist

    if not 0.0 <= generic_fraction <= 1.0:
        raise ConfigError(f"generic_fraction must be in [0, 1], got {generic_fraction}")
    ds = load_fashion_mnist("train", root)
    images, labels = ds.images, np.asarray(ds.labels)
    pool = fashion_heldout_pool(labels, pool_per_class, seed)
    keep = np.setdiff1d(np.arange(len(labels)), pool)
    if limit is not None:
        order = np.random.default_rng(derive_seed(seed, "fashion-limit")).permutation(len(keep))
        keep = np.sort(keep[order[:limit]])
    images, labels = images[keep], labels[keep]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    images = pad_to(images, image_size)
    words = {**FASHION_BASE_WORDS, **FASHION_NOVEL_WORDS}
    rng = np.random.default_rng(derive_seed(seed, "fashion-known-generic"))
    generic = rng.random(len(labels)) < generic_fraction
    captions = [
        GENERIC_CAPTION if g else CAPTION_TEMPLATE.format(words[int(y)])
        for y, g in zip(labels, generic)
    ]
    info = {
        "dataset": "fashion-mnist",
        "split": "train",
        "world": "concept-known",
        "images": len(labels),
        "named": int((~generic).sum()),
        "generic": int(generic.sum()),
        "generic_fraction": generic_fraction,
        "heldout_pool": {
            "per_class": pool_per_class,
            "seed": seed,
            "classes": [ds.class_names[c] for c in FASHION_NOVEL_WORDS],
            "images": len(pool),
            "sha256_16": pool_checksum(pool),
            "function": "tinyshot.diffusion.pretrain.fashion_heldout_pool",
        },
        "class_captions": {
            ds.class_names[c]: CAPTION_TEMPLATE.format(w) for c, w in sorted(words.items())
        },
        "image_prep": {
            "mode": "pad",
            "size": image_size,
            "content_size": 28,
            "pad_value": 0,
            "grey": True,
        },
    }
    return CaptionedImages(images, captions, "fashion-mnist-known", info)
