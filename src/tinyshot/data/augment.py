"""Training-time augmentation for the student, vectorised in torch (no torchvision here).

Random crop with zero padding plus horizontal flip (and optional light colour jitter), the
standard few-shot recipe. All randomness comes from an explicit `torch.Generator`, so a
resumed distillation run draws exactly the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import torch


def crop_padding(size: int) -> int:
    """Padding for random crops: 4 px at 32 px (CIFAR convention), scaled with the image size."""
    return max(1, round(4 * size / 32))


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    flip: bool = True,
    crop: bool = True,
    padding: int | None = None,
    color_jitter: float = 0.0,
) -> torch.Tensor:
    """Augment a batch (B,3,H,W) in [0,1]; random draws come from `generator` only.

    Parameters are drawn on the generator's device (CPU by default) and then moved, so the
    same generator state gives the same augmentation on CPU and GPU.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects (B,C,H,W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if b == 0:
        return x
    gdev = generator.device
    out = x
    if crop:
        p = crop_padding(max(h, w)) if padding is None else int(padding)
        if p > 0:
            oy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=gdev).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=gdev).to(x.device)
            xp = torch.nn.functional.pad(out, (p, p, p, p))
            rows = oy[:, None] + torch.arange(h, device=x.device)[None, :]  # (B,H)
            cols = ox[:, None] + torch.arange(w, device=x.device)[None, :]  # (B,W)
            bi = torch.arange(b, device=x.device)[:, None, None]
            # Advanced indexing puts the indexed dims first: (B,H,W,C) -> back to (B,C,H,W).
            out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
            out = out.permute(0, 3, 1, 2).contiguous()
    if flip:
        mask = torch.rand(b, generator=generator, device=gdev).to(x.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    if color_jitter > 0:
        s = float(color_jitter)
        f = 1 + (torch.rand(b, 3, generator=generator, device=gdev).to(x.device) * 2 - 1) * s
        bright, contrast, sat = (f[:, i, None, None, None] for i in range(3))
        out = out * bright
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean
        gray = (0.299 * out[:, :1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3]) if c == 3 else out
        out = (out - gray) * sat + gray
        out = out.clamp(0, 1)
    return out
