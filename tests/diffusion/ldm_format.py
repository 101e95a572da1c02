"""Test helper: write a diffusers SD 1.x model as an original (LDM/CompVis) single-file
checkpoint, so the single-file loader can be tested without downloads. Written from the LDM
module layout (input_blocks/middle_block/output_blocks, encoder.down/decoder.up); the test
checks it by loading the file back through diffusers' own converter and comparing outputs."""

from __future__ import annotations

import re

import torch

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _sub(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_to_ldm(sd: dict[str, torch.Tensor], layers: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    per = layers + 1
    for k, v in sd.items():
        m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
        if m:
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            blk = per * i + j + 1
            if kind == "resnets":
                k2 = f"input_blocks.{blk}.0.{_sub(rest, RESNET)}"
            else:
                k2 = f"input_blocks.{blk}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            k2 = f"input_blocks.{per * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            blk = per * i + j
            if kind == "resnets":
                k2 = f"output_blocks.{blk}.0.{_sub(rest, RESNET)}"
            else:
                k2 = f"output_blocks.{blk}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
            i = int(m[1])
            has_attn = any(x.startswith(f"up_blocks.{i}.attentions.") for x in sd)
            k2 = f"output_blocks.{per * i + layers}.{2 if has_attn else 1}.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k):
            k2 = f"middle_block.{2 * int(m[1])}.{_sub(m[2], RESNET)}"
        elif k.startswith("mid_block.attentions.0."):
            k2 = "middle_block.1." + k[len("mid_block.attentions.0.") :]
        else:
            k2 = (
                {
                    "time_embedding.linear_1": "time_embed.0",
                    "time_embedding.linear_2": "time_embed.2",
                    "conv_in": "input_blocks.0.0",
                    "conv_norm_out": "out.0",
                    "conv_out": "out.2",
                }[k.rsplit(".", 1)[0]]
                + "."
                + k.rsplit(".", 1)[1]
            )
        out["model.diffusion_model." + k2] = v
    return out


def vae_to_ldm(sd: dict[str, torch.Tensor], blocks: int = 4) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        k2 = k
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            k2 = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", k):
            k2 = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            k2 = f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
            k2 = f"decoder.up.{blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k):
            k2 = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k):
            rest = _sub(m[2], VAE_ATTN)
            k2 = f"{m[1]}.mid.attn_1.{rest}"
            if v.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                v = v[:, :, None, None]
        k2 = k2.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + k2] = v
    return out


def to_ldm_checkpoint(model) -> dict[str, torch.Tensor]:
    """UNet + VAE + text encoder of a DiffusionModel as one original-format state dict."""
    layers = int(model.unet.config.layers_per_block)
    sd = unet_to_ldm(model.unet.state_dict(), layers)
    sd.update(vae_to_ldm(model.vae.state_dict(), len(model.vae.config.block_out_channels)))
    for k, v in model.text_encoder.state_dict().items():  # transformers 5 drops "text_model."
        sd[
            "cond_stage_model.transformer."
            + ("" if k.startswith("text_model.") else "text_model.")
            + k
        ] = v
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}
