"""Distillation: learning, loss terms, batch composition, ablations, resume, NaN, bad input."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from tinyshot.distill.config import DistillConfig
from tinyshot.distill.distill import EpochSampler, distill, kd_loss
from tinyshot.errors import ConfigError, ModelError, TrainingError
from tinyshot.models.students import build_student, save_student
from tinyshot.utils.checkpoint import load_checkpoint

SIZE, WAYS = 16, 3  # as in conftest.py's problem


def _student(arch: str = "conv4", ways: int = WAYS, seed: int = 0):
    torch.manual_seed(seed)
    return build_student(arch, num_classes=ways, input_size=SIZE)


def _record_training_inputs(student) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []

    def hook(module, args):
        if module.training:
            seen.append(args[0].detach().clone())

    student.register_forward_pre_hook(hook)
    return seen


def _cfg(**kw) -> DistillConfig:
    base = dict(
        iterations=12, batch_size=30, lr=0.02, eval_every=4, checkpoint_every=4, input_size=SIZE
    )
    base.update(kw)
    return DistillConfig(**base)


def _data(problem, sources=("support", "base", "synthetic"), hard=False):
    return {
        "support": problem["support"],
        "base": problem["base"] if "base" in sources else None,
        "synthetic": (problem["syn_hard"] if hard else problem["synthetic"])
        if "synthetic" in sources
        else None,
    }


def test_config_defaults_match_paper_and_roundtrip():
    c = DistillConfig()
    assert (c.iterations, c.batch_size, c.lr, c.momentum, c.weight_decay) == (
        10000,
        150,
        0.02,
        0.9,
        5e-4,
    )
    assert c.milestone_steps == [5000] and c.lr_gamma == 0.1 and c.per_source == 50
    assert DistillConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown"):
        DistillConfig.from_dict({"iters": 3})
    with pytest.raises(ConfigError, match="sources"):
        DistillConfig(sources=("support", "laion"))
    with pytest.raises(ConfigError, match="synthetic_labels"):
        DistillConfig(synthetic_labels="oracle")


def test_kd_loss_matches_manual_kl():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 4, generator=g)
    p = torch.softmax(torch.randn(7, 4, generator=g) * 2, dim=1)
    for t in (1.0, 2.0, 4.0):
        pt = p ** (1 / t)
        pt = pt / pt.sum(1, keepdim=True)
        q = torch.softmax(z / t, dim=1)
        manual = t * t * (pt * (pt.log() - q.log())).sum(1).mean()
        assert kd_loss(z, p, t).item() == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(torch.log(p), p, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_epoch_sampler_covers_each_item_once_per_epoch():
    s = EpochSampler(7, torch.Generator().manual_seed(0))
    draws = torch.cat([s.draw(3) for _ in range(7)])  # 21 = 3 epochs
    for e in range(3):
        assert sorted(draws[7 * e : 7 * e + 7].tolist()) == list(range(7))


def test_batches_are_equal_parts_of_sources(problem, tmp_path):
    # Mark each source by a constant pixel value; augmentation off so values survive.
    n = {"support": 15, "base": 40, "synthetic": 25}
    marks = {"support": 10, "base": 20, "synthetic": 30}
    data = {
        k: (torch.full((n[k], 3, SIZE, SIZE), marks[k], dtype=torch.uint8), problem[k][1][: n[k]])
        for k in n
    }
    data["support"] = (data["support"][0], torch.arange(WAYS).repeat_interleave(5))
    for sources, bs in (((("support", "base", "synthetic")), 30), (("support", "synthetic"), 20)):
        student = _student()
        seen = _record_training_inputs(student)
        cfg = _cfg(iterations=3, batch_size=bs, sources=sources, augment=False)
        distill(
            student,
            support=data["support"],
            base=data["base"],
            synthetic=data["synthetic"],
            config=cfg,
            run_dir=tmp_path / "-".join(sources),
            device="cpu",
        )
        assert len(seen) == 3
        for x in seen:
            assert x.shape[0] == bs
            v = torch.round(x[:, 0, 0, 0] * 255).long()
            counts = {k: int((v == marks[k]).sum()) for k in marks}
            want = {k: (bs // len(sources) if k in sources else 0) for k in marks}
            assert counts == want
            # Order is the config's source order: support block first.
            assert int(v[0]) == marks[sources[0]]


def test_distillation_learns_small_problem(problem, tmp_path):
    student = _student()
    cfg = _cfg(iterations=60, eval_every=20, checkpoint_every=30, lr=0.05)
    res = distill(
        student, **_data(problem), config=cfg, run_dir=tmp_path, val=problem["val"], device="cpu"
    )
    curve = res.history["curve"]
    assert [e["step"] for e in curve] == [0, 20, 40, 60]
    assert curve[0]["val_acc"] < 0.6
    assert res.final_val_acc >= 0.9 and res.final_val_acc > curve[0]["val_acc"] + 0.3
    assert curve[-1]["loss"] < 0.6 * curve[1]["loss"]
    assert {"loss_support", "loss_base", "loss_synthetic"} <= set(curve[-1])
    result = json.loads((tmp_path / "result.json").read_text())
    assert (
        result["finished"]
        and result["steps"] == 60
        and result["final_val_acc"] == res.final_val_acc
    )
    assert json.loads((tmp_path / "history.json").read_text())["curve"] == curve
    state = load_checkpoint(
        tmp_path / "checkpoint.pt", expect={"arch": "conv4", "num_classes": WAYS}
    )
    assert state["step"] == 60 and state["meta"]["stage"] == "distill"
    assert "log.txt" in {p.name for p in tmp_path.iterdir()}
    # lr milestone at half the iterations
    assert curve[-1]["lr"] == pytest.approx(0.005) and curve[1]["lr"] == pytest.approx(0.05)

    # trained in the channels-last layout, handed back in the default one
    assert all(p.is_contiguous() for p in student.parameters())


def test_teacher_soft_labels_alone_teach_the_student(problem, tmp_path):
    """No support images: only KL to the teacher on synthetic images (the paper's plot e)."""
    cfg = _cfg(iterations=30, eval_every=30, lr=0.05, sources=("synthetic",))
    res = distill(
        _student(),
        **_data(problem, ("synthetic",)),
        config=cfg,
        run_dir=tmp_path,
        val=problem["val"],
        device="cpu",
    )
    assert res.history["curve"][0]["val_acc"] < 0.6 and res.final_val_acc >= 0.9


SUBSETS = [
    s for r in (1, 2, 3) for s in itertools.combinations(("support", "base", "synthetic"), r)
]


@pytest.mark.parametrize("sources", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_ablation_source_subsets_run(problem, tmp_path, sources):
    cfg = _cfg(iterations=3, sources=sources, eval_every=3)
    res = distill(
        _student(),
        **_data(problem, sources),
        config=cfg,
        run_dir=tmp_path,
        val=problem["val"],
        device="cpu",
    )
    assert res.finished and res.steps == 3
    last = res.history["curve"][-1]
    assert set(k[5:] for k in last if k.startswith("loss_")) == set(sources)
    assert json.loads((tmp_path / "result.json").read_text())["config"]["sources"] == list(sources)


def test_synthetic_generator_labels_use_cross_entropy(problem, tmp_path):
    cfg = _cfg(
        iterations=2,
        sources=("synthetic",),
        synthetic_labels="generator",
        augment=False,
        batch_size=10,
    )
    student = _student()
    res = distill(
        student,
        **_data(problem, ("synthetic",), hard=True),
        config=cfg,
        run_dir=tmp_path,
        device="cpu",
    )
    assert res.history["data"]["synthetic"]["labels"] == "hard"
    # Soft labels with the generator setting (and hard with the teacher setting) are refused.
    with pytest.raises(ConfigError, match="hard integer labels"):
        distill(
            _student(),
            **_data(problem, ("synthetic",)),
            config=cfg,
            run_dir=tmp_path / "x",
            device="cpu",
        )
    cfg_t = _cfg(iterations=2, sources=("synthetic",))
    with pytest.raises(ConfigError, match="synthetic_labels='generator'"):
        distill(
            _student(),
            **_data(problem, ("synthetic",), hard=True),
            config=cfg_t,
            run_dir=tmp_path / "y",
            device="cpu",
        )


def test_first_loss_matches_manual_computation(problem, tmp_path):
    """One iteration with augmentation off: the logged loss is CE(support) + T^2 KL(base) + T^2 KL(syn).

    The reference student runs in the default memory layout, training in channels-last."""
    cfg = _cfg(iterations=1, augment=False, kd_temperature=2.0, eval_every=1, batch_size=9)
    student = _student()
    ref = _student()
    seen = _record_training_inputs(student)
    res = distill(student, **_data(problem), config=cfg, run_dir=tmp_path, device="cpu")
    x = seen[0]
    # Find each image's source/target by exact match against the source tensors.
    targets = []
    for k, block in zip(("support", "base", "synthetic"), x.split(3)):
        imgs, y = problem[k]
        flat = imgs.float().div(255).flatten(1)
        idx = [int((flat == b.flatten()).all(1).nonzero()[0]) for b in block]
        targets.append(y[idx])
    ref.train()
    z = ref(x).split(3)
    manual = (
        F.cross_entropy(z[0], targets[0])
        + kd_loss(z[1], targets[1], 2.0)
        + kd_loss(z[2], targets[2], 2.0)
    )
    assert res.history["curve"][-1]["loss"] == pytest.approx(manual.item(), rel=1e-5)


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


class _Kill(Exception):
    pass


def test_resume_after_kill_is_bit_exact(problem, tmp_path):
    cfg = _cfg(iterations=12, eval_every=3, checkpoint_every=4)
    kw = dict(**_data(problem), config=cfg, val=problem["val"], device="cpu")
    full = _student()
    r_full = distill(full, run_dir=tmp_path / "full", **kw)

    def kill_at_10(step):
        if step == 10:
            raise _Kill

    with pytest.raises(_Kill):
        distill(_student(), run_dir=tmp_path / "cut", on_step=kill_at_10, **kw)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 8
    resumed = _student(seed=99)  # different init: everything must come from the checkpoint
    r_cut = distill(resumed, run_dir=tmp_path / "cut", **kw)
    wf, wr = _weights(full), _weights(resumed)
    assert wf.keys() == wr.keys() and all(torch.equal(wf[k], wr[k]) for k in wf)
    assert r_cut.history["curve"] == r_full.history["curve"]
    assert r_cut.final_val_acc == r_full.final_val_acc

    # Graceful stop at a non-checkpoint step, then resume.
    part = distill(_student(), run_dir=tmp_path / "stop", stop_after=5, **kw)
    assert not part.finished and load_checkpoint(tmp_path / "stop" / "checkpoint.pt")["step"] == 5
    again = _student()
    distill(again, run_dir=tmp_path / "stop", **kw)
    wa = _weights(again)
    assert all(torch.equal(wf[k], wa[k]) for k in wf)
    # A finished run is not trained again.
    done = _student(seed=5)
    r = distill(done, run_dir=tmp_path / "full", **kw)
    assert r.finished and all(torch.equal(wf[k], v) for k, v in _weights(done).items())


def test_nan_loss_stops_with_last_good_checkpoint(problem, tmp_path):
    student = _student()
    cfg = _cfg(iterations=12, checkpoint_every=4)

    def poison(step):
        if step == 6:
            with torch.no_grad():
                student.head.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"iteration 7.*step 4"):
        distill(
            student, **_data(problem), config=cfg, run_dir=tmp_path, on_step=poison, device="cpu"
        )
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "history.json").read_text())["curve"][-1]["step"] == 4


def test_class_count_mismatches(problem, tmp_path):
    cfg = _cfg(iterations=2)
    d = _data(problem)
    wide = (d["base"][0], torch.softmax(torch.randn(120, WAYS + 1), 1))
    with pytest.raises(ConfigError, match=r"base soft labels have 4 classes but the student has 3"):
        distill(_student(), **{**d, "base": wide}, config=cfg, run_dir=tmp_path / "a", device="cpu")
    sup_x, sup_y = d["support"]
    with pytest.raises(ConfigError, match=r"support images cover 2 classes"):
        distill(
            _student(),
            **{**d, "support": (sup_x[:10], sup_y[:10])},
            config=cfg,
            run_dir=tmp_path / "b",
            device="cpu",
        )
    with pytest.raises(ConfigError, match=r"labels range 0..2 but the student has 2"):
        distill(_student(ways=2), **d, config=cfg, run_dir=tmp_path / "c", device="cpu")
    with pytest.raises(ConfigError, match="no base images"):
        distill(_student(), **{**d, "base": None}, config=cfg, run_dir=tmp_path / "d", device="cpu")


def test_checkpoint_of_other_architecture_or_config_is_refused(problem, tmp_path):
    d = _data(problem)
    distill(_student(), **d, config=_cfg(iterations=2), run_dir=tmp_path, device="cpu")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ModelError, match="arch='conv4', expected arch='resnet12'"):
        distill(
            _student("resnet12"), **d, config=_cfg(iterations=2), run_dir=tmp_path, device="cpu"
        )
    with pytest.raises(ConfigError, match=r"other options.*lr"):
        distill(_student(), **d, config=_cfg(iterations=2, lr=0.1), run_dir=tmp_path, device="cpu")
    other = tmp_path / "other"
    save_student(_student(), other / "checkpoint.pt")  # e.g. a pretraining checkpoint
    with pytest.raises(ModelError, match="not a distillation checkpoint"):
        distill(_student(), **d, config=_cfg(iterations=2), run_dir=other, device="cpu")
    flipped = {**d, "synthetic": (d["synthetic"][0], d["synthetic"][1].flip(1))}
    with pytest.raises(ConfigError, match="other data"):
        distill(_student(), **flipped, config=_cfg(iterations=2), run_dir=tmp_path, device="cpu")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # Each run logs to its own folder only.
    distill(_student(), **d, config=_cfg(iterations=2), run_dir=tmp_path / "next", device="cpu")
    assert (tmp_path / "log.txt").read_text().count("step 2/2") == 1
    assert (tmp_path / "next" / "log.txt").read_text().count("step 2/2") == 1
