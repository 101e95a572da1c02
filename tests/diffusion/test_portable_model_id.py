"""Run folders record the generator they were made with; a shipped generator is named by its
place in the package, so a run resumes from another checkout or environment (a benchmark
episode begun under one worktree once refused to resume under another)."""

from __future__ import annotations

import pytest

from tinyshot.diffusion.specialize import claim_folder
from tinyshot.diffusion.store import ImageStore
from tinyshot.errors import ConfigError
from tinyshot.utils.paths import portable_model_id, same_model

A = "/work/wt-bench/src/tinyshot/assets/generators/fashion-mnist"
B = "/opt/venv/lib/python3.12/site-packages/tinyshot/assets/generators/fashion-mnist"
KNOWN = "/opt/venv/lib/python3.12/site-packages/tinyshot/assets/generators/fashion-mnist-known"


def test_shipped_ids_compare_by_place_in_the_package():
    assert (
        portable_model_id(A) == portable_model_id(B) == "tinyshot-assets:generators/fashion-mnist"
    )
    assert portable_model_id(KNOWN) != portable_model_id(B)
    for own in ("/models/my-sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "tiny-x"):
        assert portable_model_id(own) == own  # a user's folder or hub id is its own identity
    assert same_model(A, B) and same_model(None, B) and not same_model(A, KNOWN)


def test_specialization_folder_resumes_from_a_moved_checkout(tmp_path):
    fp = {"class_names": ["Bag"], "model_id": A, "config": {"steps": 10}}
    claim_folder(tmp_path, fp)
    claim_folder(tmp_path, {**fp, "model_id": B})  # same shipped generator: accepted
    with pytest.raises(ConfigError, match="different model_id"):
        claim_folder(tmp_path, {**fp, "model_id": KNOWN})
    with pytest.raises(ConfigError, match="different model_id"):
        claim_folder(tmp_path, {**fp, "model_id": "/models/my-sd15"})


def test_image_store_resumes_from_a_moved_checkout(tmp_path):
    settings = {"method": "lora", "seed": 0, "model_id": A}
    ImageStore.create_or_resume(tmp_path / "s", settings)
    ImageStore.create_or_resume(tmp_path / "s", {**settings, "model_id": B})
    with pytest.raises(ConfigError, match="different model_id"):
        ImageStore.create_or_resume(tmp_path / "s", {**settings, "model_id": KNOWN})
