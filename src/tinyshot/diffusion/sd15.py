"""Stable Diffusion 1.5 and DINO ViT-B/16 architectures from their published configs.

No hub weights can be had offline, but the architectures can: a model built from the real
configs with random weights costs exactly what the real one costs (memory, FLOPs, seconds per
step). `tinyshot bench generate --arch sd15` and `scripts/gpu-check.sh` time the full-size path
with these (diffusion.model.build_sd15_model); tests build the same architectures with reduced
widths (`width_divisor`), and count
the full-size parameters on the `meta` device without allocating weights.

The values are those of the hub folders stable-diffusion-v1-5 (unet/, vae/, text_encoder/ =
CLIP ViT-L/14's text tower, scheduler/) and facebook/dino-vitb16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tinyshot.errors import ConfigError
from tinyshot.utils.device import resolve_device

# Stable Diffusion 1.5's noise schedule (scheduler/scheduler_config.json of the hub model).
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,  # diffusers reads it as the number of heads for SD 1.x
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# CLIP ViT-L/14's text encoder, as SD 1.5's text_encoder/config.json (legacy special-token ids).
SD15_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SD15_SCHEDULER_CONFIG: dict[str, Any] = {**SD15_SCHEDULER, "clip_sample": False}
# facebook/dino-vitb16: ViT-B/16 at 224 px, CLS-token features (no pooler), ImageNet mean/std.
DINO_VITB16: dict[str, Any] = {
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
}
DINO_PREPROCESSOR: dict[str, Any] = {
    "image_processor_type": "ViTImageProcessor",
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
# Parameter counts of the published models (what tests assert on the meta device).
PUBLISHED_PARAMS = {
    "unet": 859_520_964,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "dino_vitb16": 85_798_656,
}


def sd15_configs(width_divisor: int = 1, sample_size: int | None = None) -> dict[str, dict]:
    """The component configs; width_divisor > 1 shrinks every width (the block structure, head
    count and layer count of the UNet and VAE stay SD's), for CPU tests of the same code path.

    sample_size is the latent side (64 for 512 px); the VAE's follows it (x8).
    """
    if width_divisor < 1:
        raise ConfigError(f"width_divisor must be >= 1, got {width_divisor}")
    unet, vae, text = dict(SD15_UNET), dict(SD15_VAE), dict(SD15_TEXT_ENCODER)
    if width_divisor > 1:
        d = width_divisor

        def shrink(chs: list[int]) -> list[int]:
            out = [max(32, c // d // 32 * 32) for c in chs]  # GroupNorm(32) needs multiples
            return out

        unet["block_out_channels"] = shrink(unet["block_out_channels"])
        vae["block_out_channels"] = shrink(vae["block_out_channels"])
        hidden = max(32, 768 // d // 16 * 16)
        text.update(
            hidden_size=hidden,
            projection_dim=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
        unet["cross_attention_dim"] = hidden
    if sample_size is not None:
        if sample_size < 8 or sample_size % 8:
            raise ConfigError(f"latent sample_size must be a multiple of 8, got {sample_size}")
        unet["sample_size"] = sample_size
        vae["sample_size"] = sample_size * 8
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text,
        "scheduler": dict(SD15_SCHEDULER_CONFIG),
    }


def rehearsal_configs(sample_size: int = 64) -> dict[str, dict]:
    """SD 1.5's block structure at the real 512 px (latent 64), cut to what 2 CPU cores can run
    20,000 times in about an hour, for scripts/scale-rehearsal.sh (the paper's data volume, not
    its compute): widths 8-16 with GroupNorm in groups of 8, self-attention replaced by
    cross-attention (diffusers' only_cross_attention: SD's 4,096-token attention maps dominate
    its cost at 512 px), and the 2-layer, 32-wide text encoder of sd15_configs' reduced builds."""
    cfg = sd15_configs(width_divisor=24, sample_size=sample_size)
    cfg["unet"].update(
        block_out_channels=[8, 8, 16, 16], norm_num_groups=8, only_cross_attention=True
    )
    cfg["vae"].update(block_out_channels=[8, 8, 8, 8], norm_num_groups=8)
    return cfg


def _modules(configs: dict[str, dict]) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return {
        "unet": UNet2DConditionModel(**configs["unet"]),
        "vae": AutoencoderKL(**configs["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
    }


def _dino(width_divisor: int = 1, full_input: bool = False) -> torch.nn.Module:
    """DINO ViT-B/16; width_divisor > 1 shrinks it to 2 layers at 32 px with 8 px patches, or,
    with full_input, keeps the real 224 px input and 16 px patches (196 tokens, as DINO)."""
    from transformers import ViTConfig, ViTModel

    cfg = dict(DINO_VITB16)
    if width_divisor > 1:
        hidden = max(32, 768 // width_divisor // 16 * 16)
        cfg.update(
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
        if not full_input:
            cfg.update(image_size=32, patch_size=8)
    return ViTModel(ViTConfig(**cfg), add_pooling_layer=False)


def count_parameters(width_divisor: int = 1) -> dict[str, int]:
    """Parameters of each component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        mods = _modules(sd15_configs(width_divisor))
        mods["dino_vitb16"] = _dino(width_divisor)
    return {k: sum(p.numel() for p in m.parameters()) for k, m in mods.items()}


def _init_device(device: torch.device) -> torch.device:
    """Where to run the random initialisation: on the GPU itself when there is one (seconds
    instead of a minute of CPU init for 1.07B parameters)."""
    return device if device.type == "cuda" else torch.device("cpu")


def save_dino_folder(
    folder: str | Path,
    seed: int = 0,
    width_divisor: int = 1,
    device: str = "cpu",
    full_input: bool = False,
) -> Path:
    """A random-weight DINO ViT-B/16 (`ViTModel`, no pooler) + its preprocessor config
    (full_input: a reduced width keeps the real input size, see _dino)."""
    dev = _init_device(resolve_device(device))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        with dev:
            model = _dino(width_divisor, full_input)
    folder = Path(folder)
    model.save_pretrained(folder)
    prep = dict(DINO_PREPROCESSOR)
    size = int(model.config.image_size)
    prep["size"] = {"height": size, "width": size}
    (folder / "preprocessor_config.json").write_text(json.dumps(prep, indent=2) + "\n")
    return folder


def write_sd15_config_folder(folder: str | Path, configs: dict[str, dict] | None = None) -> Path:
    """The component configs (no weights) in diffusers layout, with the real CLIP tokenizer:
    what `StableDiffusionPipeline.from_single_file(..., config=folder)` needs to load an
    original-format checkpoint without the hub."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    configs = configs or sd15_configs()
    folder = Path(folder)
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _write_config(folder / "unet", UNet2DConditionModel, configs["unet"])
    _write_config(folder / "vae", AutoencoderKL, configs["vae"])
    _write_config(folder / "scheduler", DDIMScheduler, configs["scheduler"])
    text = CLIPTextConfig(**configs["text_encoder"])
    text.architectures = ["CLIPTextModel"]
    text.save_pretrained(folder / "text_encoder")
    load_clip_tokenizer().save_pretrained(folder / "tokenizer")
    write_model_index(folder)
    return folder


def write_model_index(
    folder: Path,
    *,
    scheduler: str = "DDIMScheduler",
    text_encoder: str = "CLIPTextModel",
    tokenizer: str = "CLIPTokenizer",
    unet: str = "UNet2DConditionModel",
    vae: str = "AutoencoderKL",
) -> None:
    """folder/model_index.json of an SD 1.5 pipeline (component class names; no safety checker
    or feature extractor), the file by which diffusers and load_diffusion_model know the layout."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", text_encoder],
        "tokenizer": ["transformers", tokenizer],
        "unet": ["diffusers", unet],
        "vae": ["diffusers", vae],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_config(folder: Path, cls: Any, config: dict[str, Any]) -> None:
    name = getattr(cls, "config_name", "config.json")
    (folder / name).write_text(json.dumps({"_class_name": cls.__name__, **config}, indent=2) + "\n")
