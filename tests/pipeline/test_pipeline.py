"""End-to-end: the same pipeline code as the demo and `fit`, with a tiny random generator and a
tiny teacher so it runs in seconds. Real Fashion-MNIST images (Debian package)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episode
from tinyshot.errors import ConfigError
from tinyshot.pipeline.config import METHODS, PipelineConfig, resolve_generator
from tinyshot.pipeline.episode import run_pipeline_episode
from tinyshot.pipeline.task_config import pipeline_config_from_methods, task_pipeline_config


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> str:
    from tinyshot.diffusion.model import build_tiny_diffusion_model

    folder = tmp_path_factory.mktemp("gen") / "tiny"
    build_tiny_diffusion_model(pixel_space=True, image_size=16, seed=0).save(folder)
    return str(folder)


def tiny_config(generator: str, methods=METHODS) -> PipelineConfig:
    return PipelineConfig(
        methods=tuple(methods),
        generator=generator,
        specialize={
            "ti_steps": 4,
            "num_inference_steps": 3,
            "nti_inner_steps": 2,
            "ti_batch_size": 2,
        },
        lora={"steps": 4, "batch_size": 2, "warmup_steps": 0, "rank": 4, "lr": 1e-3},
        synthetic_per_class=6,
        generation_batch_size=8,
        teacher="conv4",
        teacher_input_size=16,
        student="conv4",
        image_size=16,
        pretrain_student=True,
        pretrain={"iterations": 6, "batch_size": 16, "max_per_class": 20, "checkpoint_every": 3},
        base_images=30,
        distill={"iterations": 6, "batch_size": 15, "eval_every": 3, "checkpoint_every": 3},
        val_queries_per_class=3,
    ).validate()


@pytest.fixture(scope="module")
def fmnist():
    return (
        load_dataset("fashion-mnist", "novel-train"),
        load_dataset("fashion-mnist", "novel-test"),
        load_dataset("fashion-mnist", "base"),
    )


def test_episode_runs_every_method_and_resumes(tiny_generator, fmnist, tmp_path):
    support_ds, query_ds, base_ds = fmnist
    ep = sample_episode(support_ds, 3, 2, 4, seed=1, query_ds=query_ds)
    cfg = tiny_config(tiny_generator)
    res = run_pipeline_episode(ep, support_ds, query_ds, base_ds, cfg, tmp_path / "ep", seed=5)
    assert set(res) == set(METHODS)
    for m, r in res.items():
        assert 0.0 <= r["accuracy"] <= 1.0, m
        assert r["queries"] == 12
    # Every stage left its files behind.
    for g in ("ti", "dafusion", "tint", "lora", "lora-dafusion", "lora-tint"):
        assert len(list((tmp_path / "ep" / "synthetic" / g).glob("**/*.png"))) == 3 * 6
        assert (tmp_path / "ep" / "labels" / f"{g}.safetensors").is_file()
    for m in METHODS[1:]:
        hist = json.loads((tmp_path / "ep" / "students" / m / "history.json").read_text())
        assert [e["step"] for e in hist["curve"] if "val_acc" in e] == [0, 3, 6]
    # A finished episode is read back, not recomputed.
    again = run_pipeline_episode(ep, support_ds, query_ds, base_ds, cfg, tmp_path / "ep", seed=5)
    assert again == res


def test_killed_episode_resumes_to_identical_results(tiny_generator, fmnist, tmp_path):
    support_ds, query_ds, base_ds = fmnist
    ep = sample_episode(support_ds, 2, 2, 3, seed=2, query_ds=query_ds)
    cfg = tiny_config(tiny_generator, methods=("support+base", "tint"))
    full = run_pipeline_episode(ep, support_ds, query_ds, base_ds, cfg, tmp_path / "a", seed=9)
    # Simulate a kill after the synthetic images and labels exist but before the students end:
    # remove the result and one student's finished state, keep everything else.
    b = tmp_path / "b"
    run_pipeline_episode(ep, support_ds, query_ds, base_ds, cfg, b, seed=9)
    (b / "result.json").unlink()
    for f in (b / "students" / "tint").iterdir():
        f.unlink()
    resumed = run_pipeline_episode(ep, support_ds, query_ds, base_ds, cfg, b, seed=9)
    assert {m: r["accuracy"] for m, r in resumed.items()} == {
        m: r["accuracy"] for m, r in full.items()
    }


def test_method_configs_merge_and_conflict():
    cfg = pipeline_config_from_methods({"tint": {"alpha": 0.5}, "teacher": {}})
    assert cfg.methods == ("teacher", "tint") and cfg.alpha == 0.5
    with pytest.raises(ConfigError, match="alpha"):
        pipeline_config_from_methods({"tint": {"alpha": 0.5}, "ti": {"alpha": 1.0}})
    with pytest.raises(ConfigError, match="unknown method"):
        pipeline_config_from_methods({"magic": {}})
    with pytest.raises(ConfigError, match="unknown config key"):
        PipelineConfig.from_dict({"alpah": 1.0})


def test_benchmark_picks_the_dataset_generator_unless_a_method_names_one():
    assert task_pipeline_config({"tint": {}}, "glyphs").generator == "glyphs"
    assert task_pipeline_config({"tint": {}}, "fashion-mnist").generator == "fashion-mnist"
    assert task_pipeline_config({"tint": {}}, "imagefolder").generator == "fashion-mnist"
    pool = task_pipeline_config({"tint": {}}, "fashion-mnist", "novel-pool")
    assert pool.generator == "fashion-mnist-known"  # the concept-known world's supports
    named = {"tint": {"generator": "/models/sd15"}, "teacher": {}}
    assert task_pipeline_config(named, "glyphs").generator == "/models/sd15"
    assert task_pipeline_config(named, "fashion-mnist", "novel-pool").generator == "/models/sd15"
    assert resolve_generator("glyphs").endswith("assets/generators/glyphs")
    assert resolve_generator("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"


def test_concurrent_episodes_pretrain_the_student_once(fmnist, tmp_path, monkeypatch):
    """Two workers that need the same uncached backbone: one pretrains, the other waits for it."""
    import threading
    import time

    import tinyshot.distill.pretrain_student as ps
    from tinyshot.pipeline import student_stage

    monkeypatch.setenv("TINYSHOT_CACHE", str(tmp_path))
    monkeypatch.setattr(student_stage, "read_pretrain_done", lambda path: True)
    calls: list[int] = []

    def fake_pretrain(arch, ds, cfg, out):
        calls.append(1)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        path = ps.checkpoint_path(arch, ds, cfg, out)
        path.write_bytes(b"done")

    monkeypatch.setattr(ps, "pretrain_student", fake_pretrain)
    cfg = tiny_config("unused", methods=("support+base",))
    base = fmnist[2]
    paths: list[Path | None] = []
    threads = [
        threading.Thread(
            target=lambda: paths.append(student_stage.pretrained_student_path(base, cfg))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(paths) == 2 and paths[0] == paths[1]
    assert paths[0] is not None and paths[0].read_bytes() == b"done"


def _write_imagefolder(root: Path, ds, classes: list[int], k: int) -> None:
    for c in classes:
        d = root / ds.class_names[c].replace("/", "-")
        d.mkdir(parents=True)
        for j, i in enumerate(ds.indices_of(c)[:k]):
            ds.load_image(int(i)).save(d / f"{j}.png")


def test_fit_exports_a_working_onnx_model_and_resumes(tiny_generator, fmnist, tmp_path, capsys):
    from tinyshot.cli import main
    from tinyshot.models.export import OnnxClassifier

    support_ds, query_ds, _ = fmnist
    data = tmp_path / "data"
    _write_imagefolder(data, support_ds, [0, 2], k=3)
    (data / "Sandal" / "notes.txt").write_text("not an image")  # skipped with a warning
    cfg_file = tmp_path / "cfg.json"
    cfg = tiny_config(tiny_generator, methods=("tint",)).to_dict()
    cfg.pop("methods")
    cfg_file.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    argv = [
        "fit",
        str(data),
        "--out",
        str(run),
        "--config",
        str(cfg_file),
        "--base",
        "fashion-mnist:base",
    ]
    assert main(argv) == 0
    for name in ("model.onnx", "classes.json", "report.html", "config.json", "fit.json", "log.txt"):
        assert (run / name).is_file(), name
    html = (run / "report.html").read_text()
    # 2 classes: 3 supports + 6 generated + 5 alpha-sweep images each
    assert html.count("data:image/png;base64") == 2 * (3 + 6 + 5)
    clf = OnnxClassifier(run / "model.onnx")
    assert clf.class_names == ["Sandal", "Sneaker"]
    imgs = [query_ds.load_image(int(i)) for i in query_ds.indices_of(0)[:2]]
    pred, probs = clf.predict(imgs)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert pred == [clf.class_names[i] for i in probs.argmax(1)]
    assert json.loads((run / "fit.json").read_text())["torch_threads"] == 1  # conftest's count
    before = (run / "model.onnx").read_bytes()
    assert main(argv) == 0  # resume: every stage is found finished
    assert (run / "model.onnx").read_bytes() == before
    # predict through the CLI on a folder
    q = tmp_path / "q"
    q.mkdir()
    imgs[0].save(q / "a.png")
    capsys.readouterr()
    assert main(["predict", str(run / "model.onnx"), str(q)]) == 0
    assert "a.png" in capsys.readouterr().out


def test_fit_with_the_lora_method(tiny_generator, fmnist, tmp_path, capsys):
    """`fit --method lora --lora-steps N`: the LoRA folder in the run, its images, the health
    record reading the LoRA folder's figures, and an ONNX model; config.json has the LoRA
    settings (a tint run's does not)."""
    from tinyshot.cli import main

    support_ds, _, _ = fmnist
    data = tmp_path / "data"
    _write_imagefolder(data, support_ds, [0, 2], k=3)
    cfg = tiny_config(tiny_generator, methods=("lora",)).to_dict()
    cfg.pop("methods")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    argv = ["fit", str(data), "--out", str(run), "--config", str(tmp_path / "cfg.json"),
            "--method", "lora", "--lora-steps", "3"]  # fmt: skip
    assert main(argv) == 0
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((run / "synthetic" / "lora").glob("**/*.png"))) == 2 * 6
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["methods"] == ["lora"] and config["lora"]["steps"] == 3
    health = json.loads((run / "health.json").read_text())
    assert set(health["generators"]) == {"lora"}
    lora = json.loads((run / "lora" / "lora.json").read_text())["stats"]
    assert [h["ti_loss_init"] for h in health["classes"]] == lora["support_loss_init"]
    assert (run / "model.onnx").is_file() and "health:  lora synthetic images" in (
        capsys.readouterr().out
    )
    assert "lora" not in tiny_config(tiny_generator, methods=("tint",)).to_dict()


def test_fit_refuses_bad_input_with_clear_errors(tiny_generator, tmp_path, capsys):
    from tinyshot.cli import main

    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (data / "dogs").mkdir()
    Image.new("RGB", (32, 32)).save(data / "cats" / "a.png")
    (data / "dogs" / "b.png").write_bytes(b"not a png")
    assert (
        main(["fit", str(data), "--out", str(tmp_path / "run"), "--generator", tiny_generator]) == 2
    )
    err = capsys.readouterr().err
    assert "b.png" in err and "Traceback" not in err
    assert main(["fit", str(data), "--out", str(tmp_path / "r2"), "--alpha", "1.5"]) == 2
    assert "alpha" in capsys.readouterr().err


def test_demo_paired_differences_are_per_episode_tint_minus_other():
    from tinyshot.pipeline.demo import format_table, paired_vs_tint, summarize

    eps = [
        {"tint": {"accuracy": 0.80, "queries": 100}, "ti": {"accuracy": 0.75, "queries": 100}},
        {"tint": {"accuracy": 0.90, "queries": 100}, "ti": {"accuracy": 0.87, "queries": 100}},
        {"tint": {"accuracy": 0.70, "queries": 100}, "ti": {"accuracy": 0.66, "queries": 100}},
    ]
    (d,) = paired_vs_tint(eps, ["ti", "tint"])
    assert (d["a"], d["b"], d["episodes"]) == ("tint", "ti", 3)
    assert d["mean_difference"] == pytest.approx(0.04)
    # t(2, 0.975) = 4.3027; differences 0.05, 0.03, 0.04 -> sd 0.01
    assert d["half_width"] == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5)
    table = format_table(summarize(eps, ["ti", "tint"]), None, [d])
    assert "tint - ti" in table and "+4.00 +-  2.48" in table
    assert paired_vs_tint(eps, ["ti"]) == []
    from tinyshot.evaluation.health_summary import teacher_headroom

    hr = teacher_headroom({"teacher": 0.81, "ti": 0.76, "tint": 0.80})
    table = format_table(summarize(eps, ["ti", "tint"]), None, [d], hr)
    assert "teacher headroom over the best student (tint): +1.00 points  WARNING" in table


def test_no_stage_holds_a_whole_synthetic_set(tiny_generator, fmnist, tmp_path, monkeypatch):
    """The episode and fit read stores through views and mapped files only (issue 31): a call
    that loads a whole store fails the run here."""
    from tinyshot.diffusion.store import ImageStore
    from tinyshot.pipeline.fit import fit

    def whole_store(self, *a, **k):
        raise AssertionError("a stage loaded a whole synthetic set into memory")

    real_load_images = ImageStore.load_images

    def bounded(self, class_index=None, limit=None):
        assert limit is not None, "load_images without a limit"
        return real_load_images(self, class_index, limit)

    monkeypatch.setattr(ImageStore, "load_tensor", whole_store)
    monkeypatch.setattr(ImageStore, "load_images", bounded)
    support_ds, query_ds, base_ds = fmnist
    ep = sample_episode(support_ds, 2, 2, 3, seed=3, query_ds=query_ds)
    cfg = tiny_config(tiny_generator, methods=("support+base", "tint"))
    res = run_pipeline_episode(ep, support_ds, query_ds, base_ds, cfg, tmp_path / "ep", seed=1)
    assert 0.0 <= res["tint"]["accuracy"] <= 1.0
    mapped = np.load(tmp_path / "ep" / "student_images" / "tint.npy", mmap_mode="r")
    assert mapped.shape == (2 * 6, 3, 16, 16) and mapped.dtype == np.uint8

    data = tmp_path / "data"
    for c in ("cat", "dog"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            support_ds.load_image(i + (3 if c == "dog" else 0)).save(data / c / f"{i}.png")
    fit(data, tmp_path / "fit", tiny_config(tiny_generator, methods=("tint",)), seed=0)
    assert (tmp_path / "fit" / "student_images" / "tint.npy").is_file()
