"""The project's own small text-to-image "foundation" model, trained offline.

No Stable Diffusion weights can be had offline, so TINT is demonstrated on a small model
built from the same classes (diffusers `UNet2DConditionModel` with cross-attention,
transformers `CLIPTextModel` with the real CLIP BPE tokenizer), in pixel space (no VAE).

Training is dataset-agnostic: a *recipe* turns a dataset into `CaptionedImages`
(uint8 images + one caption per image) and `train_generator` turns that into a model
folder in the diffusers layout (unet/, text_encoder/, tokenizer/, scheduler/, tinyshot.json;
no vae/ folder marks pixel space). Each recipe is one file in recipes/, registered in
recipes/__init__.py (RECIPES).

Modules, lowest first: `data` (CaptionedImages, captions), `recipes/` (one file per recipe and
the RECIPES registry), `config` (PretrainConfig), `models` (builders), `export` (the model
folder), `train` (the training loop), `sampling` (load, sample, grids), `commands`
(`tinyshot pretrain-generator`).
"""

from tinyshot.diffusion.pretrain.config import PretrainConfig
from tinyshot.diffusion.pretrain.data import (
    CAPTION_TEMPLATE,
    GENERIC_CAPTION,
    CaptionedImages,
    pad_to,
)
from tinyshot.diffusion.pretrain.export import export_model_folder, folder_size_mb
from tinyshot.diffusion.pretrain.models import (
    build_scheduler,
    build_text_encoder,
    build_unet,
    tokenize,
)
from tinyshot.diffusion.pretrain.recipes import RECIPES
from tinyshot.diffusion.pretrain.recipes.fashion_mnist import (
    FASHION_BASE_WORDS,
    FASHION_DEFAULT_SEED,
    fashion_mnist_recipe,
)
from tinyshot.diffusion.pretrain.recipes.fashion_mnist_known import (
    FASHION_NOVEL_WORDS,
    fashion_mnist_known_recipe,
)
from tinyshot.diffusion.pretrain.recipes.glyphs import glyphs_recipe
from tinyshot.diffusion.pretrain.sampling import (
    SHIPPED_GENERATORS,
    default_generator_path,
    default_grid_captions,
    eval_loss,
    load_generator,
    make_grid,
    sample,
    sample_grid,
    save_grid,
)
from tinyshot.diffusion.pretrain.train import (
    ARCH,
    CHECKPOINT_NAME,
    EXPORT_ONLY_KEYS,
    MODEL_SUBDIR,
    train_generator,
)

__all__ = [
    "ARCH",
    "CAPTION_TEMPLATE",
    "CHECKPOINT_NAME",
    "EXPORT_ONLY_KEYS",
    "FASHION_BASE_WORDS",
    "FASHION_DEFAULT_SEED",
    "FASHION_NOVEL_WORDS",
    "GENERIC_CAPTION",
    "MODEL_SUBDIR",
    "RECIPES",
    "SHIPPED_GENERATORS",
    "CaptionedImages",
    "PretrainConfig",
    "build_scheduler",
    "build_text_encoder",
    "build_unet",
    "default_generator_path",
    "default_grid_captions",
    "eval_loss",
    "export_model_folder",
    "fashion_mnist_known_recipe",
    "fashion_mnist_recipe",
    "folder_size_mb",
    "glyphs_recipe",
    "load_generator",
    "make_grid",
    "pad_to",
    "sample",
    "sample_grid",
    "save_grid",
    "tokenize",
    "train_generator",
]
