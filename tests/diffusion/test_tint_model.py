"""The diffusion model bundle: tiny SD build, diffusers-layout save/load, pixel space, errors."""

from __future__ import annotations

import json

import pytest
import torch

from tinyshot.diffusion.model import (
    SD15_SCHEDULER,
    build_tiny_diffusion_model,
    load_diffusion_model,
    make_ddim_scheduler,
)
from tinyshot.errors import ModelError


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_diffusion_model(seed=1)


def test_tiny_model_is_sd_shaped(tiny):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(tiny.unet, UNet2DConditionModel)
    assert isinstance(tiny.text_encoder, CLIPTextModel)
    assert isinstance(tiny.vae, AutoencoderKL)
    assert isinstance(tiny.scheduler, DDIMScheduler)
    assert tiny.resolution == 32 and tiny.latent_shape == (4, 8, 8)
    assert tiny.unet.config.cross_attention_dim == tiny.embed_dim == 32
    # the real CLIP tokenizer: SD 1.5's ids
    ids = tiny.tokenizer("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tiny.tokenize(["a cat"]).shape == (1, 77)
    # SD 1.5's noise schedule
    cfg = tiny.scheduler.config
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert cfg.num_train_timesteps == 1000 and cfg.steps_offset == 1
    assert not cfg.set_alpha_to_one and not cfg.clip_sample
    assert abs(float(tiny.scheduler.alphas_cumprod[-1]) - 0.0047) < 1e-4
    # VAE scaling factor set for unit-variance latents
    z = tiny.encode(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    assert 0.7 < float(z.std()) < 1.3


def test_save_load_roundtrip_is_bit_exact(tiny, tmp_path):
    folder = tiny.save(tmp_path / "m")
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler", "vae"):
        assert (folder / sub).is_dir()
    assert json.loads((folder / "model_index.json").read_text())["vae"][1] == "AutoencoderKL"
    again = load_diffusion_model(folder)
    assert not again.pixel_space and again.resolution == 32
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(tiny.encode(x), again.encode(x))
        c1, c2 = tiny.encode_text(["a photo of a cat"]), again.encode_text(["a photo of a cat"])
        assert torch.equal(c1, c2)
        z = tiny.encode(x)
        t = torch.tensor(500)
        assert torch.equal(
            tiny.eps(z, t, c1.expand(2, -1, -1)), again.eps(z, t, c2.expand(2, -1, -1))
        )
        assert torch.equal(tiny.decode(z), again.decode(z))


def test_pixel_space_folder_without_vae(tmp_path):
    m = build_tiny_diffusion_model(pixel_space=True, image_size=16)
    assert m.pixel_space and m.latent_shape == (3, 16, 16) and m.resolution == 16
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(m.decode(m.encode(x)), x, atol=1e-6)  # latents are images in [-1, 1]
    assert float(m.encode(x).min()) >= -1.0
    folder = m.save(tmp_path / "px")
    assert not (folder / "vae").exists()
    meta = json.loads((folder / "tinyshot.json").read_text())
    meta["caption_template"] = "a picture of a {}"
    (folder / "tinyshot.json").write_text(json.dumps(meta))
    again = load_diffusion_model(folder)
    assert again.pixel_space and again.resolution == 16
    assert again.caption_template == "a picture of a {}"


def test_new_tokens_leave_other_rows_bit_identical(tiny):
    before = tiny.text_encoder.get_input_embeddings().weight.detach().clone()
    ids = tiny.ensure_tokens(["<tinyshot-0>", "<tinyshot-1>"], "object")
    w = tiny.text_encoder.get_input_embeddings().weight
    assert ids == [49408, 49409] and w.shape[0] == 49410
    assert torch.equal(w[:49408], before)
    obj = tiny.tokenizer("object", add_special_tokens=False).input_ids[0]
    assert torch.equal(w[49408], before[obj]) and torch.equal(w[49409], before[obj])
    assert tiny.ensure_tokens(["<tinyshot-1>"]) == [49409]  # idempotent
    assert tiny.text_encoder.get_input_embeddings().weight.shape[0] == 49410


def test_missing_or_broken_model_folders(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        load_diffusion_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"unet/config\.json"):
        load_diffusion_model(tmp_path / "empty")
    with pytest.raises(ModelError, match="prediction_type"):
        make_ddim_scheduler({**SD15_SCHEDULER, "prediction_type": "flow"})


def test_shipped_generator_keeps_its_own_clip_sample():
    """The shipped pixel-space generator was trained and is sampled with clip_sample=True;
    the loader keeps it, so every DDIM schedule built from the model clips x0 to [-1, 1]."""
    from tinyshot.diffusion.ddim import make_schedule
    from tinyshot.diffusion.pretrain import default_generator_path

    m = load_diffusion_model(default_generator_path("fashion-mnist"))
    assert m.scheduler.config.clip_sample and m.scheduler.config.clip_sample_range == 1.0
    rule = make_schedule(m, 10).rule
    assert rule.clip_sample and rule.prediction_type == "epsilon"
