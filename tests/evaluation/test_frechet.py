"""Frechet distance against closed forms, and the FID-64 Inception layer's shapes and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyshot.errors import DataError, ModelError
from tinyshot.evaluation.frechet import (
    EFFNET_METRIC,
    efficientnet_frechet,
    feature_statistics,
    frechet_between,
    frechet_distance,
)
from tinyshot.evaluation.inception import METRIC, InceptionFID64, fid64, load_inception_fid64


def _diag_closed_form(mu1, s1, mu2, s2):
    return float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())


def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(_diag_closed_form(mu1, s1, mu2, s2), rel=1e-10)


def test_commuting_full_covariances_closed_form():
    # Same eigenvectors -> sqrt(S1 S2) has eigenvalues sqrt(l1 l2).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    l1, l2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu = rng.normal(size=5)
    want = float(((mu - 0) ** 2).sum() + (l1 + l2 - 2 * np.sqrt(l1 * l2)).sum())
    assert frechet_distance(mu, s1, np.zeros(5), s2) == pytest.approx(want, rel=1e-8)


def test_identical_distributions_zero_and_symmetry():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 8))
    b = rng.normal(size=(200, 8)) * 2 + 1
    mu, s = feature_statistics(a)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    mb, sb = feature_statistics(b)
    assert frechet_distance(mu, s, mb, sb) == pytest.approx(
        frechet_distance(mb, sb, mu, s), rel=1e-6
    )


def test_sample_estimate_converges_to_population_value():
    rng = np.random.default_rng(3)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = np.full(d, 1.0), np.full(d, 4.0)
    want = _diag_closed_form(mu1, s1, mu2, s2)  # 4*0.25 + 4*(1+4-4) = 5
    a = rng.normal(mu1, np.sqrt(s1), size=(200_000, d))
    b = rng.normal(mu2, np.sqrt(s2), size=(200_000, d))
    got = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert want == pytest.approx(5.0)
    assert got == pytest.approx(want, abs=0.05)


def test_singular_covariance_is_finite():
    # Fewer samples than dims: rank-deficient covariances (the eps-offset path of pytorch-fid).
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 3
    got = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert np.isfinite(got) and got > 16 * 9 * 0.5


def test_bad_inputs():
    with pytest.raises(DataError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(DataError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


class _MeanColour(torch.nn.Module):
    metric_name = "FD-test"
    feature_dim = 3

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_frechet_between_images_uint8_float_and_pil_agree():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(40, 3, 8, 8, generator=g) * 255).to(torch.uint8)
    b = (torch.rand(30, 3, 8, 8, generator=g) * 128).to(torch.uint8)
    r1 = frechet_between(a, b, _MeanColour(), batch_size=7, device="cpu")
    r2 = frechet_between(
        a.float() / 255, b.float() / 255, _MeanColour(), batch_size=16, device="cpu"
    )
    from tinyshot.data.transforms import tensor_to_pil

    pil_a = [tensor_to_pil(x.float() / 255) for x in a]
    r3 = frechet_between(pil_a, b, _MeanColour(), device="cpu")
    assert (r1.metric, r1.n_a, r1.n_b, r1.feature_dim) == ("FD-test", 40, 30, 3)
    assert r1.value == pytest.approx(r2.value, rel=1e-5)
    assert r1.value == pytest.approx(r3.value, rel=1e-4)
    assert r1.value > 0.01


def test_effnet_frechet_is_not_called_fid():
    class TinyBackbone(torch.nn.Module):
        feature_dim = 4

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.proj(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    a, b = torch.rand(20, 3, 8, 8), torch.rand(20, 3, 8, 8) * 0.5
    r = efficientnet_frechet(a, b, backbone=TinyBackbone(), device="cpu")
    assert r.metric == EFFNET_METRIC and "FID" not in r.metric and r.feature_dim == 4
    assert r.value > 0


def _random_inception_state(prefix: str = "") -> dict:
    torch.manual_seed(0)
    m = InceptionFID64()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    sd = {f"{prefix}{k}": v for k, v in m.state_dict().items() if "num_batches" not in k}
    # A full pytorch-fid file also holds later layers; they must be ignored.
    sd[f"{prefix}Mixed_5b.branch1x1.conv.weight"] = torch.zeros(64, 192, 1, 1)
    sd[f"{prefix}fc.weight"] = torch.zeros(1008, 2048)
    return sd, m


def test_inception_shapes_and_params():
    m = InceptionFID64()
    n = sum(p.numel() for p in m.parameters())
    # convs 3*32*9 + 32*32*9 + 32*64*9, BN affine 2*(32+32+64)
    assert n == 864 + 9216 + 18432 + 256
    with torch.no_grad():
        out = m(torch.rand(2, 3, 40, 50))
    assert out.shape == (2, 64)
    # 299 -> conv s2 (149) -> conv (147) -> conv p1 (147) -> maxpool 3/2 (73)
    with torch.no_grad():
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 40, 50), size=(299, 299))
        fmap = m.maxpool(m.Conv2d_2b_3x3(m.Conv2d_2a_3x3(m.Conv2d_1a_3x3(x))))
    assert fmap.shape == (1, 64, 73, 73)


@pytest.mark.parametrize("prefix", ["", "module.", "inception."])
def test_inception_weights_load_from_file(tmp_path, prefix):
    sd, ref = _random_inception_state(prefix)
    path = tmp_path / "pt_inception.pth"
    torch.save(sd, path)
    m = load_inception_fid64(path)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), ref.eval()(x))


def test_inception_wrapper_key_style(tmp_path):
    sd, ref = _random_inception_state()
    names = {
        "Conv2d_1a_3x3": "blocks.0.0",
        "Conv2d_2a_3x3": "blocks.0.1",
        "Conv2d_2b_3x3": "blocks.0.2",
    }
    wrapped = {}
    for k, v in sd.items():
        head = k.split(".")[0]
        if head in names:
            wrapped[k.replace(head, names[head], 1)] = v
    torch.save(wrapped, tmp_path / "w.pth")
    m = load_inception_fid64(tmp_path / "w.pth")
    x = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(m(x), ref.eval()(x))


def test_inception_weight_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_inception_fid64(tmp_path / "nope.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="missing"):
        load_inception_fid64(tmp_path / "other.pth")
    sd, _ = _random_inception_state()
    sd["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ModelError, match="shape"):
        load_inception_fid64(tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        load_inception_fid64(tmp_path / "junk.pth")


def test_fid64_end_to_end(tmp_path):
    sd, _ = _random_inception_state()
    torch.save(sd, tmp_path / "w.pth")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(8, 3, 16, 16, generator=g)
    b = torch.rand(8, 3, 16, 16, generator=g) * 0.3
    same = fid64(a, a, tmp_path / "w.pth", device="cpu")
    diff = fid64(a, b, tmp_path / "w.pth", device="cpu")
    assert same.metric == METRIC == "FID-64" and same.feature_dim == 64
    assert abs(same.value) < 1e-6
    assert diff.value > 1e-3


def test_cli_fd_between_folders(tmp_path, capsys):
    from PIL import Image

    from tinyshot.cli import main
    from tinyshot.evaluation.frechet import read_image_dir

    rng = np.random.default_rng(0)
    for name, hi in (("real", 255), ("fake", 120)):
        (tmp_path / name / "sub").mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, hi, (20, 20, 3), dtype=np.uint8)
            folder = tmp_path / name / ("sub" if i % 2 else "")
            Image.fromarray(arr).save(folder / f"{i}.png")
    (tmp_path / "real" / "notes.txt").write_text("not an image")
    sd, _ = _random_inception_state()
    torch.save(sd, tmp_path / "w.pth")
    out = tmp_path / "fd.json"
    argv = ["fd", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake")]
    rc = main(
        [
            *argv,
            "--inception-weights",
            str(tmp_path / "w.pth"),
            "--no-effnet",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    (res,) = json.loads(out.read_text())["results"]
    want = fid64(
        read_image_dir(tmp_path / "real"),
        read_image_dir(tmp_path / "fake"),
        tmp_path / "w.pth",
        device="cpu",
    )
    assert (
        res["metric"] == "FID-64" and res["n_a"] == 6 and res["value"] == pytest.approx(want.value)
    )
    assert "FID-64" in capsys.readouterr().out
    assert main([*argv, "--no-effnet"]) == 2
    assert main([*argv, "--inception-weights", str(tmp_path / "missing.pth"), "--no-effnet"]) == 2
    assert "missing.pth" in capsys.readouterr().err


def test_small_sample_route_equals_matrix_square_root():
    """n < D: the n x n eigenproblem gives the same distance as sqrtm of the D x D product."""
    from tinyshot.evaluation.frechet import frechet_distance_features

    rng = np.random.default_rng(0)
    fa = rng.normal(size=(30, 64))
    fb = rng.normal(loc=0.3, scale=1.5, size=(40, 64)) @ rng.normal(size=(64, 64)) / 8
    ref = frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    fast = frechet_distance_features(fa, fb)
    assert fast == pytest.approx(ref, rel=1e-6)
    assert frechet_distance_features(fb, fa) == pytest.approx(ref, rel=1e-6)
    # n >= D falls back to the standard route
    big = rng.normal(size=(100, 8))
    assert frechet_distance_features(big, big[::-1]) == pytest.approx(0.0, abs=1e-9)
