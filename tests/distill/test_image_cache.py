"""The student's memory-mapped image file and row subsets of it."""

from __future__ import annotations

import pytest
import torch

from tinyshot.distill.config import DistillConfig
from tinyshot.distill.distill import distill
from tinyshot.distill.image_cache import ImageSubset, cached_images
from tinyshot.distill.pseudo_label import tensor_digest
from tinyshot.models.students import build_student


def _images(n: int = 40, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_cache_is_built_once_in_chunks_and_rebuilt_for_other_images(tmp_path):
    x = _images()
    calls = []

    def load(a, b):
        calls.append((a, b))
        return x[a:b]

    path = tmp_path / "c" / "tint.npy"
    got = cached_images(load, 40, 16, path, "id-1", chunk_size=16)
    assert torch.equal(got, x) and calls == [(0, 16), (16, 32), (32, 40)]
    calls.clear()
    assert torch.equal(cached_images(load, 40, 16, path, "id-1"), x) and calls == []
    y = _images(seed=1)
    assert torch.equal(cached_images(lambda a, b: y[a:b], 40, 16, path, "id-2"), y)


def test_a_killed_build_leaves_no_cache(tmp_path):
    x = _images()

    def dies(a, b):
        if a >= 16:
            raise KeyboardInterrupt
        return x[a:b]

    path = tmp_path / "tint.npy"
    with pytest.raises(KeyboardInterrupt):
        cached_images(dies, 40, 16, path, "id", chunk_size=16)
    assert not path.exists()
    assert torch.equal(cached_images(lambda a, b: x[a:b], 40, 16, path, "id", chunk_size=16), x)


def test_subset_digest_equals_the_copied_rows_digest():
    x = _images()
    rows = torch.tensor([5, 3, 39, 0, 7])
    sub = ImageSubset(x, rows)
    assert sub.digest(chunk=2) == tensor_digest(x[rows])
    assert tuple(sub.shape) == (5, 3, 16, 16) and torch.equal(sub[torch.tensor([1, 2])], x[[3, 39]])


def test_distilling_from_a_mapped_subset_equals_distilling_from_the_copied_rows(tmp_path):
    x = cached_images(lambda a, b: _images()[a:b], 40, 16, tmp_path / "s.npy", "id")
    probs = torch.softmax(torch.randn(40, 3, generator=torch.Generator().manual_seed(1)), 1)
    rows = torch.arange(5, 40)
    support = (_images(9, seed=2), torch.tensor([0, 1, 2] * 3))
    cfg = DistillConfig(
        iterations=4, batch_size=8, lr=0.01, sources=("support", "synthetic"), input_size=16
    )
    weights = []
    for name, syn in (("copy", x[rows]), ("subset", ImageSubset(x, rows))):
        torch.manual_seed(0)
        student = build_student("conv4", 3, 16)
        distill(student, support=support, synthetic=(syn, probs[rows]), config=cfg,
                run_dir=tmp_path / name)  # fmt: skip
        weights.append(student.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
