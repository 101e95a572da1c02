"""Health checks through `fit` and an episode: the tiny random generator draws noise, so the
teacher labels its images near chance and the checks must say so (evaluation.health)."""

from __future__ import annotations

import json

from test_pipeline import _write_imagefolder, fmnist, tiny_config, tiny_generator  # noqa: F401

from tinyshot.utils.io import read_json


def test_fit_strict_stops_on_a_failed_class_and_keeps_finished_work(
    tiny_generator,  # noqa: F811
    fmnist,  # noqa: F811
    tmp_path,
    capsys,
):
    from tinyshot.cli import main

    support_ds, _, _ = fmnist
    data = tmp_path / "data"
    _write_imagefolder(data, support_ds, [0, 2], k=3)
    cfg = tiny_config(tiny_generator, methods=("tint",)).to_dict()
    cfg.pop("methods")
    cfg["synthetic_per_class"] = 12
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    argv = ["fit", str(data), "--out", str(run), "--config", str(tmp_path / "cfg.json")]
    argv += ["--holdout", "1"]
    capsys.readouterr()
    assert main([*argv, "--strict"]) == 3
    err = capsys.readouterr().err
    health = read_json(run / "health.json")
    failed = health["generators"]["tint"]["failed_classes"]
    assert failed and all(f"'{c}'" in err for c in failed)
    assert "--strict" in err and "nothing was distilled" in err and "Traceback" not in err
    for h in health["classes"]:
        if h["class_name"] in failed:  # 12 images, chance 50%: floor 50 + 2*14.4 = 78.9%
            assert h["agreement"] < 0.789 and h["images"] == 12
    # Finished stages are kept; nothing was distilled or exported.
    assert (run / "labels" / "tint.safetensors").is_file()
    assert len(list((run / "synthetic" / "tint").glob("**/*.png"))) == 2 * 12
    assert not (run / "model.onnx").exists() and not (run / "student").exists()
    # One held-out support per class; the teacher was built without it.
    assert health["real_image_estimate"]["holdout"]["images"] == 2
    assert health["real_image_estimate"]["teacher_loo"]["images"] == 4  # 2 classes x 2 left

    # Without --strict the same run resumes, distils, and says loudly what is wrong.
    assert main(argv) == 0
    summary = read_json(run / "fit.json")
    est = summary["health"]["real_image_estimate"]["holdout"]
    assert 0.0 <= est["student"] <= 1.0 and 0.0 <= est["teacher"] <= 1.0
    assert summary["health"]["sources"] == ["support", "synthetic:tint"]
    html = (run / "report.html").read_text()
    banner = html.index('class="health"')
    assert banner < html.index("<h2>")  # the first screen
    assert "WARNING: class" in html and "The student learned from" in html
    assert "held out of every training stage" in html and "an estimate from few images" in html
    log_text = (run / "log.txt").read_text()
    assert any(
        "WARNING" in ln and "health:" in ln and failed[0] in ln for ln in log_text.splitlines()
    )


def test_episode_records_health_for_every_generator(tiny_generator, fmnist, tmp_path):  # noqa: F811
    from tinyshot.data.sampler import sample_episode
    from tinyshot.pipeline.episode import run_pipeline_episode

    support_ds, query_ds, base_ds = fmnist
    ep = sample_episode(support_ds, 3, 2, 4, seed=1, query_ds=query_ds)
    methods = ("teacher", "support+base", "tint", "ti", "lora", "lora-tint")
    cfg = tiny_config(tiny_generator, methods=methods)
    res = run_pipeline_episode(ep, support_ds, query_ds, base_ds, cfg, tmp_path / "ep", seed=5)
    health = read_json(tmp_path / "ep" / "health.json")
    assert set(health["generators"]) == {"ti", "tint", "lora", "lora-tint"}
    assert health["sources"] == ["support", "base"] + [
        f"synthetic:{g}" for g in ("ti", "tint", "lora", "lora-tint")
    ]
    assert len(health["classes"]) == 4 * 3
    lora = read_json(tmp_path / "ep" / "lora" / "lora.json")["stats"]
    for h in health["classes"]:
        assert h["images"] == 6 and 0.0 <= h["agreement"] <= 1.0 and h["chance"] == 1 / 3
        assert h["ti_loss_init"] is not None and h["support_distance"] is not None
        assert (h["nti_psnr_db"] is not None) == (h["generator"] in ("tint", "lora-tint"))
        assert "near_copies" in h
        if h["generator"].startswith("lora"):  # the LoRA folder's figures, not TI's
            assert h["ti_loss_init"] == lora["support_loss_init"][h["class_index"]]
    assert res["tint"]["health"] == health["generators"]["tint"]
    assert read_json(tmp_path / "ep" / "result.json")["health"] == health


def test_demo_report_opens_with_the_pooled_health_banner(fmnist, tmp_path):  # noqa: F811
    from tinyshot.data.sampler import sample_episode
    from tinyshot.evaluation.health_summary import combine_episodes
    from tinyshot.pipeline.config import PipelineConfig
    from tinyshot.pipeline.demo import DemoConfig
    from tinyshot.pipeline.report_builder import build_demo_report

    support_ds, query_ds, _ = fmnist
    ep = sample_episode(support_ds, 2, 1, 1, seed=0, query_ds=query_ds)
    block = {
        "sources": ["support", "base", "synthetic:tint"],
        "chance": 0.5,
        "generators": {"tint": {"agreement": 0.45, "chance": 0.5, "status": "fail"}},
        "warnings": ["class 'Sandal', generator tint: the teacher labels 40.0% ..."],
        "real_image_estimate": {"teacher_loo": {"correct": 3, "images": 4}},
    }
    health = combine_episodes([block, block])
    cfg = DemoConfig(ways=2, shots=1, pipeline=PipelineConfig(methods=("teacher",)))
    results = {
        "summary": {"teacher": {"mean": 0.8, "ci95": 0.1, "episodes": 2, "queries": 2}},
        "config": cfg.to_dict(),
        "frechet": None,
        "health": health,
    }
    html = build_demo_report(tmp_path, results, [ep], support_ds, query_ds, cfg).read_text()
    assert html.index('class="health"') < html.index("<h2>")
    assert "2 warning(s)" in html and "WARNING: episode 2: class &#x27;Sandal&#x27;" in html
    assert (
        "tint synthetic images fail: teacher agreement 45.0% (chance 50.0%), 2 of 2 episodes fail"
        in html
    )
    assert "75.0% of 8 images" in html


def test_fit_stdout_says_each_generators_status_and_nothing_synthetic_without_images():
    from tinyshot.pipeline.commands import health_lines

    classes = [
        {"generator": "tint", "class_name": c, "problems": [f"{c}: low agreement"]}
        for c in ("cat", "dog")
    ] + [{"generator": "tint", "class_name": "fox", "problems": []}]
    health = {
        "generators": {
            "tint": {
                "agreement": 0.234,
                "chance": 1 / 3,
                "classes": 3,
                "status": "fail",
                "failed_classes": ["cat"],
                "warned_classes": ["dog"],
            }
        },
        "classes": classes,
        "warnings": ["the teacher's student member is left out", "cat: low agreement"],
    }
    lines = health_lines(health)
    assert lines[0] == (
        "health:  tint synthetic images fail: teacher agreement 23.4% (chance 33.3%), "
        "1 of 3 classes fail (cat), 1 of 3 classes warn (dog)"
    )
    assert lines[1] == "health:  1 note(s) about the run; see the log"
    # a support-only fit made no synthetic images: its one note is not about them
    only_note = health_lines({"generators": {}, "classes": [], "warnings": ["a note"]})
    assert only_note == ["health:  1 note(s) about the run; see the log"]
    assert health_lines({"generators": {}, "classes": [], "warnings": []}) == []
