"""`tinyshot specialize`, `tinyshot generate` and `tinyshot bench generate` end to end."""

from __future__ import annotations

import json

import pytest

from tinyshot.cli import main
from tinyshot.diffusion.bench import synthetic_episode
from tinyshot.diffusion.model import build_tiny_diffusion_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_diffusion_model(seed=11).save(tmp_path_factory.mktemp("m") / "tiny-sd")


@pytest.fixture
def data_dir(tmp_path):
    images, _ = synthetic_episode(2, 2, size=28, seed=3)
    for name, imgs in zip(["sandal", "boot"], images):
        (tmp_path / "data" / name).mkdir(parents=True)
        for k, im in enumerate(imgs):
            im.save(tmp_path / "data" / name / f"{k}.png")
    return tmp_path / "data"


def test_specialize_then_generate(model_dir, data_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"ti_steps": 2, "num_inference_steps": 3, "upscale": "bilinear"}))
    spec = tmp_path / "spec"
    argv = ["specialize", str(data_dir), "--model", str(model_dir), "--out", str(spec),
            "--config", str(cfg), "--inversion", "npi"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((spec / "0.json").read_text())
    assert meta["class_name"] == "boot" and meta["inversion"] == "npi"  # classes sorted
    assert meta["config"]["ti_steps"] == 2 and (spec / "log.txt").is_file()
    gen = tmp_path / "gen"
    argv = ["generate", "--artifacts", str(spec), "--model", str(model_dir), "--method", "tint",
            "--per-class", "2", "--out", str(gen), "--batch-size", "3"]  # fmt: skip
    assert main(argv) == 0
    lines = (gen / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all((gen / json.loads(ln)["path"]).is_file() for ln in lines)
    assert main(argv) == 0  # resuming a finished run is a no-op
    assert len((gen / "manifest.jsonl").read_text().splitlines()) == 4
    out = capsys.readouterr().out
    assert "4 images" in out


def test_clear_errors(model_dir, data_dir, tmp_path, capsys):
    assert main(["specialize", str(data_dir), "--model", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "s")]) == 2  # fmt: skip
    assert "model folder not found" in capsys.readouterr().err
    (data_dir / "empty").mkdir()
    assert main(["specialize", str(data_dir), "--model", str(model_dir),
                 "--out", str(tmp_path / "s")]) == 2  # fmt: skip
    assert "has no images" in capsys.readouterr().err
    assert main(["generate", "--artifacts", str(tmp_path), "--model", str(model_dir),
                 "--per-class", "1", "--out", str(tmp_path / "g"), "--alpha", "1.5"]) == 2  # fmt: skip
    assert "alpha" in capsys.readouterr().err
    assert main(["generate", "--artifacts", str(tmp_path / "none"), "--model", str(model_dir),
                 "--per-class", "1", "--out", str(tmp_path / "g")]) == 2  # fmt: skip
    assert "artifact folder not found" in capsys.readouterr().err


def test_bench_generate_json(capsys):
    argv = ["bench", "generate", "--ti-steps", "1", "--steps", "2", "--nti-inner-steps", "1",
            "--images", "4", "--batch-size", "4", "--reference-images", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    steps = [r["step"] for r in res["rows"]]
    assert steps[0].startswith("Textual inversion") and steps[1].startswith("Null-text")
    timed = [r for r in res["rows"] if not r["step"].startswith("All-in")]
    assert len(timed) == 5 and all(r["total_s"] > 0 and r["per_unit_s"] > 0 for r in timed)
    assert steps[2] == "LoRA training (rank 16, 8 images)"  # 5 steps, DataDream's batch
    assert res["rows"][-1]["per_generated_image_s"] == pytest.approx(
        res["info"]["all_in_per_image_s"]
    )
    assert res["info"]["speedup"] > 0
    # the one-at-a-time reference (diffusers' scheduler.step) makes the same images
    assert res["info"]["max_pixel_diff"] is not None and res["info"]["max_pixel_diff"] <= 2
