"""Frechet distance and judged class fidelity of every generator's images in a benchmark run.

The demo measures both on its first episode; a benchmark run keeps each episode's synthetic
images in OUT/work/<i>/synthetic/<generator>, so this measures them on every episode, with the
demo's own functions (FD-EffNetLite0 at 96 px between the n generated and the first n real
query-split images per class, the generator's pad frame cropped first; the Fashion-MNIST
judge's share labelled as their class). Results per episode are cached in its work folder.

    PYTHONPATH=src python experiments/benchmark_fidelity.py runs/unknown-10 --images 50

Prints the mean per generator over episodes and writes OUT/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from tinyshot.data.episode_io import read_episodes
from tinyshot.pipeline.benchmark.tasks import load_task_datasets
from tinyshot.pipeline.config import GENERATORS
from tinyshot.pipeline.demo import frechet_per_class, judged_synthetic
from tinyshot.pipeline.task_config import task_pipeline_config
from tinyshot.utils.io import read_json, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a benchmark run folder (tinyshot benchmark --out)")
    p.add_argument("--images", type=int, default=50, help="images per class on each side")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    run = read_json(a.run / "run.json")
    episodes, meta = read_episodes(run["episodes_file"])
    ds = meta["dataset"]
    config = task_pipeline_config(run["methods"], ds["name"], ds.get("split"))
    _, query_ds = load_task_datasets(meta)
    generators = [g for g in GENERATORS if g in run["methods"]]
    rows = []
    for i, ep in enumerate(episodes):
        work = a.run / "work" / str(i)
        if not (a.run / "episodes" / f"{i}.json").is_file():
            continue  # not finished: its images may be incomplete
        fd = frechet_per_class(work, work, query_ds, list(ep.classes), generators, a.images, config)
        judged = judged_synthetic(work, work, list(ep.classes), generators, config)
        rows.append({"episode": i, "fd": fd["mean"], "judged": judged})
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        g: {
            "fd_mean": float(np.mean([r["fd"][g] for r in rows])),
            "judged_mean": (
                float(np.mean([r["judged"]["per_generator"][g]["mean"] for r in rows]))
                if all(r["judged"] for r in rows)
                else None
            ),
        }
        for g in generators
    }
    write_json(
        a.run / "fidelity.json",
        {"images_per_class": a.images, "episodes": rows, "summary": summary},
    )
    for g, s in summary.items():
        judged = "" if s["judged_mean"] is None else f", judged {100 * s['judged_mean']:.1f}%"
        print(f"{g:<10} FD-EffNetLite0 {s['fd_mean']:.1f}{judged} ({len(rows)} episodes)")


if __name__ == "__main__":
    main()
