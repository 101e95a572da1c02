"""How the TINT-vs-base-only result moves with the synthetic count and distillation iterations.

The demo's CPU budget is 50 synthetic images per class and 200 iterations (the paper: 4000
and 10k). On train-split episodes of the concept-known world (supports and queries both from
Fashion-MNIST's novel pool, disjoint), each episode is specialized once and TINT generates the
largest count once; each count uses the first n images per class (an image depends only on
its class, index and seed, so they are exactly the images a run at n would make). Students:
support+base at every iteration count, TINT at every (count, iterations). Every student is
resumable (its distillation checkpoints) and its result is kept in OUT/<episode>/rows.json.

    PYTHONPATH=src python experiments/budget_sweep.py runs/budget --episodes 2 \\
        --counts 50 200 --iterations 200 800

Prints the mean accuracy per student and TINT minus support+base per iteration count,
paired over episodes (95% t-interval); OUT/sweep.json holds every row. docs/results.md has
the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from tinyshot.evaluation.episodic import evaluate_student
from tinyshot.evaluation.stats import mean_confidence_interval
from tinyshot.pipeline.benchmark import prepare_episodes
from tinyshot.pipeline.benchmark.tasks import load_task_datasets
from tinyshot.pipeline.config import PipelineConfig, generator_prep
from tinyshot.pipeline.episode_data import load_episode_data, val_subset
from tinyshot.pipeline.generation_stage import specialize_and_generate
from tinyshot.pipeline.student_stage import distill_student, pretrained_student_path
from tinyshot.pipeline.synthetic import student_synthetic, teacher_synthetic
from tinyshot.pipeline.task_config import base_dataset, task_pipeline_config
from tinyshot.pipeline.teacher_stage import build_episode_teacher, label_images, teacher_accuracy
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger, setup_logging
from tinyshot.utils.seed import derive_seed

log = get_logger("budget_sweep")


def student_config(config: PipelineConfig, iterations: int) -> PipelineConfig:
    """The pipeline at another iteration count (eval and checkpoints scale with it)."""
    d = config.to_dict()
    d["distill"] = {
        **d["distill"],
        "iterations": iterations,
        "eval_every": max(1, iterations // 4),
        "checkpoint_every": max(1, iterations // 2),
    }
    return PipelineConfig.from_dict(d)


def run_episode(
    index: int,
    episode,
    meta: dict,
    out: Path,
    counts: list[int],
    iterations: list[int],
    seed: int,
) -> list[dict]:
    from tinyshot.distill.pseudo_label import pseudo_label
    from tinyshot.evaluation.health import intended_labels

    work = out / str(index)
    rows_path = work / "rows.json"
    rows: list[dict] = read_json(rows_path) if rows_path.is_file() else []
    done = {(r["method"], r["count"], r["iterations"]) for r in rows}
    ds = meta["dataset"]
    config = task_pipeline_config(
        {"support+base": {}, "tint": {"synthetic_per_class": max(counts)}}, ds["name"], ds["split"]
    )
    support_ds, query_ds = load_task_datasets(meta)
    base_ds = base_dataset(meta)
    ep_seed = derive_seed(seed, "benchmark", index)
    data = load_episode_data(episode, support_ds, query_ds, base_ds, config, ep_seed)
    gen = specialize_and_generate(data, config, work, ep_seed)
    store = gen["tint"]
    raw, _ = store.load_tensor()
    intended = intended_labels(store)
    prep = generator_prep(config)
    pretrained = pretrained_student_path(base_ds, config)
    teacher = build_episode_teacher(data, config, pretrained)
    labels = {
        "base": label_images(teacher, data.teacher_base, work / "labels" / "base.safetensors")
    }
    tint_labels = pseudo_label(
        teacher,
        teacher_synthetic(raw, prep, teacher.input_size),
        work / "labels" / "tint.safetensors",
    )
    agreement = float((tint_labels.argmax(1) == intended).float().mean())
    teacher_acc = teacher_accuracy(teacher, data.teacher_query, data.query_labels)
    del teacher
    synthetic_all = student_synthetic(raw, prep, config.image_size)
    # The first n images of each class, in the store's order (per-item seeds: the images of a
    # run at n), for every count.
    order = {c: torch.nonzero(intended == c).view(-1) for c in range(data.ways)}
    val = val_subset(data, config.val_queries_per_class, ep_seed)
    for iters in iterations:
        cfg = student_config(config, iters)
        plan = [("support+base", 0)] + [("tint", n) for n in counts]
        for method, n in plan:
            if (method, n, iters) in done:
                continue
            t0 = time.perf_counter()
            pick = torch.cat([order[c][:n] for c in range(data.ways)]) if n else None
            syn = {"tint": synthetic_all[pick]} if n else {}
            lab = {**labels, **({"tint": tint_labels[pick]} if n else {})}
            student, _ = distill_student(
                method,
                data,
                lab,
                syn,
                pretrained,
                cfg,
                work / "students" / f"{method}-n{n}-it{iters}",
                ep_seed,
                val,
            )
            acc = evaluate_student(student, data.query, data.query_labels)
            row = {
                "episode": index,
                "method": method,
                "count": n,
                "iterations": iters,
                "accuracy": acc,
                "queries": int(data.query.shape[0]),
                "seconds": time.perf_counter() - t0,
                "teacher_accuracy": teacher_acc,
                "tint_agreement": agreement,
            }
            log.info(
                "episode %d: %s n=%d it=%d: %.2f%% (%.0f s)",
                index,
                method,
                n,
                iters,
                100 * acc,
                row["seconds"],
            )
            rows.append(row)
            write_json(rows_path, rows)
    return rows


def summarise(rows: list[dict], counts: list[int], iterations: list[int]) -> list[str]:
    lines = []
    by = {(r["episode"], r["method"], r["count"], r["iterations"]): r["accuracy"] for r in rows}
    episodes = sorted({r["episode"] for r in rows})
    teacher = [next(r["teacher_accuracy"] for r in rows if r["episode"] == e) for e in episodes]
    lines.append(f"{len(episodes)} episode(s); teacher {100 * np.mean(teacher):.2f}%")
    for iters in iterations:
        base = [by.get((e, "support+base", 0, iters)) for e in episodes]
        for n in [0, *counts]:
            method = "support+base" if n == 0 else "tint"
            accs = [by.get((e, method, n, iters)) for e in episodes]
            pairs = [(a, b) for a, b in zip(accs, base) if a is not None and b is not None]
            have = [a for a in accs if a is not None]
            if not have:
                continue
            line = f"it {iters:>5}  {method:<12} n {n:>4}: {100 * np.mean(have):.2f}%"
            if n and len(pairs) >= 2:
                m, hw = mean_confidence_interval(np.array([a - b for a, b in pairs]), 0.95)
                line += f"   minus support+base {100 * m:+.2f} +- {100 * hw:.2f}"
            elif n and pairs:
                line += f"   minus support+base {100 * (pairs[0][0] - pairs[0][1]):+.2f}"
            lines.append(line)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--counts", type=int, nargs="+", default=[50, 200])
    p.add_argument("--iterations", type=int, nargs="+", default=[200, 800])
    p.add_argument("--seed", type=int, default=1000, help="the tuning episodes' seed (1000+)")
    p.add_argument("--queries", type=int, default=200, help="per class, from the novel pool")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    a.out.mkdir(parents=True, exist_ok=True)
    setup_logging(a.out)
    from tinyshot.data.episode_io import read_episodes

    path = prepare_episodes(
        a.out / "episodes.json",
        "fashion-mnist",
        a.episodes,
        split="novel-pool",
        query_split="novel-pool",
        queries=a.queries,
        seed=a.seed,
    )
    eps, meta = read_episodes(path)
    rows: list[dict] = []
    for i, ep in enumerate(eps[: a.episodes]):
        rows += run_episode(i, ep, meta, a.out, a.counts, a.iterations, a.seed)
        write_json(a.out / "sweep.json", rows)
        text = "\n".join(summarise(rows, a.counts, a.iterations)) + "\n"
        (a.out / "summary.txt").write_text(text)  # kept current after every episode
        print(text, end="", flush=True)
    print(json.dumps({"rows": len(rows), "out": str(a.out)}))


if __name__ == "__main__":
    main()
