"""Student pretraining on base classes (CE + rotation): learns, is cached, resumes bit-exactly."""

from __future__ import annotations

import pytest
import torch

from tinyshot.distill import pretrain_student as ps
from tinyshot.distill.pretrain_student import (
    PretrainConfig,
    checkpoint_path,
    load_pretrained_backbone,
    pretrain_student,
    pretrained_history,
    rotate_batch,
)
from tinyshot.errors import ModelError
from tinyshot.models.students import build_student, save_student


def _cfg(**kw) -> PretrainConfig:
    base = dict(
        iterations=40,
        batch_size=24,
        lr=0.05,
        input_size=16,
        log_every=10,
        checkpoint_every=10,
        device="cpu",
    )
    base.update(kw)
    return PretrainConfig(**base)


def test_rotate_batch():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = rotate_batch(x, torch.tensor([1, 2]))
    assert torch.equal(out[0], torch.rot90(x[0], 1, (1, 2)))
    assert torch.equal(out[1], torch.rot90(x[1], 2, (1, 2)))


def test_pretraining_learns_and_is_cached(stripes, tmp_path, monkeypatch):
    cfg = _cfg()
    s = pretrain_student("conv4", stripes, cfg, tmp_path)
    path = checkpoint_path("conv4", stripes, cfg, tmp_path)
    assert path.is_file() and path.name.startswith("pretrain-conv4-stripes-base-")
    hist = pretrained_history(path)
    assert [h["iteration"] for h in hist] == [10, 20, 30, 40]
    assert hist[-1]["ce"] < 0.5 * hist[0]["ce"], hist
    assert hist[-1]["rot"] < hist[0]["rot"], hist
    assert s.num_classes == stripes.num_classes and not s.training

    # second call: loaded from the cache, no image is even read
    monkeypatch.setattr(ps, "preload", lambda *a, **k: pytest.fail("retrained instead of reusing"))
    again = pretrain_student("conv4", stripes, cfg, tmp_path)
    assert all(
        torch.equal(a, b) for a, b in zip(s.state_dict().values(), again.state_dict().values())
    )
    # another config is another cache entry
    assert checkpoint_path("conv4", stripes, _cfg(lr=0.1), tmp_path) != path

    # distillation-style reuse: backbone into a fresh 5-way student
    novel = load_pretrained_backbone(build_student("conv4", 5, 16), path)
    assert torch.equal(novel.backbone.net.blocks[0][0].weight, s.backbone.net.blocks[0][0].weight)
    with pytest.raises(ModelError, match="'conv4' network, the student is 'resnet12'"):
        load_pretrained_backbone(build_student("resnet12", 5, 16), path)


def test_resume_is_bit_exact(stripes, tmp_path):
    cfg = _cfg(iterations=20, checkpoint_every=5, log_every=5)
    full = pretrain_student("conv4", stripes, cfg, tmp_path / "a.pt")
    pretrain_student("conv4", stripes, cfg, tmp_path / "b.pt", stop_after=7)
    torch.manual_seed(99)
    resumed = pretrain_student("conv4", stripes, cfg, tmp_path / "b.pt")
    sa, sb = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mismatched_checkpoints_are_refused(stripes, tmp_path):
    # a checkpoint with another class count / architecture at the requested path
    save_student(build_student("conv4", 3, 16), tmp_path / "x.pt")
    with pytest.raises(ModelError, match="num_classes=3, expected num_classes=6"):
        pretrain_student("conv4", stripes, _cfg(), tmp_path / "x.pt")
    with pytest.raises(ModelError, match="arch='conv4', expected arch='resnet12'"):
        pretrain_student("resnet12", stripes, _cfg(), tmp_path / "x.pt")


def test_efficientnet_lite0_fine_tunes_from_imagenet_and_resumes_bit_exactly(stripes, tmp_path):
    """The mobile student's base-class pretraining starts from its ImageNet weights (not a
    random init), draws no random numbers outside its seeded generators (no stochastic
    depth), so an interrupted run resumes to the same weights, and hands its backbone on."""
    from tinyshot.models.efficientnet_lite import load_efficientnet_lite

    cfg = _cfg(iterations=4, batch_size=4, input_size=32, checkpoint_every=2, log_every=2)
    start = build_student("efficientnet-lite0", 6, 32)
    imagenet = load_efficientnet_lite(0, 32)
    assert torch.equal(start.backbone.net.net._conv_stem.weight, imagenet._conv_stem.weight)
    full = pretrain_student("efficientnet-lite0", stripes, cfg, tmp_path / "a.pt")
    pretrain_student("efficientnet-lite0", stripes, cfg, tmp_path / "b.pt", stop_after=2)
    torch.manual_seed(99)
    resumed = pretrain_student("efficientnet-lite0", stripes, cfg, tmp_path / "b.pt")
    sa, sb = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["backbone.net.net._conv_stem.weight"], imagenet._conv_stem.weight)
    novel = load_pretrained_backbone(build_student("efficientnet-lite0", 5, 32), tmp_path / "a.pt")
    assert torch.equal(
        novel.backbone.state_dict()["net.net._bn1.weight"], sa["backbone.net.net._bn1.weight"]
    )
