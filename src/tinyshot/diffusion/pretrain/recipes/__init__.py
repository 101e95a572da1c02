"""The recipe registry: `tinyshot pretrain-generator --recipe NAME` looks the name up here.

A recipe is a function returning `CaptionedImages` (pretrain.data); a new one is a new file in
this folder plus one line below. Recipe files import pretrain.data, never the pretrain package.
"""

from __future__ import annotations

from collections.abc import Callable

from tinyshot.diffusion.pretrain.data import CaptionedImages
from tinyshot.diffusion.pretrain.recipes.fashion_mnist import fashion_mnist_recipe
from tinyshot.diffusion.pretrain.recipes.fashion_mnist_known import fashion_mnist_known_recipe
from tinyshot.diffusion.pretrain.recipes.glyphs import glyphs_recipe

RECIPES: dict[str, Callable[..., CaptionedImages]] = {
    "fashion-mnist": fashion_mnist_recipe,
    "fashion-mnist-known": fashion_mnist_known_recipe,
    "glyphs": glyphs_recipe,
}
