"""Loading a generator folder (shipped or trained) and sampling from it: DDIM + classifier-free
guidance, a fixed-noise eval loss, and image grids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tinyshot.diffusion.pretrain.data import CaptionedImages
from tinyshot.diffusion.pretrain.models import tokenize
from tinyshot.errors import ConfigError, ModelError
from tinyshot.utils.io import atomic_write
from tinyshot.utils.logging import quiet_weight_loading
from tinyshot.utils.seed import torch_generator

SHIPPED_GENERATORS = ("fashion-mnist", "fashion-mnist-known", "glyphs")


def default_generator_path(name: str = "fashion-mnist") -> Path:
    """A shipped generator (package data) by dataset name, so demos and benchmarks need no
    retraining: `fashion-mnist` (base classes + unlabelled novel images), `fashion-mnist-known`
    (all ten classes named, minus the held-out support pool) or `glyphs`
    (background scripts only)."""
    if name not in SHIPPED_GENERATORS:
        raise ConfigError(f"no shipped generator {name!r}; shipped: {list(SHIPPED_GENERATORS)}")
    return Path(__file__).resolve().parents[2] / "assets" / "generators" / name


def load_generator(model_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """(unet, text_encoder, tokenizer, scheduler, info) from a model folder, in `dtype`, eval mode."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    model_dir = Path(model_dir) if model_dir is not None else default_generator_path()
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (model_dir / sub).is_dir():
            raise ModelError(f"{model_dir}: not a generator folder ({sub}/ missing)")
    info_path = model_dir / "tinyshot.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    with quiet_weight_loading():
        unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", torch_dtype=dtype).eval()
        text = CLIPTextModel.from_pretrained(model_dir / "text_encoder", dtype=dtype).eval()
    tokenizer = load_clip_tokenizer(model_dir / "tokenizer")
    scheduler = DDIMScheduler.from_pretrained(model_dir / "scheduler")
    return unet, text, tokenizer, scheduler, info


@torch.no_grad()
def sample(
    model_dir: str | Path | None,
    captions: Sequence[str],
    n_per_caption: int = 8,
    steps: int = 50,
    guidance: float = 2.0,
    seed: int = 0,
    models: tuple | None = None,
) -> torch.Tensor:
    """DDIM + classifier-free guidance; returns (len(captions) * n, 3, H, W) in [0, 1], caption-major."""
    unet, text, tokenizer, scheduler, info = models or load_generator(model_dir)
    size = int(info.get("image_size", unet.config.sample_size))
    max_len = tokenizer.model_max_length
    dev = unet.device
    prompts = [c for c in captions for _ in range(n_per_caption)]
    cond = text(tokenize(tokenizer, prompts, max_len).to(dev)).last_hidden_state
    uncond = text(tokenize(tokenizer, [""], max_len).to(dev)).last_hidden_state.expand_as(cond)
    g = torch_generator(seed)
    x = torch.randn((len(prompts), unet.config.in_channels, size, size), generator=g).to(dev)
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    emb = torch.cat([uncond, cond])
    for t in scheduler.timesteps:
        eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        x = scheduler.step(eps, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).cpu()


@torch.no_grad()
def eval_loss(
    model_dir: str | Path | None,
    data: CaptionedImages,
    n: int = 64,
    seed: int = 0,
    models: tuple | None = None,
) -> float:
    """Mean epsilon-MSE over n images with fixed noise and timesteps: a comparable quality number."""
    unet, text, tokenizer, scheduler, _ = models or load_generator(model_dir)
    g = torch_generator(seed)
    idx = torch.randperm(len(data), generator=g)[:n]
    x = data.to_tensor()[idx].float().div(127.5).sub(1.0)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    ids = tokenize(tokenizer, [data.captions[i] for i in idx.tolist()], tokenizer.model_max_length)
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
    noisy = scheduler.add_noise(x, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text(ids).last_hidden_state).sample
    return float(F.mse_loss(pred.float(), noise))


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2, scale: int = 2) -> Image.Image:
    """Tile (N, 3, H, W) images in [0, 1] into rows of nrow; nearest-upscaled for viewing."""
    n, _, h, w = images.shape
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = arr[i]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def sample_grid(
    model_dir: str | Path | None,
    captions: Sequence[str],
    n_per_caption: int = 8,
    steps: int = 50,
    guidance: float = 2.0,
    seed: int = 0,
) -> Image.Image:
    """One row per caption, n_per_caption samples each (DDIM, CFG)."""
    x = sample(model_dir, captions, n_per_caption, steps, guidance, seed)
    return make_grid(x, n_per_caption)


def default_grid_captions(model_dir: str | Path | None = None) -> list[str]:
    """The class captions of a model folder plus its generic caption."""
    model_dir = Path(model_dir) if model_dir is not None else default_generator_path()
    info = json.loads((model_dir / "tinyshot.json").read_text())
    return [*info.get("class_captions", {}).values(), info["generic_caption"]]


def save_grid(image: Image.Image, path: str | Path) -> Path:
    return atomic_write(path, lambda p: image.save(p, format="PNG"))
