"""A resumed fit reports the time of every attempt, per stage, in fit.json and report.html;
the report speaks in stage names and its charts start at 0 with uncut legends."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from test_pipeline import _write_imagefolder, fmnist, tiny_config, tiny_generator  # noqa: F401

from tinyshot.pipeline import fit as fit_mod
from tinyshot.pipeline.report import line_chart_svg
from tinyshot.pipeline.report_builder import duration, stage_label
from tinyshot.utils.timing import StageTimes


def test_stage_times_add_up_over_attempts_even_when_interrupted(tmp_path):
    times = StageTimes(tmp_path)
    with pytest.raises(KeyboardInterrupt), times.stage("specialize_s"):
        raise KeyboardInterrupt
    first = times.get("specialize_s")
    assert first >= 0.0 and (tmp_path / "timings.json").is_file()
    times.add("specialize_s", 2.5)
    assert StageTimes(tmp_path).get("specialize_s") == pytest.approx(first + 2.5)
    (tmp_path / "timings.json").write_text("{broken")
    assert StageTimes(tmp_path).totals() == {}  # a damaged file restarts the count


def test_fit_reports_total_time_per_stage_after_a_resume(
    tiny_generator,  # noqa: F811
    fmnist,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from tinyshot.cli import main

    support_ds, _, _ = fmnist
    data = tmp_path / "data"
    _write_imagefolder(data, support_ds, [0, 2], k=3)
    cfg = tiny_config(tiny_generator, methods=("tint",)).to_dict()
    cfg.pop("methods")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    argv = ["fit", str(data), "--out", str(run), "--config", str(tmp_path / "cfg.json"),
            "--base", "fashion-mnist:base"]  # fmt: skip

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_mod, "distill_student", killed)
    assert main(argv) == 130  # interrupted at distillation: everything before it is kept
    first = StageTimes(run).totals()
    assert first["specialize_s"] > 0 and first["attempts"] == 1
    assert first["wall_s"] >= first["specialize_s"] + first["generate_tint_s"]
    monkeypatch.undo()

    assert main(argv) == 0
    summary = json.loads((run / "fit.json").read_text())
    totals = StageTimes(run).totals()
    t = summary["timings"]
    # the first attempt's specialization and generation are counted, not only the resume's
    assert t["specialize_s"] == pytest.approx(totals["specialize_s"])
    assert t["specialize_s"] >= first["specialize_s"]
    assert t["generate_tint_s"] >= first["generate_tint_s"]
    assert summary["attempts"] == 2
    assert summary["wall_seconds"] >= first["wall_s"]
    html = (run / "report.html").read_text()
    assert "specialization (textual inversion + null-text inversion)" in html
    assert "total (2 attempts)" in html and "specialize_s" not in html
    assert "agreement with the teacher on held-out synthetic images" in html
    shutil.copy(run / "report.html", tmp_path.parent / "fit-report.html")  # for a look


def test_chart_axes_start_at_zero_and_legend_fits():
    long = "agreement with the teacher on held-out synthetic images"
    svg = line_chart_svg({long: ([10, 20, 30], [55.0, 60.0, 70.0])}, width=640, height=280)
    ticks = [float(v) for v in re.findall(r'text-anchor="end">([-\d.e]+)</text>', svg)]
    assert min(ticks) == 0.0 and max(ticks) == 80.0  # y from 0 (not 55) to a round 80
    x_ticks = re.findall(r'text-anchor="middle">([-\d.e]+)</text>', svg)
    assert x_ticks[0] == "0"  # x from 0, not from 10
    # the legend sits under the plot at the left edge: ~6 px per character fits in 640 px
    x = float(re.search(r'<text x="([\d.]+)" y="[\d.]+">' + re.escape(long), svg).group(1))
    assert x + 6 * len(long) < 640
    assert 'height="300"' in svg  # 280 + room for one legend line


def test_stage_names_and_durations_read_as_words():
    assert stage_label("generate_tint_s") == "image generation, TINT"
    assert stage_label("something_new_s") == "something new"
    assert duration(12.34) == "12.3 s" and duration(245) == "4 min 05 s"
    assert duration(3720) == "1 h 02 min"
