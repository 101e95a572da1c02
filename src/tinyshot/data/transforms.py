"""Image <-> tensor conversion written with PIL/numpy/torch (torchvision is unavailable here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image


def pil_to_tensor(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """RGB float tensor (3,H,W) in [0,1]; resized (bicubic) to size x size when given."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def images_to_tensor(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """Batch (N,3,size,size) in [0,1]."""
    if len(images) == 0:
        s = size or 1
        return torch.empty(0, 3, s, s)
    return torch.stack([pil_to_tensor(im, size) for im in images])


def images_to_uint8(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """Batch (N,3,size,size) uint8: the exact values of images_to_tensor, a quarter the memory."""
    return (images_to_tensor(list(images), size) * 255).round().to(torch.uint8)


def teacher_view(images: Sequence[Image.Image], size: int | None) -> torch.Tensor:
    """A teacher's input (uint8): the original images, untouched when they share one square size
    no larger than the teacher's input size (its backbone resizes them itself), else resized to
    it. Never a student's small copies: at 32 px the fit teacher lost 10 points (issue 14). The
    pipeline, `tinyshot evaluate` and the benchmark's teacher baseline all feed teachers so."""
    images = list(images)
    sides = {im.size for im in images}
    if len(sides) == 1:
        w, h = next(iter(sides))
        if w == h and (size is None or w <= size):
            return images_to_uint8(images, None)
    return images_to_uint8(images, size or max(max(s) for s in sides))


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3,H,W) or (1,H,W) in [0,1] -> 8-bit RGB image (round-to-nearest, clipped)."""
    x = x.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    arr = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [0,1] -> (N,H,W,3) uint8."""
    x = x.detach().float().clamp(0, 1).cpu()
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------ the generator's image preparation

PREP_MODES = ("pad", "resize")


@dataclass(frozen=True)
class ImagePrep:
    """How a generator's training images were prepared, so every stage that feeds it (or
    compares with its output) prepares images the same way.

    mode "pad": the image (downscaled to `content_size` when larger) is centred on a
    `size` x `size` canvas filled with `pad_value` (Fashion-MNIST: 28 px in 32 px, black).
    mode "resize": square-cropped and resized to `size` (Stable Diffusion; the default for
    models without a record). `grey`: trained on grey images (3 equal channels).
    """

    mode: str = "resize"
    size: int | None = None
    content_size: int | None = None
    pad_value: int = 0
    grey: bool = False

    def __post_init__(self) -> None:
        from tinyshot.errors import ConfigError

        if self.mode not in PREP_MODES:
            raise ConfigError(f"image_prep mode must be one of {PREP_MODES}, got {self.mode!r}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"image_prep size must be >= 1, got {self.size}")
        if self.content_size is not None and not (
            1 <= self.content_size <= (self.size or self.content_size)
        ):
            raise ConfigError(
                f"image_prep content_size {self.content_size} must be in [1, size={self.size}]"
            )
        if not 0 <= int(self.pad_value) <= 255:
            raise ConfigError(f"image_prep pad_value must be in [0, 255], got {self.pad_value}")

    def at_side(self, side: int) -> ImagePrep:
        """This preparation for the generator's images shrunk to `side` (an image store keeps
        large images shrunk, diffusion.store): a pad frame shrinks with them."""
        if self.size is None or side == self.size:
            return self
        content = self.content_size
        if content is not None:
            content = max(1, round(content * side / self.size))
        return replace(self, size=side, content_size=content)

    @property
    def content(self) -> int | None:
        """Side of the real image inside the canvas (pad mode); None when it fills the canvas."""
        if self.mode != "pad" or self.size is None:
            return None
        return self.content_size or self.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "size": self.size,
            "content_size": self.content_size,
            "pad_value": int(self.pad_value),
            "grey": bool(self.grey),
        }

    @classmethod
    def from_dict(
        cls, d: dict[str, Any] | None, size: int | None = None, where: str = ""
    ) -> ImagePrep:
        """From a tinyshot.json `image_prep` block; None (no record) gives resize to `size`."""
        from tinyshot.errors import ConfigError

        if d is None:
            return cls(mode="resize", size=size)
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: image_prep must be an object, got {type(d).__name__}")
        known = {"mode", "size", "content_size", "pad_value", "grey"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown image_prep key(s) {unknown}; known {sorted(known)}"
            )
        merged = {"size": size, **d}
        try:
            return cls(**merged)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e


def center_square(img: Image.Image) -> Image.Image:
    """The largest centred square (non-square photos are cropped, never stretched)."""
    w, h = img.size
    if w == h:
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def crop_generator_frame(images: torch.Tensor, prep: ImagePrep) -> torch.Tensor:
    """Generated (N,C,S,S) images back in the real images' frame, the inverse of
    prepare_for_generator: a pad-mode generator's images lose the padded border, and a grey
    generator's RGB output is projected onto grey (the channel mean, rounded for uint8), so
    the teacher, the student and Frechet distances compare like with like. A grey generator
    was trained on R = G = B images; any colour in its output is model error (the shipped
    Fashion-MNIST generators tint their samples, docs/generator.md). Real grey images pass
    through unchanged."""
    content = prep.content
    side = images.shape[-1]
    if content is not None and content < side and prep.size == side:
        off = (side - content) // 2
        images = images[..., off : off + content, off : off + content]
    if prep.grey and images.ndim == 4 and images.shape[1] == 3:
        grey = images.float().mean(1, keepdim=True)
        if images.dtype == torch.uint8:
            grey = grey.round().to(torch.uint8)
        else:
            grey = grey.to(images.dtype)
        images = grey.expand_as(images)
    return images.contiguous()


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N,C,H,W) uint8 or float [0,1] -> uint8 (N,C,size,size), antialiased bilinear: how a
    teacher's large inputs and a store's large images are shrunk."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    y = torch.nn.functional.interpolate(
        xf, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return (y.clamp(0, 1) * 255).round().to(torch.uint8)


def shrink_uint8(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N,C,H,W) as a teacher takes generated images: shrunk only when larger than its
    input size (it resizes smaller ones itself)."""
    if size is not None and x.shape[-1] > size:
        return resize_uint8(x, size)
    return x.contiguous()


def exact_uint8(x: torch.Tensor, size: int, chunk: int = 1000) -> torch.Tensor:
    """uint8 (N,3,H,W) at exactly `size` by the resize a student's real images get
    (images_to_uint8), so a generated image equal to a prepared support is that support."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = [
        images_to_uint8(
            [Image.fromarray(a, mode="RGB") for a in x[i : i + chunk].permute(0, 2, 3, 1).numpy()],
            size,
        )
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(out) if out else torch.empty(0, 3, size, size, dtype=torch.uint8)


def frame_brightness(images: torch.Tensor, width: int = 2) -> float:
    """Mean value in [0,1] of the outer `width`-pixel frame of (N,C,H,W) images (uint8 or float)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    mask[width:-width, width:-width] = False
    return float(x[..., mask].mean())
