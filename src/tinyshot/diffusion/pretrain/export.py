"""Writing a trained generator as a model folder in the diffusers layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tinyshot.diffusion.pretrain.config import PretrainConfig
from tinyshot.diffusion.pretrain.data import CAPTION_TEMPLATE, GENERIC_CAPTION, CaptionedImages
from tinyshot.diffusion.pretrain.models import (
    _Models,
    build_scheduler,
    build_text_encoder,
    build_unet,
)
from tinyshot.utils.io import write_json


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
