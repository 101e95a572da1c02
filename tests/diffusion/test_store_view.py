"""StoreView: the store's images as each model sees them, read slice by slice; store_size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyshot.data.transforms import ImagePrep, frame_brightness
from tinyshot.diffusion.generate import generate
from tinyshot.diffusion.store import ImageStore, StoreView
from tinyshot.errors import ConfigError
from tinyshot.pipeline.synthetic import student_synthetic, teacher_synthetic

PAD = ImagePrep("pad", 32, 28, 0)


def _store(root, side: int, n: int = 7, store_size: int | None = None, seed: int = 0):
    settings = {"method": "test", "resolution": side, "class_names": ["a", "b"]}
    if store_size is not None:
        settings["store_size"] = store_size
    store = ImageStore.create_or_resume(root, settings)
    rng = np.random.default_rng(seed)
    arrs = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    recs = [
        {"class_index": i % 2, "index": i // 2, "seed": i, "path": f"images/{i:03d}.png"}
        for i in range(n)
    ]
    store.write(recs, list(arrs))
    return ImageStore(root), arrs


def test_views_equal_the_in_memory_preparation_slice_by_slice(tmp_path):
    store, _ = _store(tmp_path / "s", 32)
    x, y = store.load_tensor()
    teacher = StoreView(store, PAD, 24, "shrink")
    student = StoreView(store, PAD, 16, "exact")
    assert torch.equal(teacher[0:7], teacher_synthetic(x, PAD, 24))
    assert torch.equal(student[0:7], student_synthetic(x, PAD, 16))
    # slices and index tensors read the same images as the whole
    assert torch.equal(torch.cat([student[0:3], student[3:7]]), student[0:7])
    assert torch.equal(student[torch.tensor([6, 1])], student[0:7][[6, 1]])
    assert torch.equal(teacher.labels, y) and len(teacher) == 7
    assert tuple(StoreView(store, PAD, None)[0:2].shape) == (2, 3, 28, 28)  # frame cut, kept size


def test_source_id_follows_the_files_and_the_view(tmp_path):
    store, _ = _store(tmp_path / "s", 32)
    a = StoreView(store, PAD, 16, "exact").source_id()
    assert a == StoreView(ImageStore(tmp_path / "s"), PAD, 16, "exact").source_id()
    assert a != StoreView(store, PAD, 20, "exact").source_id()
    assert a != StoreView(store, PAD, 16, "shrink").source_id()
    other, _ = _store(tmp_path / "t", 32, seed=1)
    assert a != StoreView(other, PAD, 16, "exact").source_id()


def test_store_size_keeps_large_images_shrunk_and_the_frame_shrinks_with_them(tmp_path):
    # 64 px canvas, 56 px content on black: stored at 16 px, the view cuts a 14 px frame
    prep = ImagePrep("pad", 64, 56, 0)
    store = ImageStore.create_or_resume(tmp_path / "s", {"resolution": 64, "store_size": 16})
    canvas = np.zeros((64, 64, 3), dtype=np.uint8)
    canvas[4:60, 4:60] = 200
    store.write([{"class_index": 0, "index": 0, "seed": 0, "path": "images/0.png"}], [canvas])
    stored = store.load_tensor()[0]
    assert tuple(stored.shape) == (1, 3, 16, 16) and store.store_size == 16
    seen = StoreView(store, prep, None)[0:1]
    assert tuple(seen.shape) == (1, 3, 14, 14)
    # the kept frame is the content (200), the cut one mostly the black pad
    assert frame_brightness(seen, width=1) > 0.65 > 0.15 > frame_brightness(stored, width=1)
    assert prep.at_side(16) == ImagePrep("pad", 16, 14, 0)


def test_generation_records_store_size_only_when_it_shrinks(tint_specialized, tmp_path):
    s = tint_specialized  # a 32 px model
    kw = dict(n_per_class=2, batch_size=4, seed=0)
    small = generate(s.model, s.artifacts, "ti", out_dir=tmp_path / "a", store_size=16, **kw)
    full = generate(s.model, s.artifacts, "ti", out_dir=tmp_path / "b", store_size=64, **kw)
    assert small.settings["store_size"] == 16 and "store_size" not in full.settings
    assert small.load_tensor()[0].shape[-1] == 16 and full.load_tensor()[0].shape[-1] == 32


def test_view_refuses_an_exact_view_without_size(tmp_path):
    store, _ = _store(tmp_path / "s", 32)
    with pytest.raises(ConfigError, match="size"):
        StoreView(store, PAD, None, "exact")
    with pytest.raises(ConfigError, match="mode"):
        StoreView(store, PAD, 16, "stretch")
