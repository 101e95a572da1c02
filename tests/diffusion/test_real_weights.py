"""What first contact with real Stable Diffusion weights needs: scheduler configs without
clip_sample, a frozen embedding table during TI, and fp16-variant weight folders."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.ddim import make_schedule
from tinyshot.diffusion.model import (
    SD15_SCHEDULER,
    build_tiny_diffusion_model,
    load_diffusion_model,
    make_ddim_scheduler,
    weights_variant,
)
from tinyshot.diffusion.textual_inversion import injected_tokens, train_tokens

# An SD 1.x scheduler/scheduler_config.json (a PNDM config) without the clip_sample key:
# stable-diffusion-v1-5's own copy ends with "clip_sample": false, but converted and
# fine-tuned folders often lack it.
SD1_PNDM_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def test_latent_config_without_clip_sample_does_not_clip():
    sched = make_ddim_scheduler(SD1_PNDM_CONFIG)
    assert sched.config.clip_sample is False
    # DDIMScheduler.step leaves SD-range latents alone (its default would clamp x0 to +-1)
    sched.set_timesteps(10)
    t = sched.timesteps[-1]
    x = torch.full((1, 4, 2, 2), 3.0)
    out = sched.step(torch.zeros_like(x), t, x).pred_original_sample
    assert float(out.max()) > 2.9
    # an explicit setting is kept either way
    assert make_ddim_scheduler({**SD1_PNDM_CONFIG, "clip_sample": True}).config.clip_sample


def test_latent_folder_without_clip_sample_loads_unclipped(tmp_path):
    folder = build_tiny_diffusion_model(seed=2).save(tmp_path / "m")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD1_PNDM_CONFIG))
    m = load_diffusion_model(folder)
    assert not m.pixel_space and m.scheduler.config.clip_sample is False
    assert not make_schedule(m, 10).rule.bounds_x0


@pytest.mark.parametrize("name", ["fashion-mnist", "fashion-mnist-known", "glyphs"])
def test_shipped_generators_still_clip(name):
    """The project's pixel-space generators were trained with clip_sample=True and their
    shipped configs say so: loading keeps it."""
    from tinyshot.diffusion.pretrain import default_generator_path

    path = default_generator_path(name)
    shipped = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    assert shipped["clip_sample"] is True
    if not (path / "unet").is_dir():
        pytest.skip("shipped generator weights not present")
    m = load_diffusion_model(path)
    assert m.pixel_space and m.scheduler.config.clip_sample
    rule = make_schedule(m, 10).rule
    assert rule.clip_sample and rule.clip_sample_range == 1.0


def test_ti_backward_leaves_the_embedding_table_without_gradient():
    m = build_tiny_diffusion_model(seed=3)
    ids = m.ensure_tokens(["<tinyshot-0>"])
    table = m.text_encoder.get_input_embeddings().weight
    assert table.shape[0] == 49409 and not table.requires_grad
    vectors = m.token_init_vector("object")[None].requires_grad_(True)
    with injected_tokens(m, ids, vectors):
        cond = m.text_encoder(m.tokenize(["a photo of an <tinyshot-0>"]))[0]
    cond.square().sum().backward()
    assert table.grad is None
    assert vectors.grad is not None and float(vectors.grad.abs().sum()) > 0


def test_ti_moves_the_token_and_nothing_else():
    m = build_tiny_diffusion_model(seed=4)
    m.ensure_tokens(["<tinyshot-0>"])
    before = m.text_encoder.get_input_embeddings().weight.detach().clone()
    lat = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))]
    cfg = SpecializeConfig(ti_steps=5, ti_lr=5e-2, ti_batch_size=2)
    vec = train_tokens(m, lat, "a photo of an {}", cfg, show_progress=False)
    table = m.text_encoder.get_input_embeddings().weight
    assert table.grad is None and torch.equal(table, before)
    assert float((vec[0] - m.token_init_vector("object")).abs().max()) > 1e-3


def _save_fp16_variant(model, folder):
    """The layout of a hub `fp16` branch: fp16 weights in *.fp16.safetensors files only."""
    model.save(folder)
    for sub in ("unet", "text_encoder", "vae"):
        for f in (folder / sub).glob("*.safetensors"):
            f.unlink()
        module = copy.deepcopy(getattr(model, sub)).half()
        module.save_pretrained(folder / sub, variant="fp16")
    return folder


def test_fp16_variant_folder_loads_with_the_same_weights(tmp_path):
    tiny = build_tiny_diffusion_model(seed=5)
    folder = _save_fp16_variant(tiny, tmp_path / "fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (folder / "text_encoder" / "model.fp16.safetensors").is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    for sub in ("unet", "text_encoder", "vae"):
        assert weights_variant(folder / sub) == "fp16"
    m = load_diffusion_model(folder)
    assert m.dtype == torch.float32
    for sub in ("unet", "text_encoder", "vae"):
        want = {k: v.half().float() for k, v in getattr(tiny, sub).state_dict().items()}
        got = getattr(m, sub).state_dict()
        assert sorted(got) == sorted(want), sub
        for k, v in got.items():
            assert v.dtype == want[k].dtype, (sub, k)
            assert torch.equal(v, want[k]), (sub, k)


def test_weights_variant_prefers_plain_files(tmp_path):
    d = tmp_path / "unet"
    d.mkdir()
    assert weights_variant(d) is None  # empty: the loader's own error
    (d / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert weights_variant(d) == "fp16"
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert weights_variant(d) is None  # both: the plain (fp32) file, as diffusers does
    e = tmp_path / "text_encoder"
    e.mkdir()
    (e / "model.safetensors.index.fp16.json").write_text("{}")
    (e / "model.fp16-00001-of-00002.safetensors").write_bytes(b"")
    assert weights_variant(e) == "fp16"
    assert SD15_SCHEDULER["clip_sample"] is False
