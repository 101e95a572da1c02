"""Synthetic-data health: figures, thresholds and warnings (evaluation.health)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tinyshot.errors import ConfigError
from tinyshot.evaluation.health import (
    AGREEMENT_WARN,
    ClassHealth,
    HealthReport,
    assess,
    judge,
    near_copy_share,
    remedy,
    status_line,
)
from tinyshot.evaluation.health_figures import (
    agreement_by_class,
    loo_protonet_accuracy,
    nti_psnr,
    support_distances,
)
from tinyshot.evaluation.health_summary import (
    banner_html,
    benchmark_health,
    combine_episodes,
    teacher_headroom,
)
from tinyshot.evaluation.holdout import hold_out_supports


def _probs_for(intended: torch.Tensor, predicted: torch.Tensor, ways: int) -> torch.Tensor:
    return F.one_hot(predicted, ways).float() * 0.8 + 0.2 / ways


def test_agreement_at_chance_fails_and_names_the_class():
    ways, n = 5, 50
    g = torch.Generator().manual_seed(0)
    intended = torch.arange(ways).repeat_interleave(n)
    # "cat" (class 0) is drawn at chance: the teacher picks a uniformly random class.
    pred = intended.clone()
    pred[:n] = torch.randint(0, ways, (n,), generator=g)
    stats = agreement_by_class(_probs_for(intended, pred, ways), intended, ways)
    n0, a0, _ = stats[0]
    assert n0 == 50 and a0 == pytest.approx(float((pred[:n] == 0).double().mean()))
    assert a0 < 0.3  # around chance 0.2
    names = ["cat", "dog", "fish", "pig", "rabbit"]
    hs = [
        judge(ClassHealth("tint", c, names[c], ways, stats[c][0], stats[c][1], stats[c][2]))
        for c in range(ways)
    ]
    assert hs[0].status == "fail"
    assert hs[0].agreement_floor() == pytest.approx(0.2 + 2 * math.sqrt(0.2 * 0.8 / 50))
    msg = hs[0].problems[0]
    assert "'cat'" in msg and f"{100 * a0:.1f}%" in msg and "chance is 20.0%" in msg
    assert "the support+base method" in msg
    for h in hs[1:]:  # healthy classes: agreement 1.0, no warning
        assert h.status == "ok" and h.problems == []


def test_warnings_per_figure_and_thresholds():
    h = judge(
        ClassHealth(
            "tint",
            1,
            "dog",
            5,
            200,
            agreement=0.40,  # above the chance floor (0.257), below AGREEMENT_WARN
            intended_prob=0.3,
            ti_loss_init=0.08473,
            ti_loss_final=0.08399,  # the run: -0.9%
            nti_psnr_db=12.0,
            nti_psnr_space="image",
            support_distance=0.30,
            support_spread=0.05,  # 6x the class's own spread
        )
    )
    assert h.status == "warn" and len(h.problems) == 4 and h.information == []
    assert "only 40.0%" in h.problems[0] and f"{100 * AGREEMENT_WARN:.0f}%" in h.problems[0]
    assert "0.08473 -> 0.08399 (-0.9%, usual: a drop of 2% or more)" in h.problems[1]
    assert "12.0 dB" in h.problems[2] and "usual: 20 dB or more" in h.problems[2]
    assert "6.0x farther" in h.problems[3]
    assert "--ti-steps" not in " ".join(h.problems)  # 60 steps moved the loss by 0.7%
    ok = judge(
        ClassHealth(
            "tint",
            1,
            "dog",
            5,
            200,
            agreement=0.9,
            intended_prob=0.8,
            ti_loss_init=0.10,
            ti_loss_final=0.08,
            nti_psnr_db=25.0,
            nti_psnr_space="image",
            support_distance=0.08,
            support_spread=0.05,
        )
    )
    assert ok.status == "ok" and ok.problems == [] and ok.information == []


def test_unusual_figures_are_information_when_agreement_passes():
    # TI's loss barely drops on classes the teacher labels 86-95% right (the demo): the
    # figure is shown, not warned about.
    h = judge(
        ClassHealth(
            "ti",
            0,
            "bag",
            5,
            200,
            agreement=AGREEMENT_WARN,
            intended_prob=0.5,
            ti_loss_init=0.0500,
            ti_loss_final=0.0499,
            nti_psnr_db=12.0,
            nti_psnr_space="image",
            support_distance=0.30,
            support_spread=0.05,
        )
    )
    assert h.status == "ok" and h.problems == []
    assert len(h.information) == 3 and "0.05000 -> 0.04990 (-0.2%" in h.information[0]
    report = HealthReport(ways=5, class_names=["bag"], sources=["support"], classes=[h])
    assert report.warnings() == [] and report.information() == h.information
    assert report.to_dict()["information"] == h.information


def test_remedy_names_options_that_run_where_it_is_read():
    from tinyshot.cli import build_parser

    without = remedy(fit=True, has_base=False)
    assert "--method support-only" in without and "--method support+base --base DIR" in without
    assert "--method support+base," not in without  # fails without --base
    with_base = remedy(fit=True, has_base=True)
    assert "--method support+base, which needs no generator" in with_base
    assert "--generator" in with_base and "Fashion-MNIST" in with_base
    parser = build_parser()
    for argv in (
        ["fit", "d", "--out", "o", "--method", "support-only"],
        ["fit", "d", "--out", "o", "--method", "support+base", "--base", "b"],
        ["fit", "d", "--out", "o", "--generator", "sd15-folder"],
    ):
        parser.parse_args(argv)
    assert "--" not in remedy()  # the demo and the benchmark name methods, not fit's options


def test_nti_psnr_prefers_the_recorded_image_figure_else_latent_mse():
    lat = torch.tensor([[-1.0, 1.0]])  # peak-to-peak 2
    assert nti_psnr({"nti_psnr_db": 27.5}, lat) == (27.5, "image")
    assert nti_psnr({"stats": {"nti_psnr_db": [20.0, 30.0]}}, None) == (25.0, "image")
    db, space = nti_psnr({"stats": {"inversion_recon_mse": [0.03, 0.05]}}, lat)
    assert space == "latent" and db == pytest.approx(10 * math.log10(4 / 0.04))  # 20 dB
    assert nti_psnr({"stats": {}}, lat) is None
    # Pixel-space model: the "latent" is the image in [-1, 1]; the MSE 0.12 is 15.2 dB.
    pix = {"model": {"pixel_space": True}, "stats": {"inversion_recon_mse": [0.12]}}
    db, space = nti_psnr(pix, None)
    assert space == "image" and db == pytest.approx(15.23, abs=0.01)


def test_leave_one_out_protonet_and_support_distances():
    # Two tight classes along two axes; the last class-0 image sits on class 1's axis.
    f = torch.tensor(
        [[1, 0.1, 0], [1, -0.1, 0], [1, 0, 0.1], [0.1, 1, 0], [-0.1, 1, 0], [0, 1, 0.1], [0, 0, 1]]
    )
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # class 2 has one image: skipped
    assert loo_protonet_accuracy(f, y, 3) == (6, 6)
    f2 = f.clone()
    f2[2] = torch.tensor([0.0, 1.0, 0.0])
    assert loo_protonet_accuracy(f2, y, 3) == (5, 6)
    fn = F.normalize(f, dim=-1)
    synth = F.normalize(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]), dim=-1)
    d = support_distances(synth, torch.tensor([0, 0]), fn, y, 3)
    near = float((1 - synth[0] @ fn[:3].t()).min())
    far = float((1 - synth[1] @ fn[:3].t()).min())
    assert d[0][0] == pytest.approx((near + far) / 2)
    assert d[0][1] is not None and d[2] == (None, None)


class _FlatTeacher:
    """Stands in for the ProtoNet teacher: features are the mean colour of the image."""

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def _features_batched(self, x, batch_size):
        return x.mean((2, 3))


def test_assess_flags_the_class_drawn_at_chance_and_not_the_healthy_one(tmp_path):
    ways, n = 3, 40
    colours = torch.eye(3)  # class c is pure colour c
    support = (colours.repeat_interleave(2, 0)[:, :, None, None].expand(6, 3, 8, 8) * 255).to(
        torch.uint8
    )
    support_labels = torch.arange(3).repeat_interleave(2)
    intended = torch.arange(ways).repeat_interleave(n)
    synth = colours[intended][:, :, None, None].expand(-1, 3, 8, 8).clone()
    # generator draws class 2 ("pig") as class 0's colour: the teacher says class 0.
    synth[intended == 2] = colours[0][:, None, None]
    probs = F.one_hot(synth.mean((2, 3)).argmax(1), ways).float()
    report = assess(
        teacher=_FlatTeacher(),
        class_names=["cat", "dog", "pig"],
        support=support,
        support_labels=support_labels,
        soft_labels={"tint": probs},
        intended={"tint": intended},
        synthetic={"tint": synth},
        spec_dir=tmp_path / "none",
        sources=["support", "synthetic:tint"],
    )
    by = {h.class_name: h for h in report.classes}
    assert by["cat"].agreement == 1.0 and by["cat"].status == "ok"
    assert by["pig"].agreement == 0.0 and by["pig"].status == "fail"
    assert [h.class_name for h in report.failed] == ["pig"]
    assert all("'pig'" in w for w in report.warnings())
    d = report.to_dict()
    assert d["generators"]["tint"]["agreement"] == pytest.approx(2 / 3)
    assert d["generators"]["tint"]["failed_classes"] == ["pig"]
    assert d["real_image_estimate"]["teacher_loo"] == {
        "accuracy": 1.0,
        "correct": 6,
        "images": 6,
        "method": "leave-one-out ProtoNet over the support images (teacher only)",
    }
    html = banner_html(d, "method tint")
    assert 'class="health"' in html and "1 warning(s)" in html
    line = "tint synthetic images fail: teacher agreement 66.7% (chance 33.3%), 1 of 3 classes fail"
    assert line + " (pig)" in html
    assert status_line("tint", d["generators"]["tint"]) == line + " (pig)"


def test_ti_loss_figure_only_for_generators_that_use_the_token(tmp_path):
    # The name baseline never reads the learned token: a weak TI fit is not its problem. With
    # agreement 1.0 the TI figure is information; with the images at chance it is a warning.
    ways, n = 2, 10
    colours = torch.eye(3)[:ways]
    support = (colours.repeat_interleave(2, 0)[:, :, None, None].expand(4, 3, 8, 8) * 255).to(
        torch.uint8
    )
    intended = torch.arange(ways).repeat_interleave(n)
    synth = colours[intended][:, :, None, None].expand(-1, 3, 8, 8).clone()
    probs = F.one_hot(intended, ways).float()
    at_chance = F.one_hot(torch.zeros_like(intended), ways).float()  # all labelled "cat"
    spec = tmp_path / "spec"
    spec.mkdir()
    for c in range(ways):  # a 0.5% drop, under the 2% bar
        (spec / f"{c}.json").write_text(
            '{"stats": {"ti_loss_init": 0.01, "ti_loss_final": 0.00995}}'
        )
    report = assess(
        teacher=_FlatTeacher(),
        class_names=["cat", "dog"],
        support=support,
        support_labels=torch.arange(ways).repeat_interleave(2),
        soft_labels={"name": probs, "ti": probs, "tint": at_chance},
        intended={"name": intended, "ti": intended, "tint": intended},
        synthetic={"name": synth, "ti": synth, "tint": synth},
        spec_dir=spec,
        sources=["support", "synthetic:name", "synthetic:ti", "synthetic:tint"],
    )
    by = {(h.generator, h.class_name): h for h in report.classes}
    assert by[("name", "cat")].status == "ok" and by[("name", "cat")].information == []
    assert by[("ti", "cat")].status == "ok" and by[("ti", "cat")].problems == []
    assert by[("ti", "cat")].ti_relative_drop == pytest.approx(0.005)
    assert len(by[("ti", "cat")].information) == 1
    informed = {(h.generator, h.class_name) for h in report.classes if h.information}
    assert informed == {("ti", "cat"), ("ti", "dog"), ("tint", "cat")}
    dog = by[("tint", "dog")]  # agreement 0: fails, and the TI figure explains it
    assert (
        dog.status == "fail" and len(dog.problems) == 2 and "textual inversion" in dog.problems[1]
    )
    assert by[("tint", "cat")].status == "ok"
    assert all("generator tint" in w for w in report.warnings())


def test_banner_without_warnings_and_with_holdout():
    d = HealthReport(ways=2, class_names=["a", "b"], sources=["support", "base"]).to_dict()
    d["real_image_estimate"] = {
        "teacher_loo": {"accuracy": 0.75, "images": 8},
        "holdout": {"images": 2, "student": 0.5, "teacher": 1.0},
    }
    html = banner_html(d)
    assert "Health: no warnings" in html and "teacher-labelled base-class images" in html
    assert "an estimate from few images" in html
    assert "75.0% of 8 images" in html and "student 50.0%, teacher 100.0%" in html


def test_hold_out_supports_removes_images_from_every_stage():
    from tinyshot.pipeline.episode_data import EpisodeData

    pil = [["a0", "a1", "a2"], ["b0", "b1"]]
    data = EpisodeData(
        class_names=["a", "b"],
        support_pil=pil,
        support=torch.arange(5).view(5, 1, 1, 1).expand(5, 3, 2, 2).to(torch.uint8),
        support_labels=torch.tensor([0, 0, 0, 1, 1]),
    )
    rest, hx, hy = hold_out_supports(data, 1, seed=3)
    assert [len(x) for x in rest.support_pil] == [2, 1] and hy.tolist() == [0, 1]
    held_ids = set(hx[:, 0, 0, 0].tolist())
    kept_ids = set(rest.support[:, 0, 0, 0].tolist())
    assert held_ids.isdisjoint(kept_ids) and held_ids | kept_ids == {0, 1, 2, 3, 4}
    names = ["a0", "a1", "a2", "b0", "b1"]
    assert [names[i] for i in sorted(kept_ids)] == [p for x in rest.support_pil for p in x]
    assert rest.support_labels.tolist() == [0, 0, 1]
    with pytest.raises(ConfigError, match=r"\['b'\] have <= 2 images"):
        hold_out_supports(data, 2, seed=3)


def test_multi_episode_blocks_pool_agreement_and_count_failed_episodes():
    def ep(a, status, loo):
        return {
            "sources": ["support", "synthetic:tint"],
            "chance": 0.2,
            "generators": {"tint": {"agreement": a, "chance": 0.2, "status": status}},
            "warnings": [f"w{a}"] if status != "ok" else [],
            "real_image_estimate": {"teacher_loo": {"correct": loo, "images": 10}},
        }

    out = combine_episodes([ep(0.2, "fail", 8), None, ep(0.6, "ok", 9)])
    t = out["generators"]["tint"]
    assert t["agreement"] == pytest.approx(0.4) and t["episodes"] == 2
    assert t["episodes_failed"] == 1 and t["status"] == "fail"
    assert out["warnings"] == ["episode 1: w0.2"]
    assert out["real_image_estimate"]["teacher_loo"]["accuracy"] == pytest.approx(17 / 20)
    bench = benchmark_health(
        [
            {
                "methods": {
                    "tint": {"accuracy": 0.8, "health": ep(0.3, "warn", 0)["generators"]["tint"]}
                }
            },
            {"methods": {"tint": {"accuracy": 0.8}}},
        ]
    )
    assert bench["generators"]["tint"]["episodes_warned"] == 1
    assert bench["generators"]["tint"]["agreement"] == pytest.approx(0.3)


def test_teacher_headroom_warns_below_three_points():
    # the concept-known demo episode: teacher 85.12, best student name 89.68
    hr = teacher_headroom({"teacher": 0.8512, "support": 0.8748, "name": 0.8968, "tint": 0.8894})
    assert hr["best_student"] == "name"
    assert hr["headroom"] == pytest.approx(-0.0456)
    assert hr["status"] == "warn" and "-4.6 points" in hr["warning"]
    ok = teacher_headroom({"teacher": 0.904, "support": 0.856, "tint": 0.872})
    assert ok["status"] == "ok" and ok["warning"] is None
    assert ok["headroom"] == pytest.approx(0.032)
    assert teacher_headroom({"support": 0.8}) is None
    assert teacher_headroom({"teacher": 0.8}) is None


def test_run_notes_lead_the_warnings_and_are_not_logged_twice(caplog):
    """A note (a teacher member left out) is a warning of the report, before the checks' own;
    it was logged where it arose, so log_warnings logs only the checks' problems."""
    import logging

    sick = judge(ClassHealth("tint", 1, "dog", 5, 200, agreement=0.40, intended_prob=0.3))
    note = "teacher 'student+conv4': its 'student' member ... is left out"
    names = ["cat", "dog", "elk", "fox", "gnu"]
    r = HealthReport(ways=5, class_names=names, sources=["support"], classes=[sick])
    r.notes = [note]
    assert r.warnings() == [note, *sick.problems] and len(sick.problems) == 1
    assert r.to_dict()["warnings"][0] == note
    assert "Health: 2 warning(s)" in banner_html(r.to_dict()) and "is left out" in banner_html(
        r.to_dict()
    )
    with caplog.at_level(logging.WARNING):
        r.log_warnings(logging.getLogger("test-health"))
    logged = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    summary = (
        "tint synthetic images warn: teacher agreement 40.0% (chance 20.0%), 1 of 1 classes warn"
    )
    assert logged == [f"health: {sick.problems[0]}", f"health: {summary} (dog)"]


def _two_shade_episode():
    """3 classes x 2 supports, each class two shades of its own colour (a spread above 0)."""
    base = torch.eye(3)
    shades = torch.stack([base * 0.9 + 0.05, base * 0.6 + 0.2], 1).reshape(6, 3)
    support = (shades[:, :, None, None].expand(6, 3, 8, 8) * 255).round().to(torch.uint8)
    return shades, support, torch.arange(3).repeat_interleave(2)


def test_memorisation_flags_copies_of_the_supports_and_not_new_images():
    """Exact copies pass the agreement check (they are their class) and warn on their own;
    images as far from the supports as the supports are from each other do not."""
    shades, support, labels = _two_shade_episode()
    intended = torch.arange(3).repeat_interleave(4)
    copies = support[torch.arange(6).view(3, 2).repeat(1, 2).view(-1)].float() / 255  # each twice
    # new images: a support's shade pushed along another channel, 0.55x the class's spread
    # (cosine 0.019 against 0.035) from their nearest support: not copies
    fresh = shades[2 * intended].clone()
    for i, c in enumerate(intended.tolist()):
        fresh[i, (c + 1 + i % 2) % 3] += 0.25
    fresh = fresh[:, :, None, None].expand(-1, 3, 8, 8).clone()
    probs = F.one_hot(intended, 3).float()
    report = assess(
        teacher=_FlatTeacher(),
        class_names=["cat", "dog", "pig"],
        support=support,
        support_labels=labels,
        soft_labels={"lora": probs, "tint": probs},
        intended={"lora": intended, "tint": intended},
        synthetic={"lora": copies, "tint": fresh},
        spec_dir=None,
        sources=["support", "synthetic:lora", "synthetic:tint"],
    )
    by = {(h.generator, h.class_name): h for h in report.classes}
    for name in ("cat", "dog", "pig"):
        copied, new = by[("lora", name)], by[("tint", name)]
        assert copied.agreement == 1.0 and copied.near_copies == 1.0
        assert copied.status == "warn" and "near-copies" in copied.problems[0]
        assert "train the LoRA less" in copied.problems[0]
        assert new.status == "ok" and new.near_copies == 0.0 and new.problems == []
    assert report.to_dict()["thresholds"]["memorisation_ratio"] == 0.25
    # one support per class: no spread, no verdict
    assert near_copy_share(torch.zeros(3), None) is None


def test_remedy_offers_lora_dafusion_unless_it_is_the_one_failing():
    """The LoRA method that keeps the class where the generator cannot draw it (img2img
    through the adapted model) is offered, also to a failing `lora` or `lora-tint` class;
    a failing lora-dafusion class is offered more LoRA steps."""
    from tinyshot.cli import build_parser

    assert "--method lora-dafusion (LoRA adapts" in remedy(fit=True, has_base=True)
    assert "--method lora-dafusion (LoRA" in remedy(fit=True, has_base=False, method="tint")
    assert "--method lora-dafusion" in remedy(fit=True, has_base=False, method="lora")
    again = remedy(fit=True, has_base=False, method="lora-dafusion")
    assert "--method lora" not in again and "more --lora-steps" in again
    assert "the lora-dafusion method" in remedy() and "the lora-dafusion method" in remedy(
        method="lora-tint"
    )
    assert "train the LoRA longer" in remedy(method="lora-dafusion")
    parser = build_parser()
    parser.parse_args(["fit", "d", "--out", "o", "--method", "lora-dafusion", "--lora-steps", "50"])


def test_lora_methods_read_their_own_specialization_figures(tmp_path):
    """TI's support loss explains TI methods, the LoRA folder's (lora.json) LoRA methods."""
    _, support, labels = _two_shade_episode()
    intended = torch.arange(3).repeat_interleave(2)
    at_chance = F.one_hot(torch.zeros_like(intended), 3).float()
    x = torch.rand(6, 3, 8, 8)
    ti, lora = tmp_path / "spec", tmp_path / "lora"
    ti.mkdir()
    lora.mkdir()
    for c in range(3):  # TI learned little, the LoRA much
        (ti / f"{c}.json").write_text('{"stats": {"ti_loss_init": 0.1, "ti_loss_final": 0.0999}}')
    stats = {"support_loss_init": [0.1] * 3, "support_loss_final": [0.05] * 3}
    (lora / "lora.json").write_text(json.dumps({"stats": stats}))
    report = assess(
        teacher=_FlatTeacher(),
        class_names=["cat", "dog", "pig"],
        support=support,
        support_labels=labels,
        soft_labels={"ti": at_chance, "lora": at_chance},
        intended={"ti": intended, "lora": intended},
        synthetic={"ti": x, "lora": x},
        spec_dir=ti,
        lora_dir=lora,
        sources=["support"],
    )
    by = {(h.generator, h.class_name): h for h in report.classes}
    assert by[("lora", "dog")].ti_relative_drop == pytest.approx(0.5)
    assert by[("ti", "dog")].ti_relative_drop == pytest.approx(0.001)
    assert any("textual inversion support loss" in p for p in by[("ti", "dog")].problems)
    assert not any("support loss" in p for p in by[("lora", "dog")].problems)
    # a failing class is offered lora-dafusion, a failing lora-dafusion class more training
    assert "the lora-dafusion method" in by[("ti", "dog")].problems[0]
    assert "the lora-dafusion method" in by[("lora", "dog")].problems[0]
