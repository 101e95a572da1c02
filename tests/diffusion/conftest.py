"""Fixtures for the TINT generator tests: a tiny SD-architecture model, briefly trained as a
denoiser on a synthetic episode (a random UNet is no denoiser, so DDIM inversion would not
mean anything), and one specialization of that episode shared by several tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tinyshot.data.transforms import images_to_tensor
from tinyshot.diffusion.bench import synthetic_episode
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.model import DiffusionModel, build_tiny_diffusion_model
from tinyshot.diffusion.specialize import specialize

TINT_CLASSES = 2
TINT_SHOTS = 2


def train_denoiser(
    model: DiffusionModel, images: list, labels: list[int], names: list[str], steps: int = 40
) -> DiffusionModel:
    """A few AdamW steps of the standard diffusion loss with class captions (30 % dropped to
    the empty prompt, so that CFG has an unconditional branch to contrast with)."""
    z0 = model.encode(images_to_tensor(images))
    with torch.no_grad():
        caps = model.encode_text([f"a photo of a {n}" for n in names])
        empty = model.empty_embedding()
    lab = torch.tensor(labels)
    unet = model.unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(z0), (12,), generator=g)
        t = torch.randint(0, 1000, (12,), generator=g)
        noise = torch.randn(z0[idx].shape, generator=g)
        zt = model.scheduler.add_noise(z0[idx], noise, t)
        drop = torch.rand(12, generator=g) < 0.3
        c = torch.where(drop[:, None, None], empty, caps[lab[idx]])
        loss = ((unet(zt, t, encoder_hidden_states=c).sample - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval().requires_grad_(False)
    model._empty = None
    return model


@pytest.fixture(scope="session")
def tint_episode():
    return synthetic_episode(TINT_CLASSES, TINT_SHOTS, size=32, seed=0)


@pytest.fixture(scope="session")
def tint_trained_model(tint_episode) -> DiffusionModel:
    images, names = tint_episode
    flat = [im for cls in images for im in cls]
    labels = [c for c, cls in enumerate(images) for _ in cls]
    return train_denoiser(build_tiny_diffusion_model(), flat, labels, names)


@dataclass
class Specialized:
    model: DiffusionModel
    artifacts: list
    out_dir: Path
    config: SpecializeConfig
    images: list
    names: list[str]
    rows_before: torch.Tensor


# The tiny model's text pathway is weak, so NTI needs a larger step than SD's 1e-2 to steer it.
TINY_CONFIG = dict(
    ti_steps=60,
    ti_lr=5e-2,
    ti_batch_size=2,
    num_inference_steps=10,
    nti_inner_steps=10,
    nti_lr=0.1,
    upscale="bilinear",
    seed=0,
)


@pytest.fixture(scope="session")
def tint_specialized(tint_trained_model, tint_episode, tmp_path_factory) -> Specialized:
    images, names = tint_episode
    model = tint_trained_model
    rows_before = model.text_encoder.get_input_embeddings().weight[:49408].detach().clone()
    cfg = SpecializeConfig(**TINY_CONFIG)
    out = tmp_path_factory.mktemp("tint") / "spec"
    arts = specialize(model, images, names, cfg, out, show_progress=False)
    return Specialized(model, arts, out, cfg, images, names, rows_before)


@pytest.fixture
def interrupt_second_call(monkeypatch):
    """install(module, name): module.name raises KeyboardInterrupt on its second call (a kill
    in the middle of a stage); returns (the real function, the call counter)."""

    def install(module, name):
        real = getattr(module, name)
        calls = {"n": 0}

        def dies_second_time(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(module, name, dies_second_time)
        return real, calls

    return install


@pytest.fixture
def dies_at(monkeypatch):
    """install(module, name, call): module.name raises KeyboardInterrupt on its call-th call
    (1-based): a kill in the middle of a stage; returns the real function."""

    def install(module, name, call):
        real = getattr(module, name)
        calls = {"n": 0}

        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapped)
        return real

    return install
