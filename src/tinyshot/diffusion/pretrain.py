"""The project's own small text-to-image "foundation" model, trained offline.

No Stable Diffusion weights can be had offline, so TINT is demonstrated on a small model
built from the same classes (diffusers `UNet2DConditionModel` with cross-attention,
transformers `CLIPTextModel` with the real CLIP BPE tokenizer), in pixel space (no VAE).

Training is dataset-agnostic: a *recipe* turns a dataset into `CaptionedImages`
(uint8 images + one caption per image) and `train_generator` turns that into a model
folder in the diffusers layout (unet/, text_encoder/, tokenizer/, scheduler/, tinyshot.json;
no vae/ folder marks pixel space). Fashion-MNIST is one recipe; others register in RECIPES.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tinyshot.errors import ConfigError, DataError, ModelError, TrainingError
from tinyshot.utils.checkpoint import load_checkpoint, restore, save_checkpoint
from tinyshot.utils.device import resolve_device
from tinyshot.utils.io import atomic_write, write_json
from tinyshot.utils.logging import get_logger, progress, quiet_weight_loading, setup_logging
from tinyshot.utils.seed import derive_seed, seed_everything, torch_generator

log = get_logger("diffusion.pretrain")

ARCH = "tinyshot-pixel-t2i"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_SUBDIR = "model"
CAPTION_TEMPLATE = "a photo of a {}"
GENERIC_CAPTION = "a photo of an object"
# Lower-case caption words for the Fashion-MNIST base classes 0-4. "tshirt" (one CLIP token)
# instead of "t-shirt", which tokenizes to t / - / shirt and would train the token "shirt",
# the name of the novel class 6.
FASHION_BASE_WORDS = {0: "tshirt", 1: "trouser", 2: "pullover", 3: "dress", 4: "coat"}
FASHION_DEFAULT_SEED = 0


# ----------------------------------------------------------------------------- data / recipes


@dataclass
class CaptionedImages:
    """What the trainer consumes: uint8 images (N, H, W) or (N, H, W, C) and one caption each."""

    images: np.ndarray
    captions: list[str]
    recipe: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise DataError(
                f"recipe {self.recipe}: images must be uint8 (N,H,W) or (N,H,W,C), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if len(self.captions) != len(self.images):
            raise DataError(
                f"recipe {self.recipe}: {len(self.images)} images but {len(self.captions)} captions"
            )
        if len(self.images) == 0:
            raise DataError(f"recipe {self.recipe}: no images")

    def __len__(self) -> int:
        return len(self.images)

    def to_tensor(self) -> torch.Tensor:
        """(N, C, H, W) uint8 with C in {1, 3}; grey images stay 1-channel until batching."""
        x = torch.from_numpy(np.ascontiguousarray(self.images))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
        if x.shape[1] not in (1, 3):
            raise DataError(f"recipe {self.recipe}: images need 1 or 3 channels, got {x.shape[1]}")
        return x


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, h, w) images centrally to size x size; padding keeps pixels exact."""
    n, h, w = images.shape[:3]
    if h > size or w > size:
        raise DataError(f"images are {h}x{w}, larger than the model's {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size, *images.shape[3:]), dtype=images.dtype)
    out[:, top : top + h, left : left + w] = images
    return out


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
        # 28 px grey images zero-padded (pad_to) onto the canvas: see data.transforms.ImagePrep.
        "image_prep": {
            "mode": "pad",
            "size": image_size,
            "content_size": 28,
            "pad_value": 0,
            "grey": True,
        },
    }
    return CaptionedImages(images, captions, "fashion-mnist-base", info)


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
    pool (`data.fashion_mnist.heldout_pool`, split `novel-pool`) is never seen, so few-shot supports drawn from it are new
    images of known concepts, as in the paper. Queries still come from the test split.
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
        "image_prep": {
            "mode": "pad",
            "size": image_size,
            "content_size": 28,
            "pad_value": 0,
            "grey": True,
        },
    }
    return CaptionedImages(images, captions, "fashion-mnist-known", info)


RECIPES: dict[str, Callable[..., CaptionedImages]] = {
    "fashion-mnist": fashion_mnist_recipe,
    "fashion-mnist-known": fashion_mnist_known_recipe,
}


# ----------------------------------------------------------------------------- config / models


@dataclass
class PretrainConfig:
    """Architecture and training settings; the defaults reproduce the shipped Fashion-MNIST model."""

    image_size: int = 32
    # UNet (pixel space, RGB in/out)
    # Attention (self + cross) at 8x8 and in the mid block only: attention at 16x16 doubled the
    # CPU step time for this budget (see docs/pretrained-generator.md).
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    # CLIP text encoder (random init, trained jointly)
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 256
    max_length: int = 77
    # noise schedule
    num_train_timesteps: int = 1000
    # SD 1.5's schedule. Its terminal SNR is higher than the cosine schedule's, so DDIM's first
    # steps amplify epsilon errors less (cosine: x0 error ~34x the eps error at t=981; this: ~14x).
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    clip_sample: bool = True
    # optimisation
    steps: int = 2000
    batch_size: int = 32
    lr: float = 8e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    # Min-SNR-gamma loss weights (Hang et al. 2023): converge faster on the high-noise steps
    # that decide an image's layout; None trains on the plain epsilon-MSE.
    snr_gamma: float | None = 5.0
    seed: int = FASHION_DEFAULT_SEED
    checkpoint_every: int = 100
    save_dtype: str = "float16"

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"steps and batch size must be >= 1 (got {self.steps}, {self.batch_size})"
            )
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.save_dtype not in ("float32", "float16"):
            raise ConfigError(f"save_dtype must be float32 or float16, got {self.save_dtype!r}")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by the UNet's downsampling "
                f"factor {2 ** (len(self.block_out_channels) - 1)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown generator config keys: {sorted(unknown)}")
        return cls(**d)


def build_unet(cfg: PretrainConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=cfg.block_out_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_hidden_size,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_text_encoder(cfg: PretrainConfig, tokenizer=None):
    from transformers import CLIPTextConfig, CLIPTextModel

    from tinyshot.diffusion.tokenizer import VOCAB_SIZE

    # transformers' CLIPTextConfig defaults pad_token_id=1; the CLIP tokenizer pads with
    # <|endoftext|> (49407), so take all special ids from the tokenizer.
    tok_ids = (
        (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        if tokenizer is not None
        else (49406, 49407, 49407)
    )
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=cfg.text_hidden_size,
        intermediate_size=cfg.text_intermediate_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        projection_dim=cfg.text_hidden_size,
        bos_token_id=tok_ids[0],
        eos_token_id=tok_ids[1],
        pad_token_id=tok_ids[2],
    )
    return CLIPTextModel(config)


def build_scheduler(cfg: PretrainConfig):
    """DDIM with SD's conventions (steps_offset=1, set_alpha_to_one=False); also used to add noise."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        clip_sample=cfg.clip_sample,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def tokenize(tokenizer, captions: Sequence[str], max_length: int) -> torch.Tensor:
    """SD-style ids: padded with <|endoftext|> to max_length, no attention mask."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class _Models(torch.nn.Module):
    """Trained modules plus their EMA shadows, so one state_dict holds everything to resume."""

    def __init__(self, cfg: PretrainConfig, tokenizer) -> None:
        super().__init__()
        self.unet = build_unet(cfg)
        self.text_encoder = build_text_encoder(cfg, tokenizer)
        self.ema_unet = build_unet(cfg)
        self.ema_text_encoder = build_text_encoder(cfg, tokenizer)
        self.ema_unet.load_state_dict(self.unet.state_dict())
        self.ema_text_encoder.load_state_dict(self.text_encoder.state_dict())
        for p in (*self.ema_unet.parameters(), *self.ema_text_encoder.parameters()):
            p.requires_grad_(False)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [*self.unet.parameters(), *self.text_encoder.parameters()]

    @torch.no_grad()
    def ema_update(self, decay: float) -> None:
        for ema, src in (
            (self.ema_unet, self.unet),
            (self.ema_text_encoder, self.text_encoder),
        ):
            for pe, ps in zip(ema.parameters(), src.parameters()):
                pe.lerp_(ps, 1.0 - decay)


def _ema_decay(cfg: PretrainConfig, step: int) -> float:
    """Warm-up EMA so early steps are not dominated by the random init."""
    return min(cfg.ema_decay, (1.0 + step) / (10.0 + step))


def _lr_lambda(cfg: PretrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress_ = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return f


def _batch_indices(step: int, batch_size: int, n: int, seed: int, cache: dict) -> np.ndarray:
    """Indices of a step's batch, a pure function of the step: epochs of seeded permutations."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offs = pos // n, pos % n
    out = np.empty_like(pos)
    for e in np.unique(epochs):
        if e not in cache:
            cache.clear()  # keep at most the epochs in use
            cache[e] = np.random.default_rng(derive_seed(seed, "epoch", int(e))).permutation(n)
        out[epochs == e] = cache[e][offs[epochs == e]]
    return out


# ----------------------------------------------------------------------------- training


def train_generator(
    data: CaptionedImages,
    out_dir: str | Path,
    cfg: PretrainConfig | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train UNet + text encoder on (images, captions); writes out_dir/model (the model folder).

    out_dir also holds checkpoint.pt (every cfg.checkpoint_every steps, atomic) and log.txt; a
    killed run continues bit-exactly with resume=True. `stop_after` ends the run early (as if
    killed) after that many total steps, for tests. `device` defaults to CUDA when available;
    all random draws come from CPU generators, so batches and noise do not depend on it.
    Returns the training summary.
    """
    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    cfg = cfg or PretrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise ConfigError(
            f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out"
        )
    x_all = data.to_tensor()
    if x_all.shape[-1] != cfg.image_size or x_all.shape[-2] != cfg.image_size:
        raise DataError(
            f"recipe {data.recipe}: images are {tuple(x_all.shape[-2:])}, "
            f"the config says image_size={cfg.image_size}"
        )

    seed_everything(cfg.seed)
    tokenizer = load_clip_tokenizer(model_max_length=cfg.max_length)
    dev = resolve_device(device)
    models = _Models(cfg, tokenizer).to(dev)
    scheduler = build_scheduler(cfg)
    caption_set = sorted(set(data.captions))
    caption_index = {c: i for i, c in enumerate(caption_set)}
    cap_idx = torch.tensor([caption_index[c] for c in data.captions], dtype=torch.long)
    caption_ids = tokenize(tokenizer, caption_set, cfg.max_length)
    empty_ids = tokenize(tokenizer, [""], cfg.max_length)
    optimizer = torch.optim.AdamW(models.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    gen = torch_generator(derive_seed(cfg.seed, "pretrain-noise"))
    meta = {"arch": ARCH, "config": cfg.to_dict(), "recipe": data.recipe, "n_images": len(data)}
    losses: list[float] = []
    step = 0
    elapsed = 0.0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, expect={"arch": ARCH})
        for key in ("config", "recipe", "n_images"):
            if _training_part(state["meta"].get(key)) != _training_part(meta[key]):
                raise ConfigError(
                    f"{ckpt_path}: checkpoint was made with a different {key} "
                    f"({_diff(state['meta'].get(key), meta[key])}); use another --out"
                )
        step = restore(
            state, model=models, optimizer=optimizer, scheduler=lr_sched, generators={"noise": gen}
        )
        losses = list(state["extra"].get("losses", []))
        elapsed = float(state["extra"].get("elapsed_s", 0.0))
        log.info("resuming %s at step %d/%d", out, step, cfg.steps)
    else:
        n_params = sum(p.numel() for p in models.unet.parameters())
        n_text = sum(p.numel() for p in models.text_encoder.parameters())
        log.info(
            "training %s on %d images (%s): UNet %.2fM params, text encoder %.2fM params, "
            "%d steps of batch %d",
            ARCH, len(data), data.recipe, n_params / 1e6, n_text / 1e6, cfg.steps, cfg.batch_size,
        )  # fmt: skip

    def checkpoint(at: int) -> None:
        save_checkpoint(
            ckpt_path,
            model=models,
            step=at,
            meta=meta,
            optimizer=optimizer,
            scheduler=lr_sched,
            generators={"noise": gen},
            extra={"losses": losses, "elapsed_s": elapsed},
        )

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    perm_cache: dict = {}
    alphas = scheduler.alphas_cumprod
    models.train()
    models.ema_unet.eval()
    models.ema_text_encoder.eval()
    t0 = time.perf_counter()
    bar = progress(range(step, end), desc="pretrain-generator", total=end, initial=step)
    for s in bar:
        idx = torch.from_numpy(_batch_indices(s, cfg.batch_size, len(data), cfg.seed, perm_cache))
        x = x_all[idx].to(dev).float().div_(127.5).sub_(1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        ids = caption_ids[cap_idx[idx]]
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        ids = torch.where(drop[:, None], empty_ids, ids)
        # all random draws on the CPU generator: same stream on any device
        noise = torch.randn(x.shape, generator=gen).to(dev)
        t = torch.randint(0, cfg.num_train_timesteps, (len(idx),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1).to(dev)
        t, ids = t.to(dev), ids.to(dev)
        noisy = a.sqrt() * x + (1 - a).sqrt() * noise  # = scheduler.add_noise, in fp32
        enc = models.text_encoder(ids).last_hidden_state
        pred = models.unet(noisy, t, encoder_hidden_states=enc).sample
        per_image = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = per_image.mean()  # the plain epsilon-MSE, what is logged
        if cfg.snr_gamma is not None:
            snr = (a / (1 - a)).view(-1)
            objective = (per_image * snr.clamp(max=cfg.snr_gamma) / snr).mean()
        else:
            objective = loss
        if not torch.isfinite(objective):
            raise TrainingError(
                f"loss is {loss.item()} at step {s}; the last checkpoint in {ckpt_path} is kept "
                "(lower the learning rate)"
            )
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(models.trainable(), cfg.grad_clip)
        optimizer.step()
        lr_sched.step()
        models.ema_update(_ema_decay(cfg, s))
        losses.append(float(loss.item()))
        done = s + 1
        if done % log_every == 0 or done == end:
            recent = float(np.mean(losses[-log_every:]))
            log.info(
                "step %d/%d loss %.4f (mean of last %d) lr %.2e",
                done, cfg.steps, recent, min(log_every, len(losses)), lr_sched.get_last_lr()[0],
            )  # fmt: skip
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{recent:.4f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            elapsed_now = elapsed + (time.perf_counter() - t0)
            elapsed, t0 = elapsed_now, time.perf_counter()
            checkpoint(done)
        step = done
    elapsed += time.perf_counter() - t0

    summary = {
        "command": command,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "steps_done": step,
        "batch_size": cfg.batch_size,
        "train_seconds": round(elapsed, 1),
        "loss_first_100": _mean(losses[:100]),
        "loss_last_100": _mean(losses[-100:]),
        "recipe_info": data.info,
        "config": cfg.to_dict(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if step < cfg.steps:
        log.info("stopped at step %d/%d; rerun with --resume to continue", step, cfg.steps)
        return summary
    model_dir = export_model_folder(models, tokenizer, cfg, data, out / MODEL_SUBDIR, summary)
    write_json(out / "summary.json", summary)
    log.info(
        "done: %d steps in %.0f s, loss %.4f -> %.4f; model folder %s (%.1f MB)",
        step, elapsed, summary["loss_first_100"], summary["loss_last_100"], model_dir,
        folder_size_mb(model_dir),
    )  # fmt: skip
    return summary


# Config keys that only change what is exported or how often it is saved, not the training run.
EXPORT_ONLY_KEYS = ("clip_sample", "checkpoint_every", "save_dtype")


def _training_part(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in EXPORT_ONLY_KEYS}
    return value


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return f"{old!r} -> {new!r}"


def export_model_folder(
    models: _Models,
    tokenizer,
    cfg: PretrainConfig,
    data: CaptionedImages,
    model_dir: str | Path,
    summary: dict[str, Any],
) -> Path:
    """Write the EMA weights in the diffusers layout; built in a temp folder then renamed."""
    model_dir = Path(model_dir)
    tmp = model_dir.with_name(f".{model_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dtype = torch.float16 if cfg.save_dtype == "float16" else torch.float32
    unet = build_unet(cfg)
    unet.load_state_dict(models.ema_unet.state_dict())
    text = build_text_encoder(cfg, tokenizer)
    text.load_state_dict(models.ema_text_encoder.state_dict())
    unet.to(dtype).save_pretrained(tmp / "unet", safe_serialization=True)
    text.to(dtype).save_pretrained(tmp / "text_encoder", safe_serialization=True)
    # Weights may be stored in fp16 (size budget) but load as fp32 by default: diffusers does
    # that for the UNet; transformers 5 loads in the config's dtype, so record float32 there.
    text_cfg_path = tmp / "text_encoder" / "config.json"
    text_cfg = json.loads(text_cfg_path.read_text())
    text_cfg["dtype"] = "float32"
    write_json(text_cfg_path, text_cfg)
    tokenizer.save_pretrained(tmp / "tokenizer")
    build_scheduler(cfg).save_pretrained(tmp / "scheduler")
    info = {
        "pixel_space": True,
        "image_size": cfg.image_size,
        "caption_template": CAPTION_TEMPLATE,
        "generic_caption": GENERIC_CAPTION,
        "recipe": data.recipe,
        "class_captions": data.info.get("class_captions", {}),
        "image_prep": data.info.get("image_prep"),
        "weights_dtype": cfg.save_dtype,
        "train": {k: v for k, v in summary.items() if k != "recipe_info"},
        "data": data.info,
    }
    write_json(tmp / "tinyshot.json", info)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    tmp.rename(model_dir)
    return model_dir


def folder_size_mb(folder: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


# ----------------------------------------------------------------------------- loading / sampling


SHIPPED_GENERATORS = ("fashion-mnist", "fashion-mnist-known", "glyphs")


def default_generator_path(name: str = "fashion-mnist") -> Path:
    """A shipped generator (package data) by dataset name, so demos and benchmarks need no
    retraining: `fashion-mnist` (base classes + unlabelled novel images) or `glyphs`
    (background scripts only)."""
    if name not in SHIPPED_GENERATORS:
        raise ConfigError(f"no shipped generator {name!r}; shipped: {list(SHIPPED_GENERATORS)}")
    return Path(__file__).resolve().parent.parent / "assets" / "generators" / name


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


def _glyphs_recipe(**kw: Any) -> CaptionedImages:
    from tinyshot.diffusion.glyph_recipe import glyphs_recipe

    return glyphs_recipe(**kw)


RECIPES["glyphs"] = _glyphs_recipe
