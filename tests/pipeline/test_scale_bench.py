"""`tinyshot bench scale`: writes N images in the store format, runs fit's later stages."""

from __future__ import annotations

import json

from PIL import Image

from tinyshot.cli import main


def test_bench_scale_runs_every_reading_stage_and_ends_with_peak_rss(tmp_path, capsys):
    out = tmp_path / "b"
    args = ["bench", "scale", "--images", "12", "--size", "512", "--student", "conv4"]
    assert main([*args, "--iterations", "1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("peak RSS: ") and lines[-1].endswith(" MiB")
    stages = [ln.split()[0] for ln in lines[2:9]]
    assert stages == ["write", "teacher", "student_images", "health", "distill", "export", "report"]
    res = json.loads((out / "bench-scale.json").read_text())
    assert res["images"] == 12 and res["store_size"] == 224
    assert all(r["seconds"] > 0 and r["peak_rss_mib"] > 0 for r in res["stages"])
    # kept at the largest consumer size (the teacher's 224 px), mapped at the student's 84 px
    pngs = sorted((out / "synthetic" / "tint" / "images").rglob("*.png"))
    assert len(pngs) == 12 and Image.open(pngs[0]).size == (224, 224)
    assert res["disk_bytes"]["student_images"] >= 12 * 3 * 84 * 84
    assert (out / "model.onnx").is_file() and (out / "report.html").is_file()
