"""Glyphs recipe (`glyphs`): the generator sees the *background* scripts only.

Like Omniglot's protocol, evaluation scripts are never seen by any model, labelled or not.
Captions name the script ("a photo of a runic letter"), not the character: characters have
no words, and textual inversion is what learns a new character from its few examples. A
fraction of images gets the generic caption so that the TI init word "object" stays generic.
"""

from __future__ import annotations

import re
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


def script_word(script: str) -> str:
    """'Old_Italic' / 'Old Italic' -> 'old italic letter' (plain words for the CLIP tokenizer)."""
    words = re.sub(r"[_\-]+", " ", script).strip().lower()
    return f"{words} letter"


def generator_images(images: np.ndarray, image_size: int = 32) -> np.ndarray:
    """Glyph images as the generator sees them: grey uint8, padded with white (not black)."""
    if images.ndim == 4:
        images = images[..., :3].mean(axis=-1).round().astype(np.uint8)
    if images.shape[1] < image_size:
        images = 255 - pad_to(255 - images, image_size)
    return images


def glyphs_recipe(
    image_size: int = 32,
    generic_fraction: float = 0.2,
    seed: int = 0,
    root: str | Path | None = None,
    limit: int | None = None,
    **glyph_options: object,
) -> CaptionedImages:
    """Glyphs background split, dark glyphs on white, captions naming the script."""
    from tinyshot.data.glyphs import load_glyphs

    if not 0.0 <= generic_fraction <= 1.0:
        raise ConfigError(f"generic_fraction must be in [0, 1], got {generic_fraction}")
    ds = load_glyphs("background", root=root, size=min(image_size, 32), **glyph_options)
    images, labels = ds.images, np.asarray(ds.labels)
    if limit is not None:
        order = np.random.default_rng(derive_seed(seed, "glyphs-limit")).permutation(len(labels))
        keep = np.sort(order[:limit])
        images, labels = images[keep], labels[keep]
    images = generator_images(images, image_size)
    scripts = [name.split("/")[0] for name in ds.class_names]
    rng = np.random.default_rng(derive_seed(seed, "glyphs-generic"))
    generic = rng.random(len(labels)) < generic_fraction
    captions = [
        GENERIC_CAPTION if g else CAPTION_TEMPLATE.format(script_word(scripts[int(y)]))
        for y, g in zip(labels, generic)
    ]
    uniq = sorted(set(scripts))
    info = {
        "dataset": "glyphs",
        "split": "background",
        "images": len(labels),
        "classes": ds.num_classes,
        "scripts": uniq,
        "generic_fraction": generic_fraction,
        "class_captions": {s: CAPTION_TEMPLATE.format(script_word(s)) for s in uniq},
        # Rendered at the canvas size; smaller renderings are padded with white (generator_images).
        "image_prep": {
            "mode": "pad",
            "size": image_size,
            "content_size": image_size,
            "pad_value": 255,
            "grey": True,
        },
    }
    return CaptionedImages(images, captions, "glyphs-background", info)
