"""int8 against fp32 on the students of a finished demo or benchmark episode (issue 34): the
accuracy each student loses when quantized, on the episode's own queries.

For every distilled student of the episode folder (students/<method>/checkpoint.pt): export
it to ONNX as `fit` does, quantize it with `models.quantize.quantize_onnx` calibrated on the
episode's supports and the synthetic images that student was distilled on (the same images
`tinyshot quantize` would use for a fit run: supports first, then generated images class by
class, without the generator's pad frame, at most 500), and score both files on all of the
episode's queries through `predict`'s preparation (`deploy_bench.episode_predictions`): both
accuracies, and how often int8's top-1 class is fp32's (`top1_agreement`), which tells a
real difference from a few queries changing sides.

    PYTHONPATH=src python experiments/int8_episode.py runs/demo-check/episodes/0000 \\
        runs/demo-check/episodes.json:0 --json results/int8-demo-episode.json
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from tinyshot.diffusion.store import SETTINGS, ImageStore
from tinyshot.models.export import export_onnx
from tinyshot.models.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_onnx
from tinyshot.models.students import load_student
from tinyshot.pipeline.config import GENERATORS, PipelineConfig, generator_prep
from tinyshot.pipeline.deploy_bench import episode_predictions, load_episode_queries, read_episode
from tinyshot.pipeline.quantize_run import unframe
from tinyshot.utils.io import read_json, write_json


def calibration_images(work: Path, method: str, episode: str) -> Iterator[Image.Image]:
    """The episode's supports, then `method`'s synthetic images one class after another."""
    ep, support_ds, _, _ = read_episode(episode)
    idx, _ = ep.support_indices(support_ds)
    for i in idx:
        yield support_ds.load_image(int(i)).convert("RGB")
    root = work / "synthetic" / method
    if method not in GENERATORS or not (root / SETTINGS).is_file():
        return
    prep = generator_prep(PipelineConfig.from_dict(read_json(work / "config.json")["config"]))
    per_class: dict[int, list[Path]] = {}
    for item in ImageStore(root).items():
        per_class.setdefault(item.class_index, []).append(item.path)
    for paths in itertools.zip_longest(*per_class.values()):
        for p in paths:
            if p is not None:
                yield unframe(Image.open(p).convert("RGB"), prep)


def accuracy(predicted: list[int], labels: Any) -> float:
    """Share of `predicted` equal to `labels` (query labels, or another file's predictions)."""
    return sum(int(p) == int(y) for p, y in zip(predicted, labels)) / len(predicted)


def int8_rows(work: Path, episode: str, methods: list[str] | None = None) -> list[dict]:
    """fp32 and int8 accuracy of each distilled student of `work` (or of `methods` only)."""
    queries = load_episode_queries(episode)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in sorted(work.glob("students/*/checkpoint.pt")):
            method = ckpt.parent.name
            if methods is not None and method not in methods:
                continue
            student, meta = load_student(ckpt)
            names = meta.get("class_names") or list(queries.classes)
            fp32 = export_onnx(student, Path(tmp) / f"{method}.onnx", names)
            int8 = Path(tmp) / f"{method}.int8.onnx"
            res = quantize_onnx(
                fp32, int8, calibration_images(work, method, episode),
                max_images=DEFAULT_CALIBRATION_IMAGES,
            )  # fmt: skip
            pred = {k: episode_predictions(f, queries) for k, f in (("fp32", fp32), ("int8", int8))}
            acc = {k: accuracy(v, queries.labels) for k, v in pred.items()}
            rows.append({
                "method": method, "arch": student.arch, "input_size": student.input_size,
                "queries": len(queries.labels),
                "calibration_images": res.calibration_images,
                "fp32_leading_convs": res.settings["fp32_leading_convs"],
                "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
                "accuracy_fp32": acc["fp32"], "accuracy_int8": acc["int8"],
                "int8_minus_fp32_points": 100 * (acc["int8"] - acc["fp32"]),
                "top1_agreement": accuracy(pred["int8"], pred["fp32"]),
            })  # fmt: skip
            r = rows[-1]
            print(
                f"{method:14s} {student.arch} fp32 {100 * acc['fp32']:.2f}  int8 "
                f"{100 * acc['int8']:.2f}  ({r['int8_minus_fp32_points']:+.2f} points)",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="an episode's work folder (students/<method>/)")
    p.add_argument("episode", help="its episode file FILE[:INDEX]")
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args()
    rows = int8_rows(a.work, a.episode)
    drops = [r["int8_minus_fp32_points"] for r in rows]
    write_json(
        a.json,
        {
            "format": "tinyshot.int8-episode",
            "work": str(a.work),
            "episode": a.episode,
            "queries": rows[0]["queries"] if rows else 0,
            "rows": rows,
            "mean_int8_minus_fp32_points": sum(drops) / len(drops) if drops else None,
            "command": f"PYTHONPATH=src python experiments/int8_episode.py {a.work} {a.episode} "
            f"--json {a.json}",
        },
    )


if __name__ == "__main__":
    main()
