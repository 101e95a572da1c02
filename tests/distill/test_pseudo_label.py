"""Teacher soft labels: correct values, cache reuse, recompute on fingerprint change, chunk resume."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tinyshot.distill.pseudo_label import load_soft_labels, pseudo_label
from tinyshot.errors import ConfigError
from tinyshot.models.teacher import build_teacher


class CountingTeacher(torch.nn.Module):
    """Real ProtoNet teacher (random Conv4 backbone, 16 px) that counts labelled images."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inner = build_teacher("conv4", input_size=16)
        self.seen = 0

    def set_support(self, x, y):
        self.inner.set_support(x, y)

    def predict_proba(self, images, temperature=1.0, batch_size=64):
        self.seen += images.shape[0]
        return self.inner.predict_proba(images, temperature=temperature, batch_size=batch_size)


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(35, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    sup = torch.rand(6, 3, 16, 16, generator=g)
    sup_y = torch.tensor([0, 0, 1, 1, 2, 2])
    teacher = CountingTeacher()
    teacher.set_support(sup, sup_y)
    return images, teacher, sup, sup_y


def test_values_cache_reuse_and_recompute(setup, tmp_path):
    images, teacher, sup, sup_y = setup
    cache = tmp_path / "soft.safetensors"
    p = pseudo_label(teacher, images, cache, batch_size=8, chunk_size=16)
    want = teacher.inner.predict_proba(images.float() / 255)
    assert p.shape == (35, 3) and torch.allclose(p, want, atol=1e-6)
    assert torch.allclose(p.sum(1), torch.ones(35), atol=1e-5)
    assert torch.equal(load_soft_labels(cache), p)
    assert not (tmp_path / "soft.safetensors.parts").exists()
    with safe_open(str(cache), framework="pt") as f:
        assert len(f.metadata()["fingerprint"]) == 64

    probe = 8  # the fingerprint looks at the teacher's answers on the first 8 images
    teacher.seen = 0
    again = pseudo_label(teacher, images, cache, batch_size=8, chunk_size=16)
    assert teacher.seen == probe and torch.equal(again, p)

    # Other images, another temperature or another support set: recomputed.
    teacher.seen = 0
    other = images.clone()
    other[-1] = 255 - other[-1]
    pseudo_label(teacher, other, cache, chunk_size=16)
    assert teacher.seen == probe + 35
    teacher.seen = 0
    hot = pseudo_label(teacher, other, cache, temperature=3.0, chunk_size=16)
    assert teacher.seen == probe + 35 and hot.max() < p.max()
    teacher.seen = 0
    teacher.set_support(sup.flip(0), sup_y)
    pseudo_label(teacher, other, cache, temperature=3.0, chunk_size=16)
    assert teacher.seen == probe + 35


def test_chunks_resume_after_kill(setup, tmp_path):
    images, teacher, _, _ = setup
    full = pseudo_label(teacher, images, tmp_path / "full.safetensors", chunk_size=10)
    calls = []

    def dying_loader(a, b):
        calls.append((a, b))
        if a == 20:
            raise KeyboardInterrupt
        return images[a:b]

    cache = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(teacher, dying_loader, cache, chunk_size=10, num_images=35, source_id="set-a")
    parts = sorted(p.name for p in (tmp_path / "cut.safetensors.parts").iterdir())
    assert parts == ["part_000000000_000000010.safetensors", "part_000000010_000000020.safetensors"]
    assert not cache.exists()
    calls.clear()
    got = pseudo_label(
        teacher,
        lambda a, b: calls.append((a, b)) or images[a:b],
        cache,
        chunk_size=10,
        num_images=35,
        source_id="set-a",
    )
    assert calls == [(0, 8), (20, 30), (30, 35)]  # probe, then only the missing chunks
    assert torch.allclose(got, full, atol=1e-6)


def test_bad_arguments(setup, tmp_path):
    images, teacher, _, _ = setup
    with pytest.raises(ConfigError, match="num_images and source_id"):
        pseudo_label(teacher, lambda a, b: images[a:b], tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="temperature"):
        pseudo_label(teacher, images, tmp_path / "x.safetensors", temperature=0)
