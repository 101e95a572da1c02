"""SimCLR pretraining of a teacher member: the loss in closed form, views, learning, resume."""

from __future__ import annotations

import math

import pytest
import torch

from tinyshot.distill import ssl_pretrain as ssl
from tinyshot.distill.ssl_pretrain import SSLConfig, nt_xent, ssl_pretrain, two_views
from tinyshot.errors import ConfigError
from tinyshot.models.backbones import build_backbone
from tinyshot.utils.checkpoint import load_checkpoint


def _cfg(**kw) -> SSLConfig:
    base = dict(iterations=30, batch_size=16, input_size=16, log_every=10, checkpoint_every=10)
    base.update(kw)
    return SSLConfig(**base)


def test_nt_xent_closed_form():
    # views 0/2 and 1/3 are pairs; e0 and e1 orthogonal: row 0 sees logits (-, 0, 1/t, 0)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    t = 0.5
    got = nt_xent(torch.stack([e0, e1, 2 * e0, e1]), t)
    want = -1 / t + math.log(math.exp(1 / t) + 2)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_two_views_of_a_constant_image_and_determinism():
    # a crop of a constant image is constant away from the border; brightness scales it by a
    # factor in [1 - jitter, 1 + jitter] and contrast leaves a constant image alone
    x = torch.full((4, 3, 16, 16), 0.5)
    out = two_views(x, torch.Generator().manual_seed(1), SSLConfig(jitter=0.0))
    assert out.shape == (8, 3, 16, 16)
    assert torch.allclose(out[..., 5:11, 5:11], torch.full_like(out[..., 5:11, 5:11], 0.5))
    out = two_views(x, torch.Generator().manual_seed(1), SSLConfig(jitter=0.4))
    centre = out[..., 5:11, 5:11]
    per_view = centre.flatten(1)
    assert torch.allclose(per_view, per_view[:, :1].expand_as(per_view), atol=1e-6)
    assert centre.min() >= 0.5 * 0.6 - 1e-6 and centre.max() <= 0.5 * 1.4 + 1e-6
    assert per_view[:, 0].std() > 0.01  # the factors differ between views

    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = two_views(x, torch.Generator().manual_seed(2), SSLConfig())
    b = two_views(x, torch.Generator().manual_seed(2), SSLConfig())
    assert torch.equal(a, b) and a.min() >= 0.0 and a.max() <= 1.0
    assert not torch.allclose(a[:3], a[3:])  # the two views of an image differ


def test_learns_resumes_bit_exactly_and_loads_as_teacher_member(stripes, tmp_path, monkeypatch):
    cfg = _cfg()
    path = tmp_path / "ssl.pt"
    full = ssl_pretrain("conv4", stripes, cfg, path)
    hist = load_checkpoint(path)["extra"]["history"]
    assert [h["iteration"] for h in hist] == [10, 20, 30]
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.2, hist
    assert hist[-1]["pair_acc"] > hist[0]["pair_acc"], hist

    ssl_pretrain("conv4", stripes, cfg, tmp_path / "b.pt", stop_after=13)
    torch.manual_seed(5)
    resumed = ssl_pretrain("conv4", stripes, cfg, tmp_path / "b.pt")
    sa, sb = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    monkeypatch.setattr("tinyshot.distill.pretrain_student.preload", lambda *a, **k: 1 / 0)
    again = ssl_pretrain("conv4", stripes, cfg, path)  # finished: loaded, nothing read
    assert all(torch.equal(sa[k], v) for k, v in again.state_dict().items())
    with pytest.raises(ConfigError, match="different config"):
        ssl_pretrain("conv4", stripes, _cfg(temperature=0.1), path)

    member = build_backbone(f"student:{path}")
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(member(x), full.features(x), atol=1e-6)
    assert member.feature_dim == full.feature_dim


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="min_scale"):
        SSLConfig(min_scale=0.0).validate()
    with pytest.raises(ConfigError, match="batch_size"):
        SSLConfig(batch_size=1).validate()
    assert ssl.SSLConfig.from_dict({**SSLConfig().semantic(), "unknown": 1}) == SSLConfig()
