"""The Glyphs pretraining recipe: background scripts only, script captions, trainable."""

from __future__ import annotations

import numpy as np

from tinyshot.data.glyphs import load_glyphs
from tinyshot.diffusion.pretrain import GENERIC_CAPTION, PretrainConfig, eval_loss, train_generator
from tinyshot.diffusion.pretrain.recipes.glyphs import glyphs_recipe, script_word

OPTS = {"max_scripts": 6, "chars_per_script": 10, "samples_per_class": 3}


def test_recipe_sees_background_scripts_only(tmp_path):
    data = glyphs_recipe(image_size=16, generic_fraction=0.25, cache_dir=tmp_path, **OPTS)
    bg = load_glyphs("background", cache_dir=tmp_path, size=16, **OPTS)
    ev = load_glyphs("evaluation", cache_dir=tmp_path, size=16, **OPTS)
    assert len(data) == len(bg)
    bg_scripts = {n.split("/")[0] for n in bg.class_names}
    ev_scripts = {n.split("/")[0] for n in ev.class_names}
    assert ev_scripts and not ev_scripts & bg_scripts
    named = {c for c in data.captions if c != GENERIC_CAPTION}
    assert named == {f"a photo of a {script_word(s)}" for s in bg_scripts}
    assert not any(script_word(s) in c for s in ev_scripts for c in data.captions)
    share = np.mean([c == GENERIC_CAPTION for c in data.captions])
    assert 0.1 < share < 0.4
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (16, 16)
    assert data.images.mean() > 128  # dark glyphs on white


def test_glyph_generator_trains(tmp_path):
    data = glyphs_recipe(image_size=16, cache_dir=tmp_path / "cache", **OPTS)
    cfg = PretrainConfig(
        image_size=16,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        text_hidden_size=16,
        text_layers=1,
        text_heads=2,
        text_intermediate_size=32,
        batch_size=16,
        lr=2e-3,
        warmup_steps=2,
        save_dtype="float32",
        steps=30,
    )
    summary = train_generator(data, tmp_path / "run", cfg)
    assert summary["steps_done"] == 30
    # the same network after one step at a negligible learning rate: the random init
    fresh = PretrainConfig(**{**cfg.to_dict(), "steps": 1, "lr": 1e-12, "warmup_steps": 1})
    train_generator(data, tmp_path / "fresh", fresh)
    trained_loss = eval_loss(tmp_path / "run" / "model", data, n=64)
    assert trained_loss < 0.6 * eval_loss(tmp_path / "fresh" / "model", data, n=64), trained_loss
