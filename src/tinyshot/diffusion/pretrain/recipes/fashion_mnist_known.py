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
    fashion_image_prep,
)
from tinyshot.errors import ConfigError
from tinyshot.utils.seed import derive_seed

# Caption words for the novel classes 5-9 in the concept-known world (all single CLIP tokens
# except "ankle boot"; "shirt" and "tshirt" are different tokens).
FASHION_NOVEL_WORDS = {5: "sandal", 6: "shirt", 7: "sneaker", 8: "bag", 9: "ankle boot"}


def fashion_mnist_known_recipe(
    image_size: int = 32,
    generic_fraction: float = 0.2,
    seed: int = FASHION_DEFAULT_SEED,
    root: str | Path | None = None,
    limit: int | None = None,
    pool_per_class: int | None = None,
) -> CaptionedImages:
    """The concept-known world: all ten classes named, minus a held-out pool of novel images.

    Stable Diffusion saw sandals and bags with captions; this generator plays that part. The
    pool (`data.fashion_mnist.heldout_pool`, split `novel-pool`) is never seen, so few-shot
    supports drawn from it are new images of known concepts, as in the paper. Queries still come from the test split.
    """
    from tinyshot.data.fashion_mnist import (
        POOL_PER_CLASS,
        POOL_SEED,
        heldout_pool,
        load_fashion_mnist,
        pool_checksum,
    )

    if not 0.0 <= generic_fraction <= 1.0:
        raise ConfigError(f"generic_fraction must be in [0, 1], got {generic_fraction}")
    ds = load_fashion_mnist("train", root)
    images, labels = ds.images, np.asarray(ds.labels)
    pool_per_class = POOL_PER_CLASS if pool_per_class is None else pool_per_class
    pool = heldout_pool(labels, pool_per_class, POOL_SEED)
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
            "seed": POOL_SEED,
            "split": "fashion-mnist:novel-pool",
            "classes": [ds.class_names[c] for c in FASHION_NOVEL_WORDS],
            "images": len(pool),
            "sha256_16": pool_checksum(pool),
            "function": "tinyshot.data.fashion_mnist.heldout_pool",
        },
        "class_captions": {
            ds.class_names[c]: CAPTION_TEMPLATE.format(w) for c, w in sorted(words.items())
        },
        "image_prep": fashion_image_prep(image_size),
    }
    return CaptionedImages(images, captions, "fashion-mnist-known", info)
