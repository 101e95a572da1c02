"""Resume at the item: TI checkpoints by step fraction, by time and on interrupt, and resumes
bit-exactly; inversion batches are kept as each finishes, and a resumed specialization equals
an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from tinyshot.diffusion import specialize as spec_mod
from tinyshot.diffusion import textual_inversion as ti_mod
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.model import build_tiny_diffusion_model
from tinyshot.diffusion.specialize import specialize
from tinyshot.diffusion.textual_inversion import checkpoint_every_steps, train_tokens
from tinyshot.errors import TrainingError

TEMPLATE = "a photo of an {}"


def _latents():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)]


def test_default_checkpoint_interval_is_a_tenth_of_the_run():
    assert checkpoint_every_steps(SpecializeConfig(ti_steps=150)) == 15
    assert checkpoint_every_steps(SpecializeConfig(ti_steps=5000)) == 500
    assert checkpoint_every_steps(SpecializeConfig(ti_steps=7)) == 1
    assert checkpoint_every_steps(SpecializeConfig(ti_steps=150, ti_checkpoint_every=40)) == 40


def test_ti_checkpoints_by_time_and_resumes_bit_exact(tmp_path, monkeypatch, dies_at):
    m = build_tiny_diffusion_model(seed=6)
    lat = _latents()
    # never by steps, always by time: a checkpoint after every step
    cfg = SpecializeConfig(
        ti_steps=6,
        ti_lr=1e-2,
        ti_batch_size=2,
        ti_checkpoint_every=1000,
        ti_checkpoint_seconds=1e-9,
    )
    full = train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "a.pt")
    real = dies_at(ti_mod, "diffusion_loss", 4)  # inside step index 3
    with pytest.raises(KeyboardInterrupt):
        train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "b.pt")
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["step"] == 3 and "rng" in state
    monkeypatch.setattr(ti_mod, "diffusion_loss", real)
    torch.manual_seed(123)  # another global RNG state: the resume restores the saved one
    resumed = train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "b.pt")
    assert torch.equal(full, resumed)


def test_ti_interrupt_between_steps_keeps_the_last_step(tmp_path, monkeypatch, dies_at):
    m = build_tiny_diffusion_model(seed=6)
    lat = _latents()
    # no checkpoint by steps or time during the run: only the interrupt writes one
    cfg = SpecializeConfig(
        ti_steps=6, ti_lr=1e-2, ti_batch_size=2, ti_checkpoint_every=1000, ti_checkpoint_seconds=1e9
    )
    full = train_tokens(m, lat, TEMPLATE, cfg)
    real = dies_at(ti_mod, "_draw", 5)  # at the start of step index 4: 4 steps done
    with pytest.raises(KeyboardInterrupt):
        train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(ti_mod, "_draw", real)
    calls = {"n": 0}

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(ti_mod, "_draw", counting)
    resumed = train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "c.pt")
    assert calls["n"] == 2  # only steps 5 and 6 were run again
    assert torch.equal(full, resumed)


def test_ti_interrupt_inside_the_optimizer_step_writes_nothing(tmp_path, monkeypatch):
    """A half-applied update must not be saved: the previous checkpoint stays."""
    m = build_tiny_diffusion_model(seed=6)
    cfg = SpecializeConfig(ti_steps=6, ti_lr=1e-2, ti_checkpoint_every=2, ti_checkpoint_seconds=1e9)
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train_tokens(m, _latents(), TEMPLATE, cfg, state_path=tmp_path / "d.pt")
    assert torch.load(tmp_path / "d.pt", weights_only=True)["step"] == 2


def test_nti_keeps_each_finished_batch_and_resume_equals_uninterrupted(
    tmp_path, tint_episode, monkeypatch, interrupt_second_call
):
    images, names = tint_episode  # 2 classes x 2 images
    m = build_tiny_diffusion_model(seed=5)
    cfg = SpecializeConfig(
        ti_steps=2,
        num_inference_steps=3,
        nti_inner_steps=2,
        nti_lr=0.1,
        nti_early_stop=0.0,
        inversion_batch_size=3,  # batches [c0 k0, c0 k1, c1 k0] and [c1 k1]: across classes
        upscale="bilinear",
    )
    full = specialize(m, images, names, cfg, tmp_path / "full", show_progress=False)
    assert not (tmp_path / "full" / "inversion").exists()  # batches removed once all is saved

    real, _ = interrupt_second_call(spec_mod, "null_text_inversion")
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        specialize(m, images, names, cfg, out, show_progress=False)
    # the first batch is kept: class 0 is finished, class 1 has one of its images inverted
    assert (out / "0.json").is_file() and not (out / "1.json").exists()
    assert (out / "inversion" / "0000.safetensors").is_file()
    assert not (out / "inversion" / "0001.safetensors").exists()
    sizes = []

    def counting(model, z0, *a, **k):
        sizes.append(len(z0))
        return real(model, z0, *a, **k)

    monkeypatch.setattr(spec_mod, "null_text_inversion", counting)
    resumed = specialize(m, images, names, cfg, out, show_progress=False)
    assert sizes == [1]  # only the unfinished batch (one image) ran again
    assert not (out / "inversion").exists()
    for a, b in zip(full, resumed):
        for key in ("token_embedding", "z_T", "null_embeddings"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        assert a.meta["stats"]["inversion_recon_mse"] == b.meta["stats"]["inversion_recon_mse"]
        assert a.meta["timing"]["inversion_batch_images"] == 3


def test_checkpoint_cadence_is_not_part_of_the_fingerprint(tmp_path, tint_episode):
    images, names = tint_episode
    m = build_tiny_diffusion_model(seed=5)
    cfg = SpecializeConfig(ti_steps=1, num_inference_steps=2, inversion="npi", upscale="bilinear")
    specialize(m, images, names, cfg, tmp_path / "s", show_progress=False)
    other = SpecializeConfig(**{**cfg.to_dict(), "ti_checkpoint_seconds": 5.0})
    arts = specialize(m, images, names, other, tmp_path / "s", show_progress=False)
    assert len(arts) == 2


def test_fp16_ti_resumes_bit_exact_with_the_loss_scale(tmp_path, monkeypatch, dies_at):
    """The scaler's state is in the checkpoint: an fp16 run whose scale backs off before the
    interrupt resumes to the same vectors as an uninterrupted one."""
    m = build_tiny_diffusion_model(seed=6, dtype="fp16")
    lat = _latents()
    cfg = SpecializeConfig(
        ti_steps=6, ti_lr=1e-2, ti_batch_size=2, ti_checkpoint_every=1000, ti_checkpoint_seconds=0
    )
    scalers = []
    real_init = ti_mod.LossScaler.__init__

    def huge_scale(self, scale=1.0, **kw):  # overflows at first: steps are skipped, backing off
        real_init(self, 2.0**40 if scale != 1.0 else scale, **kw)
        scalers.append(self)

    monkeypatch.setattr(ti_mod.LossScaler, "__init__", huge_scale)
    full = train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "a.pt")
    assert scalers[0].skipped > 0 and scalers[0].scale < 2.0**40
    real = dies_at(ti_mod, "diffusion_loss", 4)
    with pytest.raises(KeyboardInterrupt):
        train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "b.pt")
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["step"] == 3 and state["scaler"]["scale"] < 2.0**40
    monkeypatch.setattr(ti_mod, "diffusion_loss", real)
    resumed = train_tokens(m, lat, TEMPLATE, cfg, state_path=tmp_path / "b.pt")
    assert torch.equal(full, resumed)
    assert scalers[-1].state_dict() == scalers[0].state_dict()


@pytest.mark.parametrize("every_step", [True, False])
def test_ti_divergence_is_caught_at_the_next_read_and_never_checkpointed(
    tmp_path, monkeypatch, every_step
):
    """Losses are read every few steps (and before each checkpoint), not every step: a
    non-finite one still ends the run with its step, and no checkpoint after it is written."""
    m = build_tiny_diffusion_model(seed=6)
    cfg = SpecializeConfig(
        ti_steps=200,  # logs every 20 steps: the losses are read every 10
        ti_lr=1e-2,
        ti_batch_size=2,
        ti_checkpoint_every=1000,
        ti_checkpoint_seconds=0 if every_step else 1e9,
    )
    real = ti_mod.diffusion_loss
    calls = {"n": 0}

    def nan_at_step_4(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(ti_mod, "diffusion_loss", nan_at_step_4)
    with pytest.raises(TrainingError, match="diverged at step 4"):
        train_tokens(m, _latents(), TEMPLATE, cfg, state_path=tmp_path / "e.pt")
    if every_step:
        state = torch.load(tmp_path / "e.pt", weights_only=True)
        assert state["step"] == 4 and torch.isfinite(state["vectors"]).all()
    else:  # read at step 10 (ti_mod.LOSS_READ_EVERY), not before
        assert calls["n"] == ti_mod.LOSS_READ_EVERY and not (tmp_path / "e.pt").exists()
