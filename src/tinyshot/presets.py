"""Named pipeline presets (`--preset NAME` on demo, fit and benchmark): plain data, one place.

A preset is a partial PipelineConfig (nested tables merge key by key). Precedence, lowest
first: PipelineConfig defaults < preset < --config file < command-line flags.

- "demo": today's defaults (PipelineConfig() as it is: sized for the offline CPU demo).
- "paper": the paper's settings for Stable Diffusion 1.5 + DINO ViT-B/16 on a GPU (Sec. 4 and
  B.2 of Landolsi & Kahl): TI 5000 steps at lr 1e-3, 50 DDIM steps, guidance 7.5, NTI with 10
  inner iterations at lr 1e-2, 4000 images per class, ResNet12 at 84 px (Conv4 with
  --student conv4), 10k distillation iterations, the DINO teacher at 224 px (`--teacher
  dinov2-base` or `dinov2-small` puts DINOv2 in its place; the paper used DINO).
  The lora* methods get DataDream's LoRA settings (rank 16, lr 1e-4, 2000 joint steps).
  configs/paper.toml holds the same values (a test keeps the two equal). PipelineConfig's
  comments say why the demo differs; the paper's numbers live here only.
"""

from __future__ import annotations

import copy
from typing import Any

from tinyshot.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "paper": {
        "generator": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "specialize": {
            "ti_steps": 5000,
            "ti_lr": 1e-3,
            "ti_batch_size": 1,
            "num_inference_steps": 50,
            "guidance": 7.5,
            "nti_inner_steps": 10,
            "nti_lr": 1e-2,
            "upscale": "auto",
        },
        "synthetic_per_class": 4000,
        "alpha": 1.0,
        "generation_batch_size": 16,
        "teacher": "dino-vitb16",  # the paper's; "dinov2-base" / "dinov2-small" fit here too
        "teacher_input_size": 224,
        "student": "resnet12",
        "image_size": 84,
        "distill": {"iterations": 10000, "eval_every": 500, "checkpoint_every": 1000},
        # the lora* methods at DataDream's settings (Kim et al., ECCV 2024): rank 16, AdamW at
        # 1e-4, cosine schedule after 100 warm-up steps, ~400 steps of 8 images per class
        # (here 2000 joint steps of 2 images per class for 5 classes)
        "lora": {
            "steps": 2000,
            "lr": 1e-4,
            "batch_size": 2,
            "rank": 16,
            "alpha": 16.0,
            "warmup_steps": 100,
        },
    },
}
PRESET_HELP = (
    "named settings under --config and flags: 'demo' (the defaults, CPU-sized) or 'paper' "
    "(SD 1.5 + DINO at the paper's budgets, for a GPU; = configs/paper.toml)"
)


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; tables (dicts) merge key by key, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def preset(name: str | None) -> dict[str, Any]:
    """The preset's values (a copy); None gives {}."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
