"""SD 1.5 / DINO ViT-B/16 architectures: exact full-size parameter counts (meta device, nothing
allocated), reduced-width models in every on-disk layout users have, and the sd15 bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tinyshot.cli import main
from tinyshot.diffusion.model import build_sd15_model, load_diffusion_model, save_sd15_folder
from tinyshot.diffusion.sd15 import (
    PUBLISHED_PARAMS,
    SD15_TEXT_ENCODER,
    SD15_UNET,
    SD15_VAE,
    count_parameters,
    save_dino_folder,
    sd15_configs,
    write_sd15_config_folder,
)
from tinyshot.errors import ModelError

sys.path.insert(0, str(Path(__file__).parent))
from ldm_format import to_ldm_checkpoint

W, LATENT = 10, 8  # reduced widths, 64 px images: the same blocks, heads and layers as SD 1.5


def test_full_size_parameter_counts_match_the_published_models():
    counts = count_parameters()
    assert counts == {
        "unet": 859_520_964,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "dino_vitb16": 85_798_656,
    }
    assert counts == PUBLISHED_PARAMS


def test_published_config_values():
    assert SD15_UNET["block_out_channels"] == [320, 640, 1280, 1280]
    assert (SD15_UNET["layers_per_block"], SD15_UNET["cross_attention_dim"]) == (2, 768)
    assert (SD15_UNET["attention_head_dim"], SD15_UNET["sample_size"]) == (8, 64)
    assert SD15_VAE["block_out_channels"] == [128, 256, 512, 512]
    assert (SD15_VAE["latent_channels"], SD15_VAE["scaling_factor"]) == (4, 0.18215)
    t = SD15_TEXT_ENCODER
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"]) == (768, 12, 12)
    assert (t["intermediate_size"], t["max_position_embeddings"]) == (3072, 77)
    assert t["hidden_act"] == "quick_gelu"
    sched = sd15_configs()["scheduler"]
    assert sched["clip_sample"] is False and sched["beta_schedule"] == "scaled_linear"
    assert (sched["beta_start"], sched["beta_end"]) == (0.00085, 0.012)


def test_config_folder_is_what_diffusers_reads(tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    folder = write_sd15_config_folder(tmp_path / "cfg")
    index = StableDiffusionPipeline.load_config(folder)
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
    assert list(unet_cfg["block_out_channels"]) == [320, 640, 1280, 1280]
    assert not any(p.suffix in (".safetensors", ".bin") for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def reduced():
    return build_sd15_model(width_divisor=W, sample_size=LATENT, seed=3)


def _same_weights(a, b) -> bool:
    pairs = [(a.unet, b.unet), (a.vae, b.vae), (a.text_encoder, b.text_encoder)]
    return all(
        set(x.state_dict()) == set(y.state_dict())
        and all(torch.equal(v, y.state_dict()[k]) for k, v in x.state_dict().items())
        for x, y in pairs
    )


def _probe(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, *model.latent_shape, generator=g)
    with torch.no_grad():
        return model.eps(z, torch.tensor(500), model.encode_text(["a photo of an object"]))


def test_reduced_model_keeps_the_sd15_geometry(reduced):
    assert reduced.resolution == 64 and reduced.latent_shape == (4, 8, 8)
    assert len(reduced.tokenizer) == 49408
    assert len(reduced.unet.down_blocks) == 4 and reduced.unet.config.layers_per_block == 2
    assert reduced.vae.config.scaling_factor == 0.18215


def test_full_diffusers_folder_ignores_safety_checker(reduced, tmp_path):
    folder = save_sd15_folder(tmp_path / "sd", width_divisor=W, sample_size=LATENT, seed=3)
    assert not (folder / "tinyshot.json").exists()  # exactly the hub layout
    # What a hub snapshot also has: a safety checker and a feature extractor, never loaded.
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "config.json").write_text('{"model_type": "clip"}')
    (folder / "feature_extractor").mkdir()
    (folder / "feature_extractor" / "preprocessor_config.json").write_text("{}")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        feature_extractor=["transformers", "CLIPImageProcessor"],
        requires_safety_checker=True,
    )
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = load_diffusion_model(folder)
    assert loaded.resolution == 64 and loaded.caption_template == reduced.caption_template
    assert _same_weights(loaded, reduced)
    assert torch.allclose(_probe(loaded), _probe(reduced), atol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint(reduced, tmp_path, suffix):
    sd = to_ldm_checkpoint(reduced)
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, path)
    else:
        torch.save({"state_dict": sd}, path)
    cfg = write_sd15_config_folder(tmp_path / "cfg", sd15_configs(W, LATENT))
    loaded = load_diffusion_model(path, single_file_config=cfg)
    assert loaded.resolution == 64
    assert _same_weights(loaded, reduced)
    assert torch.allclose(_probe(loaded), _probe(reduced), atol=1e-5)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded.encode(x), reduced.encode(x))


def test_single_file_that_is_not_sd(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match=r"cannot load as a Stable Diffusion 1\.x single-file"):
        load_diffusion_model(path, single_file_config=write_sd15_config_folder(tmp_path / "c"))


def test_wrong_folders_say_what_was_expected(tmp_path, reduced):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"expected a diffusers Stable Diffusion.*empty folder"):
        load_diffusion_model(tmp_path / "empty")
    reduced.unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(ModelError, match="UNet2DConditionModel: pass its parent folder"):
        load_diffusion_model(tmp_path / "unet")
    dino = save_dino_folder(tmp_path / "dino", width_divisor=W)
    with pytest.raises(ModelError, match="vit model folder, not a text-to-image pipeline"):
        load_diffusion_model(dino)


def test_dino_folder_is_a_teacher_backbone(tmp_path):
    from tinyshot.models.backbones import build_backbone

    folder = save_dino_folder(tmp_path / "dino", width_divisor=W)
    assert json.loads((folder / "preprocessor_config.json").read_text())["image_mean"][0] == 0.485
    bb = build_backbone(str(folder))
    assert bb.feature_dim == 64 and bb.patch_size == 8
    with torch.no_grad():
        assert bb(torch.rand(2, 3, 40, 40)).shape == (2, 64)
    with pytest.raises(ModelError, match="not a transformers model folder"):
        build_backbone(str(tmp_path))


def test_bench_generate_sd15_reduced(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "generate", "--arch", "sd15", "--width-divisor", str(W), "--latent-size",
            str(LATENT), "--classes", "2", "--shots", "1", "--ti-steps", "1", "--steps", "2",
            "--nti-inner-steps", "1", "--images", "2", "--batch-size", "2",
            "--reference-images", "1", "--lora-steps", "1", "--device", "cpu",
            "--json-out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "All-in per image" in text and "1.01 s on an A40" in text
    res = json.loads(out.read_text())
    assert res["params"] == count_parameters(W) and list(res["results"]) == ["fp32"]
    r = res["results"]["fp32"]
    rows = {row["step"].split(" (")[0]: row for row in r["rows"]}
    parts = ["Textual inversion", "Null-text inversion", "Generate, batched"]
    all_in = sum(rows[p]["per_generated_image_s"] for p in parts)
    assert rows["All-in per image"]["per_generated_image_s"] == pytest.approx(all_in)
    assert rows["All-in per image"]["paper_per_generated_image_s"] == 1.01
    # a LoRA step of 8 images (rank 16), amortised as DataDream's 400 steps per class
    lora = rows["LoRA training"]
    assert lora["per_unit_s"] > 0 and r["info"]["lora"]["batch"] == 8
    assert lora["per_generated_image_s"] == pytest.approx(lora["per_unit_s"] * 400 / 4000)
    # NTI amortised as the paper: 5 support images per class over 4000 generated images
    nti = rows["Null-text inversion"]
    assert nti["per_generated_image_s"] == pytest.approx(nti["per_unit_s"] * 5 / 4000)
    assert r["info"]["resolution"] == 64 and r["info"]["max_pixel_diff"] <= 2
    assert r["info"]["peak_memory_gb"]["generate"] is None  # CPU: no GPU memory figure


def test_bench_sd15_full_size_refuses_cpu(capsys):
    assert main(["bench", "generate", "--arch", "sd15", "--device", "cpu"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_bench_in_fp16_and_back(tmp_path):
    """The GPU dtype path on CPU: fp16 TI (loss-scaled) and NTI, fp16 batched generation, and
    the fp32 one-at-a-time reference on the same model, which ends as it started."""
    from tinyshot.diffusion.bench import as_fp32, run_generation_bench

    model = build_sd15_model(dtype="fp16", width_divisor=W, sample_size=LATENT, seed=5)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    res = run_generation_bench(
        model, classes=2, shots=1, ti_steps=1, steps=2, nti_inner_steps=1, images=2,
        batch_size=2, reference_images=1, support_size=28, workdir=tmp_path,
    )  # fmt: skip
    assert res.info["dtype"] == "float16" and model.dtype == torch.float16
    assert all(v.dtype == torch.float16 for v in model.unet.state_dict().values())
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())
    assert all(r["per_generated_image_s"] > 0 for r in res.rows)
    assert res.info["max_pixel_diff"] is not None and res.info["max_pixel_diff"] <= 16
    with as_fp32(model):
        assert model.unet.dtype == torch.float32 and model.vae.dtype == torch.float32
    assert model.unet.dtype == torch.float16
