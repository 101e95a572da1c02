"""Upscaling before inversion: Real-ESRGAN through ncnn, the paper's chain, bilinear fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from tinyshot.diffusion import upscale as up
from tinyshot.errors import ConfigError, ModelError


def _smooth(size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * xx) * 0.5 + 0.5, np.cos(4 * yy) * 0.5 + 0.5, xx * yy], -1)
    img[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = [1.0, 0.2, 0.1]
    return Image.fromarray((img * 255).astype(np.uint8))


def test_realesrgan_upscales_x4_faithfully():
    sr = up.RealESRGAN("animevideov3", threads=1)
    src = _smooth(24)
    out = sr(src)
    assert out.size == (96, 96) and out.mode == "RGB"
    ref = np.asarray(src.resize((96, 96), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    got = np.asarray(out, dtype=np.float64) / 255
    err = ((got - ref) ** 2).mean()
    wrong = ((got[::-1] - ref) ** 2).mean()  # the same pixels upside down
    assert err < 1e-2 and wrong > 5 * err  # the same picture, 4x larger (PSNR > 20 dB)
    with pytest.raises(ConfigError, match="sr_model"):
        up.RealESRGAN("hat")


def test_paper_chain_and_plain_resizes(monkeypatch):
    calls = []
    real = up._sr

    def spy(model):
        calls.append(model)
        return real(model)

    monkeypatch.setattr(up, "_sr", spy)
    img = _smooth(21)
    # SR chain: bilinear to sr_input_size, x4, bilinear to the model resolution
    out = up.upscale_image(img, 64, "auto", "animevideov3", sr_input_size=12)
    assert out.size == (64, 64) and calls == ["animevideov3"]
    # small growth (28 -> 32, the offline generator's case): plain bilinear, no SR
    assert up.upscale_image(_smooth(28), 32, "auto").size == (32, 32) and len(calls) == 1
    assert up.upscale_image(img, 64, "bilinear").size == (64, 64) and len(calls) == 1
    # larger inputs are reduced; non-square ones centre-cropped first
    wide = Image.new("RGB", (90, 60), (10, 20, 30))
    assert up.upscale_image(wide, 32).size == (32, 32)
    x = up.prepare_images([img, wide], 32, "bilinear")
    assert x.shape == (2, 3, 32, 32) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0


def test_bilinear_fallback_without_sr(monkeypatch, caplog):
    def missing(model):
        raise ModelError("ncnn not installed")

    monkeypatch.setattr(up, "_sr", missing)
    caplog.set_level(logging.WARNING, logger="tinyshot")
    logging.getLogger("tinyshot").propagate = True
    try:
        out = up.upscale_image(_smooth(16), 64, "sr")
    finally:
        logging.getLogger("tinyshot").propagate = False
    want = _smooth(16).resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(out), np.asarray(want))
    assert "bilinear" in caplog.text
