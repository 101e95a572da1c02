"""train-teacher / pretrain-student / bench commands end to end on Fashion-MNIST (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyshot.cli import main
from tinyshot.data.fashion_mnist import DEFAULT_ROOT

needs_fmnist = pytest.mark.skipif(
    not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@needs_fmnist
def test_train_teacher_and_pretrain_student_cli(tmp_path, capsys):
    run = tmp_path / "teacher"
    args = [
        "train-teacher",
        "--dataset",
        "fashion-mnist",
        "--backbone",
        "conv4",
        "--input-size",
        "16",
        "--run-dir",
        str(run),
        "--episodes-per-epoch",
        "3",
        "--epochs",
        "1",
        "--ways",
        "3",
        "--shots",
        "1",
        "--queries",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert (run / "teacher.pt").is_file()
    from tinyshot.models.teacher import build_teacher

    t = build_teacher(None, checkpoint=run / "teacher.pt")
    assert t.backbone.name == "conv4" and t.input_size == 16

    out = tmp_path / "pre"
    args = [
        "pretrain-student",
        "--dataset",
        "fashion-mnist",
        "--arch",
        "conv4",
        "--out",
        str(out),
        "--input-size",
        "16",
        "--iterations",
        "3",
        "--batch-size",
        "8",
        "--max-per-class",
        "10",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    ck = Path(capsys.readouterr().out.strip().splitlines()[-1].split(": ", 1)[1])
    assert ck.is_file() and ck.parent == out
    assert main([*args[:-2], "--device", "cpu"]) == 0  # cached: same file, no error


def test_bench_inference_json(capsys):
    assert (
        main(
            [
                "bench",
                "inference",
                "--size",
                "32",
                "--batches",
                "2",
                "--teacher-batches",
                "",
                "--vit-batches",
                "",
                "--budget",
                "0",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["runtime"]) for r in rows} == {
        ("conv4", "torch"),
        ("conv4", "onnxruntime"),
        ("resnet12", "torch"),
        ("resnet12", "onnxruntime"),
    }
    assert all(r["images_per_s"] > 0 and r["batch"] == 2 for r in rows)
    assert {r["parameters"] for r in rows if r["model"] == "conv4"} == {113_088 + 256 * 5 + 5}


def test_count_macs_conv4_by_hand():
    from tinyshot.models.export import count_macs
    from tinyshot.models.students import build_student

    conv = 32 * 32 * 64 * 27 + (16 * 16 + 8 * 8 + 4 * 4) * 64 * 64 * 9  # per-output MACs per layer
    assert count_macs(build_student("conv4", 5, 32), 32) == conv + 256 * 5


def test_bench_inference_times_a_dinov2_teacher(capsys):
    args = ["bench", "inference", "--size", "32", "--batches", "1", "--teacher-batches", ""]
    args += ["--vits", "dinov2-small", "--vit-batches", "1", "--budget", "0", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    (row,) = [r for r in rows if "teacher" in r["model"]]
    assert row["model"] == "dinov2-small (teacher, random weights)"
    assert (row["parameters"], row["input_size"], row["runtime"]) == (22_056_576, 224, "torch")
    assert row["ms_per_image"] > 0 and round(row["mmacs"]) == 5515  # 257 tokens, 12 layers

    from tinyshot.errors import ConfigError
    from tinyshot.models.export import run_inference_bench

    with pytest.raises(ConfigError, match="unknown ViT teacher"):
        run_inference_bench(batches=(), teacher_batches=(), vits=["dinov2-huge"])
