"""Distillation length against method differences (issue 32; the paper's Figure 6).

The paper finds that a strong teacher's effect on synthetic data shows only after about 3,000
distillation iterations. This re-distils the students of a finished benchmark run at other
iteration counts, on the same specialization, synthetic images and teacher labels: each
episode's work folder is copied without its students and result, and the pipeline reruns with
only `distill.iterations` changed (every earlier stage is found finished and reused), so the
iteration count is the only difference.

    PYTHONPATH=src python experiments/iteration_study.py runs/known-iters \\
        --run runs/known-lora-tune-100name runs/known-tint-tune --iterations 1000 3000 \\
        --json results/iteration-study.json

Several runs of the same episodes (e.g. one per method) are merged per episode. Each run's own
students give the row of its iteration count (200 at the demo's defaults). Resumable per run,
count and episode (OUT/<run folder name>/it<N>/<i>/), so one process per run or per `--only`
shard can share OUT; a last run without `--only` merges them. THREADS sets the torch threads
(default 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from tinyshot.data.episode_io import read_episodes
from tinyshot.data.episodes import Episode
from tinyshot.pipeline.benchmark import paired_differences
from tinyshot.pipeline.benchmark.tasks import load_task_datasets
from tinyshot.pipeline.config import METHODS, PipelineConfig
from tinyshot.pipeline.episode import run_pipeline_episode
from tinyshot.pipeline.task_config import base_dataset
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import setup_logging

# What a re-distillation must not inherit from the run: the students and the episode's result.
NOT_COPIED = ("students", "result.json", "config.json", "attempts.txt", "log.txt")


def finished_episodes(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "work").iterdir() if (p / "result.json").is_file())


def rerun_copy(
    src: Path, dst: Path, cfg: dict[str, Any], datasets: tuple, not_copied=NOT_COPIED
) -> dict[str, Any]:
    """Finished work folder `src` copied to `dst` (less `not_copied`) and run again with `cfg`:
    the stages whose files were copied resume, the others run; method -> result."""
    if not dst.exists():
        shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in not_copied])
    stored = read_json(src / "config.json")
    support_ds, query_ds, base_ds = datasets
    return run_pipeline_episode(
        Episode.from_dict(stored["episode"]),
        support_ds,
        query_ds,
        base_ds,
        PipelineConfig.from_dict(cfg),
        dst,
        stored["seed"],
    )


def redistil(run: Path, index: int, iterations: int, out: Path, datasets: tuple) -> dict:
    """One episode of `run` re-distilled at `iterations`; method -> accuracy."""
    src = run / "work" / str(index)
    cfg: dict[str, Any] = read_json(src / "config.json")["config"]
    cfg["distill"] = {**cfg["distill"], "iterations": iterations}
    res = rerun_copy(src, out / f"it{iterations}" / str(index), cfg, datasets)
    return {m: r["accuracy"] for m, r in res.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument(
        "--run", type=Path, nargs="+", required=True,
        help="finished `tinyshot benchmark` runs of the same episodes (their methods are merged)",
    )  # fmt: skip
    p.add_argument("--iterations", type=int, nargs="+", default=[1000, 3000])
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    p.add_argument(
        "--only", type=int, nargs="+", default=None,
        help="episode indices to run (one process per shard; a last run without it merges)",
    )  # fmt: skip
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    a.out.mkdir(parents=True, exist_ok=True)
    setup_logging(a.out)
    _, meta = read_episodes(a.run[0] / "episodes.json")
    datasets = (*load_task_datasets(meta), base_dataset(meta))
    episodes = sorted(set.intersection(*(set(finished_episodes(r)) for r in a.run)))
    if a.only is not None:
        episodes = [i for i in episodes if i in a.only]
    if not episodes:
        sys.exit("no finished episode to re-distil in " + ", ".join(map(str, a.run)))
    rows: dict[int, list[dict[str, float]]] = {}
    for run in a.run:
        own = int(
            read_json(run / "work" / str(episodes[0]) / "config.json")["config"]["distill"][
                "iterations"
            ]
        )
        for n in (own, *a.iterations):
            out = a.out / run.name
            got = [
                {m: r["accuracy"] for m, r in read_json(run / "work" / str(i) / "result.json")["methods"].items()}
                if n == own else redistil(run, i, n, out, datasets)
                for i in episodes
            ]  # fmt: skip
            rows.setdefault(n, [{} for _ in episodes])
            for merged, ep in zip(rows[n], got):
                merged.update(ep)
    summary = summarize(rows)
    summary.update(runs=[str(r) for r in a.run], episodes=episodes, command=" ".join(sys.argv))
    write_json(a.out / "summary.json", summary)
    if a.json:
        write_json(a.json, summary)
    for n, s in summary["per_iterations"].items():
        means = ", ".join(f"{m} {100 * v:.2f}" for m, v in s["mean"].items())
        diffs = ", ".join(
            f"{d['a']}-{d['b']} {100 * d['mean_difference']:+.2f}+-{100 * (d['half_width'] or 0):.2f}"
            for d in s["paired"]
        )
        print(f"{n:>5} iterations: {means}\n        paired: {diffs}")


def summarize(rows: dict[int, list[dict[str, float]]]) -> dict[str, Any]:
    """Per iteration count: method means and every method's paired difference to the others
    (the benchmark's own statistics, so the figures compare with its tables)."""
    out: dict[str, Any] = {"format": "tinyshot.iteration-study", "per_iterations": {}}
    for n in sorted(rows):
        eps = rows[n]
        # newest method first, so each difference reads "newer minus older"
        methods = [m for m in reversed(METHODS) if m in eps[0] and m != "teacher"]
        recs = [{"methods": {m: {"accuracy": acc} for m, acc in ep.items()}} for ep in eps]
        out["per_iterations"][str(n)] = {
            "mean": {m: sum(ep[m] for ep in eps) / len(eps) for m in methods},
            "per_episode": eps,
            "paired": paired_differences(recs, methods),
        }
    return out


if __name__ == "__main__":
    main()
