"""Student architectures compared on the same synthetic images and the same teacher (issue 34):
fp32 and int8 accuracy of Conv4, ResNet12 and EfficientNet-Lite0 students on finished episodes.

A finished episode (a demo or benchmark work folder) already holds its specialization, its
synthetic images and the teacher's labels, made with the run's own student (Conv4). Each
other architecture is distilled from a copy of that folder with only `student` changed (and
the keys that student brings, models.students.STUDENT_CONFIG_DEFAULTS: Lite0's 96 px and
its short base-class pretraining), and with the teacher pinned to the one the episode used:
the default teacher's `student` member is the run's own pretrained student, so naming
another student would otherwise change the teacher and its labels. The pinned spec names
the Conv4 checkpoint explicitly (`student:PATH`), the labels' fingerprint matches and they
are reused. Every student, the episode's own Conv4 ones included, is then exported and
quantized as `fit --quantize int8` does and scored on the episode's queries
(int8_episode.int8_rows).

    TINYSHOT_CACHE=runs/cache THREADS=1 PYTHONPATH=src python experiments/student_compare.py \\
        runs/students --episode demo runs/demo-check/episodes/0000 runs/demo-check/episodes.json:0 \\
        --students efficientnet-lite0 --methods tint --json results/student-compare.json

Base-class pretraining of a new student is cached in $TINYSHOT_CACHE (ResNet12's default
1,500 iterations take about 3 h on one CPU thread, Lite0's 300 about 20 min). A run with a
subset of --students or --episode adds to OUT/rows.json; the JSON summarises every row there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from tinyshot.data.episode_io import read_episodes
from tinyshot.evaluation.stats import mean_confidence_interval
from tinyshot.models.ensemble import with_student
from tinyshot.models.students import STUDENT_CONFIG_DEFAULTS
from tinyshot.pipeline.benchmark.tasks import load_task_datasets
from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.student_stage import pretrained_student_path
from tinyshot.pipeline.task_config import base_dataset
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import setup_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_episode import int8_rows
from iteration_study import rerun_copy

# What a copy leaves behind: the students and what describes them (the rest is reused).
NOT_COPIED = {"students", "student_images", "result.json", "config.json", "log.txt", "threads.json"}


def episode_datasets(episode_file: str) -> tuple:
    _, meta = read_episodes(episode_file.rsplit(":", 1)[0])
    return (*load_task_datasets(meta), base_dataset(meta))


def parse_student(spec: str) -> tuple[str, int | None]:
    """`ARCH` or `ARCH@SIZE`."""
    arch, _, size = spec.partition("@")
    return arch, int(size) if size else None


def student_config(
    stored: dict[str, Any], spec: str, methods: list[str], base_ds: Any
) -> dict[str, Any]:
    """The episode's configuration with `spec` (ARCH[@SIZE]) as its student, teacher pinned."""
    arch, size = parse_student(spec)
    cfg = dict(stored)
    original = PipelineConfig.from_dict(stored)
    cfg["teacher"] = with_student(original.teacher, pretrained_student_path(base_ds, original))[0]
    for key in STUDENT_CONFIG_DEFAULTS.get(arch, {}):
        cfg.pop(key, None)  # the new student's own defaults (PipelineConfig.from_dict)
    cfg["student"] = arch
    if size is not None:
        cfg["image_size"] = size
    cfg["methods"] = methods
    return cfg


def distil_other(
    label: str, work: Path, episode_file: str, spec: str, methods: list[str], out: Path
) -> Path:
    """`work`'s episode re-distilled with a `spec` (ARCH[@SIZE]) student; the new work folder."""
    dst = out / spec / label
    datasets = episode_datasets(episode_file)
    cfg = student_config(read_json(work / "config.json")["config"], spec, methods, datasets[2])
    rerun_copy(work, dst, cfg, datasets, NOT_COPIED)
    return dst


def read_rows(store: Path) -> list[dict]:
    rows = read_json(store)["rows"] if store.is_file() else []
    for r in rows:
        r.setdefault("student", r["arch"])  # rows written before ARCH@SIZE
    return rows


def save_rows(store: Path, label: str, student: str, new: list[dict]) -> list[dict]:
    """The file's rows with (label, student)'s replaced by `new`, re-read first so that runs
    sharing OUT (one per student or episode) keep each other's rows."""
    rows = [r for r in read_rows(store) if (r["episode"], r["student"]) != (label, student)]
    rows += new
    write_json(store, {"rows": rows})
    return rows


def teacher_accuracy(work: Path, episode_file: str, evaluated: list[Path]) -> float | None:
    """The episode's teacher accuracy: its own teacher row, else a `tinyshot evaluate` result
    of the same episode file (at the same index), else None."""
    done = work / "result.json"
    if done.is_file() and "teacher" in read_json(done)["methods"]:
        return read_json(done)["methods"]["teacher"]["accuracy"]
    file, _, index = episode_file.rpartition(":")
    for path in evaluated:
        res = read_json(path)
        if Path(res["meta"]["episodes_file"]).resolve() != Path(file).resolve():
            continue
        for per in res["per_episode"].values():
            for e in per:
                if e["episode"] == int(index):
                    return e["accuracy"]
    return None


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Per architecture and precision: mean accuracy, int8 minus fp32, and the spread."""
    out: dict[str, Any] = {}
    for arch in sorted({r["student"] for r in rows}):
        mine = [r for r in rows if r["student"] == arch]
        drops = [r["int8_minus_fp32_points"] for r in mine]
        out[arch] = {
            "students": len(mine),
            "input_size": mine[0]["input_size"],
            "accuracy_fp32": statistics.mean(100 * r["accuracy_fp32"] for r in mine),
            "accuracy_int8": statistics.mean(100 * r["accuracy_int8"] for r in mine),
            "int8_minus_fp32_points": statistics.mean(drops),
            "worst_int8_minus_fp32_points": min(drops),
        }
    archs = sorted(out)
    for arch in archs:  # paired against Conv4 on the same episode and method
        if arch == "conv4":
            continue
        pairs = [
            100 * (r["accuracy_fp32"] - c["accuracy_fp32"])
            for r in rows
            if r["student"] == arch
            for c in rows
            if c["student"] == "conv4"
            and (c["episode"], c["method"]) == (r["episode"], r["method"])
        ]
        if pairs:
            mean, half = mean_confidence_interval(pairs)
            out[arch]["fp32_minus_conv4_points"] = mean
            out[arch]["fp32_minus_conv4_half_width_95"] = half if len(pairs) > 1 else None
            out[arch]["paired_students"] = len(pairs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument(
        "--episode", nargs=3, action="append", required=True, metavar=("LABEL", "WORK", "FILE:I"),
        help="a finished episode: a label, its work folder, its episode file and index",
    )  # fmt: skip
    p.add_argument(
        "--students", nargs="+", default=["efficientnet-lite0", "resnet12"],
        help="ARCH or ARCH@SIZE (default size: the architecture's own, else the episode's)",
    )  # fmt: skip
    p.add_argument("--methods", nargs="+", default=["tint"])
    p.add_argument(
        "--teacher-results", type=Path, nargs="*", default=[],
        help="`tinyshot evaluate` JSONs of the episode files, for the teacher's accuracy where "
        "an episode's own result has no teacher row (the headroom over the students)",
    )  # fmt: skip
    p.add_argument(
        "--no-distil", action="store_true",
        help="distil nothing new: summarise (and rescore) the students OUT already holds",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    a.out.mkdir(parents=True, exist_ok=True)
    setup_logging(a.out)
    store = a.out / "rows.json"
    rows = read_rows(store)
    for label, work, episode_file in a.episode:
        for arch in ["conv4", *a.students]:
            mine = [r for r in rows if r["episode"] == label and r["student"] == arch]
            # rows from before the agreement or the fp32 leading convolutions were recorded
            # are rescored: the int8 file is remade with today's settings
            if mine and all("fp32_leading_convs" in r for r in mine):
                continue
            src = Path(work) if arch == "conv4" else a.out / arch / label
            if not mine and arch != "conv4":
                if a.no_distil:
                    continue
                src = distil_other(label, Path(work), episode_file, arch, a.methods, a.out)
            new = [
                {"episode": label, "student": arch, **r}
                for r in int8_rows(src, episode_file, a.methods)
            ]
            rows = save_rows(store, label, arch, new)
    rows = read_rows(store)
    teacher = {
        label: teacher_accuracy(Path(work), episode_file, a.teacher_results)
        for label, work, episode_file in a.episode
    }
    summary = {
        "format": "tinyshot.student-compare",
        "methods": a.methods,
        "episodes": sorted({r["episode"] for r in rows}),
        "teacher_accuracy": teacher,
        "summary": summarise(rows),
        "rows": rows,
        "command": " ".join(
            [
                *(f"{k}={os.environ[k]}" for k in ("TINYSHOT_CACHE", "THREADS") if k in os.environ),
                "PYTHONPATH=src python experiments/student_compare.py",
                *sys.argv[1:],
            ]
        ),
        "note": "the students were distilled by the same command without --no-distil (one "
        "run per student list); --no-distil only rescores and summarises OUT's students",
    }
    for arch, s in summary["summary"].items():
        vs = s.get("fp32_minus_conv4_points")
        print(
            f"{arch:22s} {s['students']:2d} students  fp32 {s['accuracy_fp32']:.2f}  int8 "
            f"{s['accuracy_int8']:.2f}  int8-fp32 {s['int8_minus_fp32_points']:+.2f} "
            f"(worst {s['worst_int8_minus_fp32_points']:+.2f})"
            + ("" if vs is None else f"  fp32 minus conv4 {vs:+.2f}")
        )
    if a.json:
        write_json(a.json, summary)


if __name__ == "__main__":
    main()
