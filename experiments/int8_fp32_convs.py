"""How many leading convolutions to keep in fp32 when a student is quantized (issue 34): for
each distilled student given, int8 files with the first K convolutions left fp32
(`quantize_onnx(fp32_convs=K)`), each scored against fp32 on its episode's queries (accuracy
and top-1 agreement) and timed at batch 1 on one thread.

Calibration is what `fit --quantize int8` uses (the episode's supports and the synthetic
images the student was distilled on; int8_episode.calibration_images). Latency is the fastest
of 240 calls per file, the files interleaved in 8 rounds so that load from other processes
falls on all of them alike; ratios within one student are the figures to read.

    PYTHONPATH=src python experiments/int8_fp32_convs.py \\
        --student lite0-96/train0 runs/students/efficientnet-lite0/train0 \\
            runs/known-iters-base/episodes.json:0 \\
        --convs 0 1 3 6 9 --json results/int8-fp32-convs.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from tinyshot.models.export import export_onnx
from tinyshot.models.quantize import quantize_onnx
from tinyshot.models.students import load_student
from tinyshot.pipeline.deploy_bench import episode_predictions, load_episode_queries
from tinyshot.utils.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_episode import accuracy, calibration_images


def fastest_ms(files: dict[str, Path], size: int, rounds: int = 8, calls: int = 30) -> dict:
    """Fastest batch-1 call per file in ms, one thread, the files taking turns."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = {
        k: ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
        for k, f in files.items()
    }
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(rounds):
        for k, s in sessions.items():
            feed = {s.get_inputs()[0].name: x}
            s.run(None, feed)
            for _ in range(calls):
                t = time.perf_counter()
                s.run(None, feed)
                best[k] = min(best[k], time.perf_counter() - t)
    return {k: 1000 * v for k, v in best.items()}


def student_rows(work: Path, episode: str, convs: list[int], method: str = "tint") -> list[dict]:
    queries = load_episode_queries(episode)
    student, meta = load_student(work / "students" / method / "checkpoint.pt")
    names = meta.get("class_names") or list(queries.classes)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": export_onnx(student, Path(tmp) / "fp32.onnx", names)}
        for k in convs:
            files[f"int8-{k}"] = Path(tmp) / f"int8-{k}.onnx"
            quantize_onnx(
                files["fp32"], files[f"int8-{k}"], calibration_images(work, method, episode),
                fp32_convs=k,
            )  # fmt: skip
        pred = {k: episode_predictions(f, queries) for k, f in files.items()}
        ms = fastest_ms(files, student.input_size)
    acc = {k: accuracy(p, queries.labels) for k, p in pred.items()}
    rows = []
    for k in convs:
        key = f"int8-{k}"
        rows.append({
            "fp32_convs": k, "accuracy_fp32": acc["fp32"], "accuracy_int8": acc[key],
            "int8_minus_fp32_points": 100 * (acc[key] - acc["fp32"]),
            "top1_agreement": accuracy(pred[key], pred["fp32"]),
            "ms_fp32": ms["fp32"], "ms_int8": ms[key], "speedup": ms["fp32"] / ms[key],
        })  # fmt: skip
        r = rows[-1]
        print(
            f"{work} K={k}: int8 {100 * r['accuracy_int8']:.2f} "
            f"({r['int8_minus_fp32_points']:+.2f}), agreement {100 * r['top1_agreement']:.1f}%, "
            f"{r['ms_int8']:.2f} ms ({r['speedup']:.2f}x)",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--student", nargs=3, action="append", required=True, metavar=("LABEL", "WORK", "FILE:I"),
        help="a label, a work folder holding students/<method>/checkpoint.pt, its episode",
    )  # fmt: skip
    p.add_argument("--convs", type=int, nargs="+", default=[0, 1, 3, 6, 9])
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    out = {"format": "tinyshot.int8-fp32-convs", "students": {}}
    for label, work, episode in a.student:
        out["students"][label] = {
            "work": work, "episode": episode,
            "rows": student_rows(Path(work), episode, a.convs),
        }  # fmt: skip
    k_rows = {k: [s["rows"][i] for s in out["students"].values()] for i, k in enumerate(a.convs)}
    out["summary"] = {
        str(k): {
            "mean_top1_agreement": float(np.mean([r["top1_agreement"] for r in rows])),
            "min_top1_agreement": float(min(r["top1_agreement"] for r in rows)),
            "mean_int8_minus_fp32_points": float(
                np.mean([r["int8_minus_fp32_points"] for r in rows])
            ),
            "worst_int8_minus_fp32_points": float(min(r["int8_minus_fp32_points"] for r in rows)),
            "mean_speedup": float(np.mean([r["speedup"] for r in rows])),
        }
        for k, rows in k_rows.items()
    }
    out["load_average"] = os.getloadavg()
    out["command"] = "PYTHONPATH=src python experiments/int8_fp32_convs.py " + " ".join(
        sys.argv[1:]
    )
    for k, s in out["summary"].items():
        print(
            f"K={k}: agreement {100 * s['mean_top1_agreement']:.1f}% "
            f"(min {100 * s['min_top1_agreement']:.1f}), int8-fp32 "
            f"{s['mean_int8_minus_fp32_points']:+.2f} (worst "
            f"{s['worst_int8_minus_fp32_points']:+.2f}), speed-up {s['mean_speedup']:.2f}x"
        )
    write_json(a.json, out)


if __name__ == "__main__":
    main()
