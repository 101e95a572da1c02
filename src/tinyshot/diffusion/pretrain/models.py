"""Builders for the generator's parts (UNet, CLIP text encoder, DDIM scheduler, tokenizer ids) and
the trained modules with their EMA shadows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tinyshot.diffusion.pretrain.config import PretrainConfig


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
