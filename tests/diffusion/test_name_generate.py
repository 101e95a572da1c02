"""The `name` baseline: fresh noise, "a photo of a {class name}", the empty-prompt null."""

from __future__ import annotations

import pytest
import torch

import tinyshot.diffusion.generate as gen_mod
from tinyshot.diffusion.generate import generate, generate_from_names, name_prompt
from tinyshot.diffusion.model import build_tiny_diffusion_model
from tinyshot.diffusion.store import ImageStore
from tinyshot.errors import ConfigError
from tinyshot.pipeline.config import PipelineConfig


@pytest.fixture(scope="module")
def model():
    return build_tiny_diffusion_model(pixel_space=True, image_size=16, seed=0)


def _pixels(store: ImageStore) -> dict[tuple[int, int], bytes]:
    return {(it.class_index, int(it.path.stem)): it.path.read_bytes() for it in store.items()}


def test_prompts_are_class_names_or_the_models_own_captions(model, monkeypatch):
    assert name_prompt(model, "ankle_boot") == "a photo of a ankle boot"
    assert name_prompt(model, "  Sandal ") == "a photo of a Sandal"
    monkeypatch.setattr(model, "class_captions", {"T-shirt/top": "a photo of a tshirt"})
    assert name_prompt(model, "T-shirt/top") == "a photo of a tshirt"
    with pytest.raises(ConfigError, match="no words"):
        name_prompt(model, " _ ")


def test_sampling_uses_the_name_prompt_and_the_empty_null(model, tmp_path, monkeypatch):
    seen = []
    real = gen_mod.ddim_sample

    def spy(m, z, cond, uncond_at, sched, guidance, start=None):
        rows = torch.arange(len(z))
        seen.append((cond.clone(), uncond_at(0, rows).clone(), uncond_at(2, rows).clone(), z))
        return real(m, z, cond, uncond_at, sched, guidance, start=start)

    monkeypatch.setattr(gen_mod, "ddim_sample", spy)
    store = generate_from_names(
        model,
        ["sandal", "ankle_boot"],
        n_per_class=2,
        out_dir=tmp_path / "s",
        batch_size=4,
        steps=3,
        guidance=2.0,
        seed=1,
    )
    assert len(store) == 4 and len(seen) == 1
    cond, null0, null2, z = seen[0]
    with torch.no_grad():
        want = model.encode_text(["a photo of a sandal", "a photo of a ankle boot"])
    # items are index-major: (class 0, 0), (class 1, 0), (class 0, 1), (class 1, 1)
    assert torch.allclose(cond, want[[0, 1, 0, 1]])
    empty = model.empty_embedding().expand(4, -1, -1)
    assert torch.equal(null0, empty) and torch.equal(null2, empty)
    # fresh noise: the same draw as TI's image of the same index (method-independent)
    noise = gen_mod.item_draws(1, 1, 0, 1, model.latent_shape)[2]
    assert torch.equal(z[1].cpu(), noise)
    assert torch.equal(noise, gen_mod.item_draws(1, 1, 0, 5, model.latent_shape)[2])
    settings = ImageStore(tmp_path / "s").settings
    assert settings["method"] == "name"
    assert settings["prompts"] == ["a photo of a sandal", "a photo of a ankle boot"]


def test_name_images_resume_and_grow_like_the_others(model, tmp_path):
    kw = dict(steps=2, guidance=2.0, seed=3, batch_size=1)
    full = generate_from_names(model, ["a", "b"], n_per_class=3, out_dir=tmp_path / "f", **kw)
    part = generate_from_names(model, ["a", "b"], n_per_class=1, out_dir=tmp_path / "p", **kw)
    assert len(part) == 2
    grown = generate_from_names(model, ["a", "b"], n_per_class=3, out_dir=tmp_path / "p", **kw)
    assert len(grown) == 6 and _pixels(grown) == _pixels(full)
    # another prompt list in the same folder is refused, not mixed
    with pytest.raises(ConfigError):
        generate_from_names(model, ["a", "c"], n_per_class=3, out_dir=tmp_path / "p", **kw)
    with pytest.raises(ConfigError, match="duplicate"):
        generate_from_names(model, ["a", "a"], out_dir=tmp_path / "d", **kw)


def test_generate_method_name_needs_only_the_artifacts_class_names(tint_specialized, tmp_path):
    s = tint_specialized
    a = generate(s.model, s.artifacts, "name", n_per_class=2, out_dir=tmp_path / "a", seed=2)
    b = generate_from_names(
        s.model,
        [x.class_name for x in s.artifacts],
        n_per_class=2,
        out_dir=tmp_path / "b",
        seed=2,
        batch_size=16,
        guidance=s.artifacts[0].guidance,
        steps=s.artifacts[0].num_inference_steps,
        timestep_spacing=s.artifacts[0].timestep_spacing,
    )
    assert len(a) == 2 * len(s.artifacts) and _pixels(a) == _pixels(b)


def test_sampling_at_untested_step_counts_warns(model, tmp_path, monkeypatch, caplog):
    """The shipped generators record the DDIM steps of their fidelity check; sampling at
    another count (where a small generator may not draw its classes) says so in the log."""
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.diffusion.pretrain import default_generator_path

    shipped = load_diffusion_model(default_generator_path("fashion-mnist-known"), device="cpu")
    assert (
        shipped.fidelity_record["steps"] == 6 == PipelineConfig().specialize["num_inference_steps"]
    )
    assert gen_mod.warn_untested_steps(shipped, 6) is None
    msg = gen_mod.warn_untested_steps(shipped, 25)
    assert msg is not None and "25 DDIM steps" in msg and "measured at 6" in msg
    assert gen_mod.warn_untested_steps(model, 25) is None  # no record: nothing to compare
    monkeypatch.setattr(model, "fidelity_record", {"steps": 2})
    with caplog.at_level("WARNING"):
        generate_from_names(model, ["a", "b"], n_per_class=1, out_dir=tmp_path, steps=3)
    assert any("measured at 2 steps" in r.getMessage() for r in caplog.records)


def test_images_are_saved_under_class_name_folders(model, tmp_path):
    kw = dict(steps=2, guidance=2.0, seed=3, batch_size=2)
    names = ["T-shirt/top", "Dress", "dress"]
    store = generate_from_names(model, names, n_per_class=1, out_dir=tmp_path / "s", **kw)
    folders = sorted(p.name for p in (tmp_path / "s" / "images").iterdir())
    assert folders == ["Dress", "T-shirt_top", "dress-2"]  # "/" made safe; a case clash split
    assert [it.path.parent.name for it in store.items()] == ["T-shirt_top", "Dress", "dress-2"]


def test_a_store_begun_in_numbered_folders_resumes_in_them(model, tmp_path):
    kw = dict(steps=2, guidance=2.0, seed=3, batch_size=1)
    root = tmp_path / "s"
    part = generate_from_names(model, ["a", "b"], n_per_class=1, out_dir=root, **kw)
    for it in part.items():  # the layout before class-name folders: images/000/000000.png
        numbered = root / "images" / f"{it.class_index:03d}" / it.path.name
        numbered.parent.mkdir()
        it.path.rename(numbered)
    manifest = root / "manifest.jsonl"
    text = manifest.read_text().replace('"images/a/', '"images/000/')
    manifest.write_text(text.replace('"images/b/', '"images/001/'))
    grown = generate_from_names(model, ["a", "b"], n_per_class=2, out_dir=root, **kw)
    assert [str(it.path.relative_to(root)) for it in grown.items()] == [
        "images/000/000000.png",
        "images/000/000001.png",
        "images/001/000000.png",
        "images/001/000001.png",
    ]
