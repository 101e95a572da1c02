"""`PretrainConfig`: the generator's architecture and training settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tinyshot.diffusion.pretrain.recipes.fashion_mnist import FASHION_DEFAULT_SEED
from tinyshot.errors import ConfigError


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
    # Offset noise (Guttenberg 2023): add offset_noise * N(0, 1) per image and channel to the
    # training noise. SD's schedule keeps sqrt(alpha_bar_T) = 0.068 of the image at t = T, so a
    # model learns to read each image's mean brightness from x_T; sampling starts from noise
    # with mean ~0 and draws mid-grey backgrounds where the data has black ones. 0 = plain.
    offset_noise: float = 0.0
    seed: int = FASHION_DEFAULT_SEED
    checkpoint_every: int = 100
    save_dtype: str = "float16"
    # Warm start: a model folder (same architecture) whose weights start this run, with a
    # fresh optimizer and LR schedule (a second phase of a run whose first phase was too short).
    init_from: str | None = None

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
        if not 0.0 <= self.offset_noise <= 1.0:
            raise ConfigError(f"offset_noise must be in [0, 1], got {self.offset_noise}")
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
