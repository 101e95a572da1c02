"""Shipping a fit's student: `fit --quantize int8`, `tinyshot quantize` (calibrated on the
run's own images, never held-out supports), `predict RUN_DIR --int8`, `episode-folder`, the
`bench inference` deployment table, and the EfficientNet-Lite0 student's pipeline defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tinyshot.cli import main
from tinyshot.data.episode_io import write_episodes
from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episode


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 2-way 3-shot episode of Fashion-MNIST's novel classes (5 queries per class), its
    supports written by `episode-folder`, and a tiny `fit --quantize int8 --holdout 1` on them
    (tiny generator, Conv4 teacher and student at 16 px, 4 distillation iterations)."""
    from tinyshot.diffusion.model import build_tiny_diffusion_model

    tmp = tmp_path_factory.mktemp("deploy")
    support_ds = load_dataset("fashion-mnist", "novel-train")
    query_ds = load_dataset("fashion-mnist", "novel-test")
    ep = sample_episode(support_ds, 2, 3, 5, seed=3, query_ds=query_ds)
    meta = {
        "dataset": {"name": "fashion-mnist", "split": "novel-train", "query_split": "novel-test"},
        "ways": 2,
        "shots": 3,
        "queries": 5,
        "seed": 3,
    }
    episodes = write_episodes(tmp / "episodes.json", [ep], meta)
    data = tmp / "data"
    assert main(["episode-folder", f"{episodes}:0", "--out", str(data)]) == 0
    gen = tmp / "gen"
    build_tiny_diffusion_model(pixel_space=True, image_size=16, seed=0).save(gen)
    cfg = {
        "generator": str(gen),
        "specialize": {"num_inference_steps": 2},
        "synthetic_per_class": 5,
        "teacher": "conv4",
        "teacher_input_size": 24,
        "image_size": 16,
        "distill": {"iterations": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2},
    }
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    run = tmp / "run"
    argv = ["fit", str(data), "--out", str(run), "--config", str(tmp / "cfg.json")]
    argv += ["--method", "name", "--holdout", "1", "--quantize", "int8"]
    assert main(argv) == 0
    return {"episodes": episodes, "episode": ep, "data": data, "run": run, "config": cfg}


def test_fit_trains_and_ships_the_mobile_student(fitted, tmp_path, capsys):
    """`--student efficientnet-lite0` alone: fit's config records its own 128 px, the exported
    model is the ImageNet student, and --quantize int8 calibrates on the supports."""
    cfg = {k: v for k, v in fitted["config"].items() if k != "image_size"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    argv = ["fit", str(fitted["data"]), "--out", str(run), "--config", str(tmp_path / "cfg.json")]
    argv += ["--method", "support-only", "--student", "efficientnet-lite0", "--quantize", "int8"]
    assert main(argv) == 0
    assert "calibrated on 6 support + 0 synthetic images" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())["config"]
    assert (saved["student"], saved["image_size"]) == ("efficientnet-lite0", 128)
    from tinyshot.models.export import OnnxClassifier

    fp32, int8 = OnnxClassifier(run / "model.onnx"), OnnxClassifier(run / "model.int8.onnx")
    assert (fp32.arch, fp32.input_size, int8.precision) == ("efficientnet-lite0", 128, "int8")


def test_episode_folder_writes_the_supports_only(fitted):
    ep, data = fitted["episode"], fitted["data"]
    assert sorted(p.name for p in data.iterdir()) == sorted(ep.classes)
    assert sum(1 for _ in data.rglob("*.png")) == 6  # 2 x 3 supports, no queries
    assert main(["episode-folder", str(fitted["episodes"]), "--out", str(data)]) == 2


def test_fit_quantize_writes_an_int8_model_that_predict_uses(fitted, capsys):
    run = fitted["run"]
    record = json.loads((run / "quantize.json").read_text())
    assert (run / "model.int8.onnx").is_file()
    cal = record["calibration"]
    # 2 classes x (3 supports - 1 held out) + 2 x 5 synthetic images
    assert (cal["supports"], cal["synthetic"], cal["held_out_supports_left_out"]) == (4, 10, 2)
    assert record["top1_agreement_with_fp32"]["images"] == 14
    assert main(["predict", str(run), str(fitted["data"]), "--int8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "int8" and out["model"].endswith("model.int8.onnx")
    assert len(out["results"]) == 6
    assert main(["predict", str(run), str(fitted["data"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"


def test_calibration_reads_only_the_runs_supports_and_synthetic_images(
    fitted, tmp_path, monkeypatch, capsys
):
    """Every file `tinyshot quantize` opens is a support the run trained on or one of its
    synthetic images; the held-out supports are never opened."""
    from tinyshot.pipeline.quantize_run import run_images

    run = shutil.copytree(fitted["run"], tmp_path / "run")
    listed = run_images(run)
    assert len(listed.held_out) == 2 and not set(listed.held_out) & set(listed.supports)
    # they are the supports fit itself held out (its own loading and split)
    import torch

    from tinyshot.data.transforms import images_to_uint8
    from tinyshot.evaluation.holdout import split_supports
    from tinyshot.pipeline.config import PipelineConfig
    from tinyshot.pipeline.fit import _load_user_classes
    from tinyshot.utils.seed import derive_seed

    record = json.loads((run / "config.json").read_text())
    config = PipelineConfig.from_dict(record["config"])
    data = _load_user_classes(record["data_dir"], config)
    _, held = split_supports(data, 1, derive_seed(record["seed"], "holdout") % 2**63)
    mine = images_to_uint8([Image.open(p).convert("RGB") for p in listed.held_out], 16)
    assert torch.equal(mine, held.support)
    allowed = {p.resolve() for p in listed.supports}
    allowed |= {p.resolve() for p in (run / "synthetic").rglob("*.png")}
    opened: list[Path] = []
    real_open = Image.open

    def spy(fp, *a, **k):
        if isinstance(fp, str | Path):
            opened.append(Path(fp).resolve())
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", spy)
    assert main(["quantize", str(run), "--calibration-images", "9"]) == 0
    assert "calibrated on 4 support + 5 synthetic images" in capsys.readouterr().out
    images = [p for p in opened if p.suffix == ".png"]
    assert images and set(images) <= allowed
    assert not {p.resolve() for p in listed.held_out} & set(opened)
    assert not any("novel-test" in str(p) for p in opened)


def test_quantize_errors_name_the_folder_or_option(fitted, tmp_path, capsys):
    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    assert f"{tmp_path / 'nope'}: no such run folder" in error(["quantize", str(tmp_path / "nope")])
    assert "not a fit run folder" in error(["quantize", str(tmp_path)])
    run = shutil.copytree(fitted["run"], tmp_path / "run")
    assert "--calibration-images must be >= 1" in error(
        ["quantize", str(run), "--calibration-images", "0"]
    )
    assert "fp32_convs=9, but the model has only 4 convolution(s)" in error(
        ["quantize", str(run), "--fp32-convs", "9"]
    )
    assert main(["quantize", str(run), "--fp32-convs", "1"]) == 0
    settings = json.loads((run / "quantize.json").read_text())["settings"]
    assert settings["fp32_leading_convs"] == 1
    capsys.readouterr()
    # a support added to the data folder since the fit: the held-out split can no longer be
    # reproduced, so no support is used (fit.json says how many the fit trained on)
    data = shutil.copytree(fitted["data"], tmp_path / "data")
    first = sorted(data.iterdir())[0]
    shutil.copy(next(first.glob("*.png")), first / "added.png")
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "data_dir": str(data)}))
    assert main(["quantize", str(run)]) == 0
    assert "calibrated on 0 support + 10 synthetic images" in capsys.readouterr().out
    (run / "model.int8.onnx").unlink()
    err = error(["predict", str(run), str(fitted["data"]), "--int8"])
    assert "no model.int8.onnx" in err and f"tinyshot quantize {run}" in err
    # no supports left (data folder gone) and no synthetic images: nothing to calibrate on
    record = json.loads((run / "config.json").read_text())
    record["data_dir"] = str(tmp_path / "moved")
    (run / "config.json").write_text(json.dumps(record))
    shutil.rmtree(run / "synthetic")
    assert f"{run}: no images to calibrate on" in error(["quantize", str(run)])
    (run / "model.onnx").unlink()
    err = error(["quantize", str(run)])
    assert f"{run}: no model.onnx" in err and "rerun the same `tinyshot fit" in err


def test_bench_inference_scores_runs_on_their_episode(fitted, tmp_path, capsys):
    run = shutil.copytree(fitted["run"], tmp_path / "run")
    (run / "model.int8.onnx").unlink()  # quantized for the bench only, not saved in the run
    record = (run / "quantize.json").read_text()
    out = tmp_path / "bench.json"
    argv = ["bench", "inference", "--runs", str(run), "--episode", f"{fitted['episodes']}:0"]
    assert main([*argv, "--budget", "0", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "b1 ms p95" in table and "accuracy on episodes.json:0 (10 queries)" in table
    result = json.loads(out.read_text())
    fp32, int8 = result["rows"]
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
    assert fp32["queries"] == int8["queries"] == 10 and 0 <= int8["accuracy"] <= 1
    assert int8["size_ratio_vs_fp32"] < 0.5 and int8["speedup_latency_vs_fp32"] > 0
    assert fp32["latency_calls"] >= 50 and fp32["latency_ms_p95"] >= fp32["latency_ms_median"]
    assert result["settings"]["threads"] == 1 and not (run / "model.int8.onnx").exists()
    assert (run / "quantize.json").read_text() == record


def test_bench_inference_built_students_and_option_checks(capsys):
    argv = ["bench", "inference", "--students", "conv4@16,efficientnet-lite0@32"]
    assert main([*argv, "--budget", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["arch"], r["precision"], r["input_size"]) for r in rows] == [
        ("conv4", "fp32", 16),
        ("conv4", "int8", 16),
        ("efficientnet-lite0", "fp32", 32),
        ("efficientnet-lite0", "int8", 32),
    ]
    assert rows[2]["parameters"] == 3_371_008 + 1280 * 5 + 5
    assert all(r["accuracy"] is None for r in rows) and "size_ratio_vs_fp32" in rows[3]
    for bad, says in (
        (["--students", "mobilenet"], "unknown student 'mobilenet'"),
        (["--precisions", "fp16"], "--precisions"),
        (["--runs", "x", "--batches", "1"], "--runs: options of the deploy table"),
        (["--table", "deploy", "--vits", "dinov2-small"], "--vits: options of --table runtimes"),
        (["--students", "conv4@16", "--episode", "e.json"], "--episode scores trained models"),
    ):
        assert main(["bench", "inference", *bad, "--budget", "0"]) == 2
        assert says in capsys.readouterr().err


def test_student_brings_its_own_pipeline_defaults():
    """EfficientNet-Lite0 runs at 128 px and fine-tunes briefly on base classes unless the
    configuration says otherwise; Conv4 and ResNet12 keep PipelineConfig's defaults."""
    from tinyshot.pipeline.config import PipelineConfig

    lite = PipelineConfig.from_dict({"student": "efficientnet-lite0"})
    assert lite.image_size == 128
    assert lite.pretrain == {"iterations": 300, "batch_size": 64, "lr": 0.01, "max_per_class": 2000}
    mine = PipelineConfig.from_dict(
        {"student": "efficientnet-lite0", "image_size": 96, "pretrain": {"lr": 0.02}}
    )
    assert mine.image_size == 96 and mine.pretrain["lr"] == 0.02
    assert mine.pretrain["iterations"] == 300
    conv = PipelineConfig.from_dict({"student": "conv4"})
    assert conv.image_size == 32 and conv.pretrain["iterations"] == 1500
    # a run's config.json (every key written out) reloads as it was
    assert PipelineConfig.from_dict(mine.to_dict()) == mine
