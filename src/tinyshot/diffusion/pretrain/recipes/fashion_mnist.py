"""Fashion-MNIST recipe (`fashion-mnist`): base classes 0-4 named, novel classes 5-9 only under
the generic caption (the concept-unknown world).
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
from tinyshot.errors import ConfigError
from tinyshot.utils.seed import derive_seed

# Lower-case caption words for the Fashion-MNIST base classes 0-4. "tshirt" (one CLIP token)
# instead of "t-shirt", which tokenizes to t / - / shirt and would train the token "shirt",
# the name of the novel class 6.
FASHION_BASE_WORDS = {0: "tshirt", 1: "trouser", 2: "pullover", 3: "dress", 4: "coat"}
FASHION_DEFAULT_SEED = 0


def fashion_mnist_recipe(
    image_size: int = 32,
    generic_fraction: float = 0.2,
    seed: int = FASHION_DEFAULT_SEED,
    root: str | Path | None = None,
    limit: int | None = None,
) -> CaptionedImages:
    """Fashion-MNIST *train* split: base classes named, novel classes only under the generic caption.

    Novel-class images (labels 5-9) are kept without their labels, under one caption that names
    no class, as Stable Diffusion saw web images without our labels; leaving them out would make
    "an object" unable to look like a shoe or a bag. A `generic_fraction` of base images also gets
    the generic caption so "object" means "any item", not "a novel item".
    """
    from tinyshot.data.fashion_mnist import BASE_CLASSES, load_fashion_mnist

    if not 0.0 <= generic_fraction <= 1.0:
        raise ConfigError(f"generic_fraction must be in [0, 1], got {generic_fraction}")
    ds = load_fashion_mnist("train", root)
    images, labels = ds.images, np.asarray(ds.labels)
    if limit is not None:  # a deterministic class-balanced-ish prefix for tests
        order = np.random.default_rng(derive_seed(seed, "fashion-limit")).permutation(len(labels))
        keep = np.sort(order[:limit])
        images, labels = images[keep], labels[keep]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    images = pad_to(images, image_size)
    rng = np.random.default_rng(derive_seed(seed, "fashion-generic"))
    generic = rng.random(len(labels)) < generic_fraction
    captions = [
        CAPTION_TEMPLATE.format(FASHION_BASE_WORDS[int(y)])
        if int(y) in BASE_CLASSES and not g
        else GENERIC_CAPTION
        for y, g in zip(labels, generic)
    ]
    base = np.isin(labels, BASE_CLASSES)
    info = {
        "dataset": "fashion-mnist",
        "split": "train",
        "images": len(labels),
        "base_named": int((base & ~generic).sum()),
        "base_generic": int((base & generic).sum()),
        "novel_generic": int((~base).sum()),
        "generic_fraction": generic_fraction,
        "class_captions": {
            ds.class_names[c]: CAPTION_TEMPLATE.format(w) for c, w in FASHION_BASE_WORDS.items()
        },
        "image_prep": fashion_image_prep(image_size),
    }
    return CaptionedImages(images, captions, "fashion-mnist-base", info)


def fashion_image_prep(image_size: int) -> dict[str, object]:
    """28 px grey images zero-padded (pad_to) onto the canvas: see data.transforms.ImagePrep."""
    return {"mode": "pad", "size": image_size, "content_size": 28, "pad_value": 0, "grey": True}
