"""The offline text-to-image pretraining: recipe, training, export, resume, sampling, shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinyshot.diffusion.pretrain import (
    GENERIC_CAPTION,
    CaptionedImages,
    PretrainConfig,
    default_generator_path,
    eval_loss,
    fashion_mnist_recipe,
    folder_size_mb,
    load_generator,
    sample,
    sample_grid,
    train_generator,
)
from tinyshot.errors import ConfigError, DataError

# eps-MSE of the concept-known generator on its never-seen pool images (measured: 0.024)
POOL_LOSS_MAX = 0.1

TINY = {
    "image_size": 16,
    "block_out_channels": (16, 32),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "text_hidden_size": 16,
    "text_layers": 1,
    "text_heads": 2,
    "text_intermediate_size": 32,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup_steps": 2,
    "save_dtype": "float32",
}


def tiny_cfg(**kw) -> PretrainConfig:
    return PretrainConfig(**{**TINY, **kw})


def bars(n: int = 256) -> CaptionedImages:
    """Two captioned classes of 16x16 grey images: a horizontal or a vertical bright bar."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, 16, 16), np.uint8)
    captions = []
    for i in range(n):
        pos = rng.integers(3, 13)
        if i % 2:
            images[i, pos - 1 : pos + 2, 2:14] = 255
            captions.append("a photo of a bar")
        else:
            images[i, 2:14, pos - 1 : pos + 2] = 255
            captions.append("a photo of a pole")
    return CaptionedImages(
        images, captions, "bars", {"class_captions": {"bar": "a photo of a bar"}}
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    data = bars()
    summary = train_generator(data, out, tiny_cfg(steps=30, checkpoint_every=10), command="test")
    return out, data, summary


def test_fashion_recipe_names_only_base_classes():
    from tinyshot.data.fashion_mnist import load_fashion_mnist
    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    ds = load_fashion_mnist("train")
    data = fashion_mnist_recipe()
    assert data.images.shape == (60000, 32, 32) and data.images.dtype == np.uint8
    # zero padding, pixels unchanged
    assert np.array_equal(data.images[:, 2:30, 2:30], ds.images.reshape(-1, 28, 28))
    assert data.images[:, :2].max() == 0 and data.images[:, :, 30:].max() == 0
    caps = np.array(data.captions)
    labels = np.asarray(ds.labels)
    assert set(caps[labels >= 5]) == {GENERIC_CAPTION}  # novel classes never named
    base_generic = (caps[labels < 5] == GENERIC_CAPTION).mean()
    assert abs(base_generic - 0.2) < 0.01
    assert data.info["novel_generic"] == 30000 and data.info["base_generic"] == 5981
    # no novel class name reaches the text encoder, not even as a sub-token ("t-shirt" -> shirt)
    tok = load_clip_tokenizer()
    used = {i for c in set(data.captions) for i in tok(c).input_ids}
    for name in ("sandal", "shirt", "sneaker", "bag", "boot", "ankle"):
        assert not set(tok(name).input_ids[1:-1]) & used, name
    for c in range(5):
        cap = data.info["class_captions"][ds.class_names[c]]
        assert set(caps[(labels == c)]) == {cap, GENERIC_CAPTION}


def test_training_lowers_loss_and_exports_diffusers_layout(trained):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    out, data, summary = trained
    model_dir = out / "model"
    assert summary["steps_done"] == 30
    assert {p.name for p in model_dir.iterdir()} == {
        "unet",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "tinyshot.json",
    }  # fmt: skip; no vae/: pixel space
    info = json.loads((model_dir / "tinyshot.json").read_text())
    assert info["pixel_space"] is True and info["image_size"] == 16
    assert info["train"]["command"] == "test" and info["train"]["seed"] == 0
    # the exported EMA weights are loaded bit-exactly by the libraries' own loaders
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    text = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    for prefix, module in (("ema_unet.", unet), ("ema_text_encoder.", text)):
        for k, v in module.state_dict().items():
            assert v.dtype == torch.float32
            assert torch.equal(v, ckpt[prefix + k]), k
    sched = DDIMScheduler.from_pretrained(model_dir / "scheduler")
    assert sched.config.steps_offset == 1 and sched.config.set_alpha_to_one is False
    assert text.config.pad_token_id == 49407 and text.config.eos_token_id == 49407
    # the trained model predicts noise much better than the random init it started from
    trained_loss = eval_loss(model_dir, data, n=64)
    torch.manual_seed(0)
    fresh = tmp_untrained(out.parent / "untrained", data)
    assert trained_loss < 0.6 * eval_loss(fresh, data, n=64), trained_loss


def tmp_untrained(path, data):
    train_generator(data, path, tiny_cfg(steps=1, lr=1e-12, warmup_steps=1))
    return path / "model"


def test_resume_is_bit_exact(trained, tmp_path):
    out, data, _ = trained
    cfg = tiny_cfg(steps=30, checkpoint_every=10)
    part = train_generator(data, tmp_path, cfg, stop_after=13)  # as if killed after step 13
    assert part["steps_done"] == 13 and not (tmp_path / "model").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train_generator(data, tmp_path, cfg)
    with pytest.raises(ConfigError, match="lr"):
        train_generator(data, tmp_path, tiny_cfg(steps=30, lr=1e-3), resume=True)
    train_generator(data, tmp_path, cfg, resume=True)
    for sub, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        a = load_file(out / "model" / sub / f"{name}.safetensors")
        b = load_file(tmp_path / "model" / sub / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def test_warm_start_continues_from_a_model_folder(trained, tmp_path):
    """A second phase starts from the first one's exported weights (not from random init),
    keeps the first phase's record, and a resume with another init folder is refused."""
    out, data, first = trained
    cfg = tiny_cfg(steps=6, checkpoint_every=2, init_from=str(out / "model"), seed=1)
    models = load_generator(out / "model")
    before = eval_loss(None, data, n=64, models=models)
    part = train_generator(data, tmp_path / "p2", cfg, stop_after=2)
    assert part["steps_done"] == 2
    with pytest.raises(ConfigError, match="init_from"):
        train_generator(data, tmp_path / "p2", tiny_cfg(steps=6, checkpoint_every=2, seed=1),
                        resume=True)  # fmt: skip
    summary = train_generator(data, tmp_path / "p2", cfg, resume=True)
    assert summary["init_from_train"]["steps_done"] == first["steps_done"] == 30
    assert summary["train_seconds_all_phases"] > summary["train_seconds"]
    after = eval_loss(tmp_path / "p2" / "model", data, n=64)
    fresh = train_generator(data, tmp_path / "cold", tiny_cfg(steps=6, seed=1))
    cold = eval_loss(tmp_path / "cold" / "model", data, n=64)
    assert fresh["steps_done"] == 6
    assert after < 0.5 * cold and after < 1.5 * before  # it kept what phase one learned
    info = json.loads((tmp_path / "p2" / "model" / "tinyshot.json").read_text())
    assert info["train"]["config"]["init_from"] == str(out / "model")
    with pytest.raises(ConfigError, match="cannot start from this model"):
        train_generator(data, tmp_path / "bad", tiny_cfg(steps=2, init_from=str(tmp_path)))


def test_fp16_storage_loads_as_fp32(trained, tmp_path):
    from tinyshot.diffusion.pretrain import export_model_folder

    out, data, summary = trained
    unet32, text32, tok, _, _ = load_generator(out / "model")

    class M:  # export takes the EMA modules of the trainer
        ema_unet, ema_text_encoder = unet32, text32

    cfg = tiny_cfg(save_dtype="float16")
    d = export_model_folder(M, tok, cfg, data, tmp_path / "m16", summary)
    _, text16, *_ = load_generator(d)
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    assert UNet2DConditionModel.from_pretrained(d / "unet").dtype == torch.float32
    assert CLIPTextModel.from_pretrained(d / "text_encoder").dtype == torch.float32
    w32, w16 = text32.get_input_embeddings().weight, text16.get_input_embeddings().weight
    assert torch.equal(w16, w32.half().float())
    assert folder_size_mb(d) < folder_size_mb(out / "model")


def test_sample_grid_is_seeded(trained):
    out, _, _ = trained
    caps = ["a photo of a bar", "a photo of a pole", ""]
    a = sample_grid(out / "model", caps, n_per_caption=3, steps=3, guidance=3.0, seed=5)
    b = sample_grid(out / "model", caps, n_per_caption=3, steps=3, guidance=3.0, seed=5)
    c = sample_grid(out / "model", caps, n_per_caption=3, steps=3, guidance=3.0, seed=6)
    assert a.size == (2 * (3 * 18 + 2), 2 * (3 * 18 + 2))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_bad_inputs_are_named():
    with pytest.raises(DataError, match="captions"):
        CaptionedImages(np.zeros((3, 8, 8), np.uint8), ["a"], "x")
    with pytest.raises(DataError, match="uint8"):
        CaptionedImages(np.zeros((3, 8, 8), np.float32), ["a"] * 3, "x")
    with pytest.raises(ConfigError, match="image_size"):
        PretrainConfig(image_size=30)
    with pytest.raises(ConfigError, match="offset_noise"):
        PretrainConfig(offset_noise=-0.1)


def test_offset_noise_statistics():
    """Per-image channel means get variance offset^2 + 1/(H W); plain noise is untouched."""
    from tinyshot.diffusion.pretrain.train import training_noise

    shape = torch.Size((4000, 3, 16, 16))
    plain = training_noise(shape, torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    for offset in (0.1, 0.3):
        noise = training_noise(shape, torch.Generator().manual_seed(0), offset)
        # the pixel noise is the plain stream; the offset comes after it
        assert torch.allclose(noise - noise.mean((2, 3), keepdim=True),
                              plain - plain.mean((2, 3), keepdim=True), atol=1e-5)  # fmt: skip
        var = noise.mean((2, 3)).var().item()
        expected = offset**2 + 1 / 256
        assert abs(var - expected) / expected < 0.06  # 12000 samples: sd of the ratio ~1.3%


def test_cli_defaults_match_config():
    from tinyshot.cli import build_parser

    args = build_parser().parse_args(["pretrain-generator", "--out", "x"])
    d = PretrainConfig()
    assert (args.steps, args.batch_size, args.seed) == (d.steps, d.batch_size, d.seed)
    assert args.offset_noise == d.offset_noise == 0.0
    assert args.dataset == "fashion-mnist"


def test_shipped_generator():
    """The shipped weights: within budget, load in fp32, and denoise Fashion-MNIST test images."""
    d = default_generator_path()
    if not (d / "unet").is_dir():
        pytest.skip("shipped generator weights not present")
    assert folder_size_mb(d) <= 20.0
    models = load_generator(d)
    unet, text, _, _, info = models
    assert unet.dtype == torch.float32 and text.dtype == torch.float32
    assert info["pixel_space"] and info["image_size"] == 32
    # held-out images under their captions: a trained model's eps-MSE is far below 1 (random init)
    from tinyshot.data.fashion_mnist import load_fashion_mnist
    from tinyshot.diffusion.pretrain import CAPTION_TEMPLATE, FASHION_BASE_WORDS, pad_to

    test = load_fashion_mnist("test")
    keep = np.flatnonzero(np.asarray(test.labels) < 5)[:64]
    caps = [CAPTION_TEMPLATE.format(FASHION_BASE_WORDS[int(y)]) for y in test.labels[keep]]
    data = CaptionedImages(pad_to(test.images[keep], 32), caps, "fashion-test")
    assert eval_loss(d, data, n=64, models=models) < 0.1
    x = sample(d, ["a photo of a trouser"], n_per_caption=1, steps=2, models=models)
    assert x.shape == (1, 3, 32, 32)


def test_shipped_glyphs_generator_denoises_unseen_scripts():
    """The Glyphs generator saw only background scripts; evaluation-script glyphs under the
    generic caption must still denoise well (measured 0.023; the Fashion-MNIST model: 0.22)."""
    d = default_generator_path("glyphs")
    if not (d / "unet").is_dir():
        pytest.skip("shipped generator weights not present")
    assert folder_size_mb(d) <= 20.0
    from tinyshot.data.glyphs import load_glyphs
    from tinyshot.diffusion.pretrain import GENERIC_CAPTION
    from tinyshot.diffusion.pretrain.recipes.glyphs import generator_images

    models = load_generator(d)
    info = models[-1]
    assert info["data"]["split"] == "background" and info["pixel_space"]
    ev = load_glyphs("evaluation")
    assert not set(info["data"]["scripts"]) & {c.split("/")[0] for c in ev.class_names}
    images = generator_images(ev.images)
    data = CaptionedImages(images, [GENERIC_CAPTION] * len(images), "glyphs-evaluation")
    assert eval_loss(d, data, n=64, models=models) < 0.05


def test_shipped_concept_known_generator():
    """Knows all ten names, never saw the support pool, and its recorded fidelity is real."""
    d = default_generator_path("fashion-mnist-known")
    if not (d / "unet").is_dir():
        pytest.skip("shipped generator weights not present")
    from tinyshot.data.fashion_mnist import heldout_pool, load_fashion_mnist, pool_checksum
    from tinyshot.diffusion.pretrain import CAPTION_TEMPLATE, FASHION_NOVEL_WORDS, pad_to
    from tinyshot.evaluation.fidelity import class_fidelity, generator_sampler, load_judge

    assert folder_size_mb(d) <= 20.0
    models = load_generator(d)
    info = models[-1]
    assert info["recipe"] == "fashion-mnist-known" and len(info["class_captions"]) == 10
    # two phases: 1700 plain steps, then 1500 with offset noise from those weights
    assert info["train"]["init_from_train"]["steps_done"] == 1700
    assert info["train"]["config"]["offset_noise"] == 0.1
    assert info["train"]["steps_done"] == 1500
    train = load_fashion_mnist("train")
    pool = heldout_pool(train.labels)
    assert info["data"]["heldout_pool"]["sha256_16"] == pool_checksum(pool)
    # never-seen pool images of the novel classes denoise well under their class captions
    keep = pool[:: len(pool) // 64][:64]
    caps = [CAPTION_TEMPLATE.format(FASHION_NOVEL_WORDS[int(y)]) for y in train.labels[keep]]
    data = CaptionedImages(pad_to(train.images[keep], 32), caps, "fashion-pool")
    assert eval_loss(d, data, n=64, models=models) < POOL_LOSS_MAX
    # the recorded fidelity (50 per class) is what a fresh small sample shows, within noise
    recorded = info["fidelity"]["by_guidance"]["3"]
    judge, jinfo = load_judge("fashion-mnist")
    novel = {c: info["class_captions"][c] for c in ("Trouser", "Bag", "Sneaker")}
    steps = info["fidelity"]["steps"]
    res = class_fidelity(generator_sampler(d, steps, 3.0, seed=7), judge, novel,
                         jinfo["class_names"], n_per_class=10)  # fmt: skip
    want = np.mean([recorded["per_class"][c] for c in novel])
    assert abs(res["mean"] - want) <= 0.25


def test_unknown_shipped_generator_is_a_clear_error():
    with pytest.raises(ConfigError, match="no shipped generator 'mnist'"):
        default_generator_path("mnist")
