"""Episodic meta-training of the teacher: learns, resumes bit-exactly, stops cleanly on NaN,
and by default keeps a pretrained backbone's features (head and backbone learning rates)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinyshot.distill.meta_train import (
    BACKBONE_LR,
    HEAD_LR,
    MetaTrainConfig,
    build_optimizer,
    episode_indices,
    meta_train_teacher,
)
from tinyshot.errors import ConfigError, TrainingError
from tinyshot.models.backbones import build_tiny_vit
from tinyshot.models.teacher import build_teacher
from tinyshot.utils.checkpoint import load_checkpoint


def _cfg(**kw) -> MetaTrainConfig:
    base = dict(
        episodes_per_epoch=8,
        epochs=2,
        ways=3,
        shots=2,
        queries=4,
        lr=2e-3,
        checkpoint_every=4,
        log_every=4,
        seed=1,
        device="cpu",
    )
    base.update(kw)
    base.setdefault("backbone_lr", base["lr"])  # random-init conv4: the whole net learns
    return MetaTrainConfig(**base)


def _eval_loss(teacher, ds, n=6) -> float:
    from tinyshot.data.transforms import images_to_tensor

    teacher.eval()
    losses = []
    with torch.no_grad():
        for i in range(n):
            si, sl, qi, ql = episode_indices(ds, 3, 2, 6, seed=1000 + i)
            logits = teacher.logits_episode(
                images_to_tensor(ds.load_images(si), 16),
                torch.from_numpy(sl),
                images_to_tensor(ds.load_images(qi), 16),
            )
            losses.append(F.cross_entropy(logits, torch.from_numpy(ql)).item())
    return sum(losses) / n


def test_meta_training_lowers_episode_loss(stripes, tmp_path):
    torch.manual_seed(0)
    t = build_teacher("conv4", input_size=16)
    before = _eval_loss(t, stripes)
    meta_train_teacher(t, stripes, _cfg(episodes_per_epoch=20), tmp_path / "run")
    after = _eval_loss(t, stripes)
    assert after < 0.7 * before, (before, after)
    assert (tmp_path / "run" / "meta_train.json").is_file()
    assert "episode 40/40" in (tmp_path / "run" / "log.txt").read_text()


def test_resume_is_bit_exact(stripes, tmp_path):
    torch.manual_seed(0)
    full = build_teacher("conv4", input_size=16)
    meta_train_teacher(full, stripes, _cfg(), tmp_path / "a")

    torch.manual_seed(0)
    part = build_teacher("conv4", input_size=16)
    meta_train_teacher(part, stripes, _cfg(), tmp_path / "b", stop_after=6)  # killed at 6
    assert load_checkpoint(tmp_path / "b" / "teacher.pt")["step"] == 6
    torch.manual_seed(123)  # a fresh process: different init, different global RNG
    resumed = build_teacher("conv4", input_size=16)
    meta_train_teacher(resumed, stripes, _cfg(checkpoint_every=5), tmp_path / "b")
    sa, sb = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # a finished run is loaded, not retrained; a different config is refused
    again = build_teacher("conv4", input_size=16)
    meta_train_teacher(again, stripes, _cfg(), tmp_path / "a")
    assert torch.equal(again.scale, full.scale)
    with pytest.raises(ConfigError, match="different config"):
        meta_train_teacher(
            build_teacher("conv4", input_size=16), stripes, _cfg(lr=1e-2), tmp_path / "a"
        )


def test_nan_loss_stops_and_keeps_last_good_checkpoint(stripes, tmp_path, monkeypatch):
    import tinyshot.distill.meta_train as mt

    run = tmp_path / "run"
    meta_train_teacher(build_teacher("conv4", input_size=16), stripes, _cfg(), run, stop_after=4)
    good = load_checkpoint(run / "teacher.pt")
    calls = {"n": 0}
    real_load = mt._load

    def poisoned(ds, idx, size):  # two loads per episode; NaN images from episode 6 on
        calls["n"] += 1
        x = real_load(ds, idx, size)
        return x * float("nan") if calls["n"] > 4 else x

    monkeypatch.setattr(mt, "_load", poisoned)
    with pytest.raises(
        TrainingError, match=r"NaN/inf at step 6 .*last good checkpoint .*teacher.pt is kept"
    ):
        meta_train_teacher(build_teacher("conv4", input_size=16), stripes, _cfg(), run)
    kept = load_checkpoint(run / "teacher.pt")
    assert kept["step"] == good["step"] == 4
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])
    # without any checkpoint yet, the message says so
    calls["n"] = 10
    with pytest.raises(TrainingError, match="no checkpoint was written yet"):
        meta_train_teacher(build_teacher("conv4", input_size=16), stripes, _cfg(), tmp_path / "new")


def test_too_few_images_per_class(stripes, tmp_path):
    with pytest.raises(ConfigError, match="fewer than"):
        meta_train_teacher(
            build_teacher("conv4", input_size=16), stripes, _cfg(shots=15, queries=15), tmp_path
        )


def test_frozen_backbone_statistics(stripes, tmp_path):
    t = build_teacher("conv4", input_size=16)
    bn = t.backbone.net.net.blocks[0][1]
    w0, rm0 = bn.weight.clone(), bn.running_mean.clone()
    meta_train_teacher(t, stripes, _cfg(freeze_backbone_stats=True), tmp_path / "f", stop_after=3)
    assert torch.equal(bn.running_mean, rm0)  # pretrained statistics kept
    assert not torch.equal(bn.weight, w0)  # while the weights do train
    t2 = build_teacher("conv4", input_size=16)  # random init: default is batch statistics
    meta_train_teacher(t2, stripes, _cfg(), tmp_path / "g", stop_after=3)
    assert not torch.equal(t2.backbone.net.net.blocks[0][1].running_mean, rm0)


def test_optimizer_groups_head_and_backbone(tmp_path):
    assert (MetaTrainConfig().lr, MetaTrainConfig().backbone_lr) == (HEAD_LR, BACKBONE_LR)
    assert (HEAD_LR, BACKBONE_LR) == (3e-3, 1e-5)
    t = build_teacher(str(build_tiny_vit(tmp_path / "vit")))
    for cfg, opt_type in (
        (MetaTrainConfig(), torch.optim.Adam),
        (MetaTrainConfig(lr=0.02, backbone_lr=5e-5, optimizer="sgd"), torch.optim.SGD),
    ):
        opt = build_optimizer(t, cfg)
        assert isinstance(opt, opt_type)
        head, body = opt.param_groups
        assert (head["name"], head["lr"]) == ("head", cfg.lr)
        assert (body["name"], body["lr"]) == ("backbone", cfg.backbone_lr)
        assert head["params"] == [t.scale, t.bias]
        others = [p for n, p in t.named_parameters() if n not in ("scale", "bias")]
        assert len(body["params"]) == len(others) > 0
        assert {id(p) for p in body["params"]} == {id(p) for p in others}
    # a backbone with nothing to train gets no group
    t.backbone.requires_grad_(False)
    assert [g["name"] for g in build_optimizer(t, MetaTrainConfig()).param_groups] == ["head"]
    with pytest.raises(ConfigError, match="backbone_lr must be a number"):
        MetaTrainConfig(backbone_lr=None).validate()
    with pytest.raises(ConfigError, match="backbone_lr non-negative"):
        MetaTrainConfig(backbone_lr=-1.0).validate()


def test_cli_defaults_are_the_config_defaults():
    from tinyshot.cli import build_parser

    args = build_parser().parse_args(
        ["train-teacher", "--dataset", "fashion-mnist", "--run-dir", "r"]
    )
    cfg = MetaTrainConfig()
    assert (args.lr, args.backbone_lr, args.optimizer) == (cfg.lr, cfg.backbone_lr, cfg.optimizer)
    assert (args.episodes_per_epoch, args.epochs, args.schedule) == (400, 100, cfg.schedule)


def _centred_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of per-image features after removing the batch mean (the part
    that tells images apart; a ViT's CLS features share a large common component)."""
    return F.cosine_similarity(a - a.mean(0), b - b.mean(0)).mean().item()


def test_default_lrs_keep_a_pretrained_vits_features(stripes, tmp_path):
    """Ten episodes at the default lrs leave a (stand-in pretrained) ViT's features almost as
    they were; the old default, Adam at 3e-3 over the whole ViT, rewrites them."""
    from tinyshot.data.transforms import images_to_tensor

    folder = build_tiny_vit(tmp_path / "vit", image_size=32, patch_size=8, hidden_size=32)
    x = images_to_tensor(stripes.load_images(list(range(0, 120, 4))), 32)
    episodes = dict(episodes_per_epoch=10, epochs=1, ways=3, shots=2, queries=4, seed=1)
    sims = {}
    for name, kw in (("default", {}), ("whole-vit-3e-3", {"backbone_lr": 3e-3})):
        torch.manual_seed(0)
        t = build_teacher(str(folder))
        with torch.no_grad():
            before = t.backbone(x)
        cfg = MetaTrainConfig(**episodes, **kw, device="cpu")
        meta_train_teacher(t, stripes, cfg, tmp_path / name)
        with torch.no_grad():
            sims[name] = _centred_cosine(before, t.backbone(x))
    # measured: 0.9998 at the default, 0.09 at 3e-3
    assert sims["default"] > 0.999, sims
    assert sims["whole-vit-3e-3"] < 0.5, sims
