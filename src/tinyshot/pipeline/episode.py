"""One few-shot episode through the whole TINT pipeline, for every requested method.

Stages, each leaving files under the episode's work folder so a killed run resumes at the
stage (and item) where it stopped:

    specialize/            TI + NTI artifacts of the episode's classes   (diffusion.specialize)
    synthetic/<gen>/       generated images per generator                 (diffusion.generate)
    labels/<source>.safetensors  teacher soft labels                      (distill.pseudo_label)
    student_images/<gen>.npy     the images at the student's size, mapped (distill.image_cache)
    students/<method>/     distillation checkpoints, history, result      (distill.distill)
    result.json            per-method accuracy on the episode's queries

Methods (names shared by `demo`, `benchmark` and `fit`):
    teacher       the ProtoNet teacher alone (upper reference, not tiny)
    support-only  student trained on the labelled support images only
    support+base  + teacher-labelled base-class images (the LabelHalluc setting)
    ti / dafusion / tint   + teacher-labelled synthetic images from that generator
    name          + teacher-labelled images from "a photo of a {class name}" (no TI/NTI)

This module runs the stages in order; each stage is a module of its own, read top to bottom:

    pipeline.config            PipelineConfig, the method names, the generator's preparation
    pipeline.episode_data      the episode's images, at the student's size and as the teacher's
    pipeline.generation_stage  specialize, then generate each generator's synthetic store
    pipeline.teacher_stage     the teacher, its soft labels and its accuracy
    pipeline.synthetic         generated images as each model sees them, labelled per generator
    pipeline.health_stage      the synthetic-data health report (health.json)
    pipeline.student_stage     the pretrained backbone and each method's distilled student
    pipeline.task_config       a benchmark task's PipelineConfig (used by run_episode below)

Each model sees its own input: the generator the images prepared as its training images were
(diffusion.upscale.prepare_for_generator), the teacher the original images (resized only to its
own input size when they differ in size or are larger), the student the images at its input
size. Memory does not grow with the synthetic count (docs/pipeline.md, "Memory and disk at
scale").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tinyshot.data.base import FewShotDataset
from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError
from tinyshot.pipeline.config import (
    DEFAULT_METHODS as DEFAULT_METHOD_NAMES,
)
from tinyshot.pipeline.config import STUDENT_METHODS, PipelineConfig, effective_inputs
from tinyshot.pipeline.episode_data import load_episode_data, val_subset
from tinyshot.pipeline.generation_stage import specialize_and_generate
from tinyshot.pipeline.health_stage import episode_health
from tinyshot.pipeline.student_stage import distill_student, pretrained_student_path
from tinyshot.pipeline.synthetic import synthetic_sets
from tinyshot.pipeline.task_config import (
    base_dataset,
    pipeline_config_from_methods,
    task_pipeline_config,
)
from tinyshot.pipeline.teacher_stage import (
    build_episode_teacher,
    label_images,
    teacher_accuracy,
    teacher_notes,
)
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.threads import note_thread_count
from tinyshot.utils.timing import StageTimes


def run_pipeline_episode(
    episode: Episode,
    support_ds: FewShotDataset,
    query_ds: FewShotDataset | None,
    base_ds: FewShotDataset | None,
    config: PipelineConfig,
    work_dir: str | Path,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """All requested methods on one episode; returns method -> {"accuracy", "queries", ...}.

    A finished episode (work_dir/result.json) is returned as stored.
    """
    from tinyshot.evaluation.episodic import evaluate_student

    config.validate()
    work = Path(work_dir)
    done = work / "result.json"
    if done.is_file():
        return read_json(done)["methods"]
    work.mkdir(parents=True, exist_ok=True)
    note_thread_count(work)  # a resume with another thread count is warned about
    write_json(
        work / "config.json",
        {
            "config": config.to_dict(),
            "effective": effective_inputs(config, base_ds),
            "episode": episode.to_dict(),
            "seed": seed,
        },
    )
    data = load_episode_data(episode, support_ds, query_ds, base_ds, config, seed)
    if data.query is None:
        raise ConfigError("the episode has no query images to evaluate on")
    n_query = int(data.query.shape[0])
    results: dict[str, dict[str, Any]] = {}

    gen = specialize_and_generate(data, config, work, seed)

    from tinyshot.models.ensemble import uses_student

    needs_student = uses_student(config.teacher) or any(
        m in STUDENT_METHODS for m in config.methods
    )
    pretrained = pretrained_student_path(base_ds, config) if needs_student else None
    t0 = time.perf_counter()
    teacher = build_episode_teacher(data, config, pretrained)
    labels: dict[str, torch.Tensor] = {}
    if data.base is not None:
        tb = data.teacher_base if data.teacher_base is not None else data.base
        labels["base"] = label_images(teacher, tb, work / "labels" / "base.safetensors")
    sets = synthetic_sets(teacher, gen, config, work)
    labels.update({g: s.labels for g, s in sets.items()})
    synthetic = {g: s.student for g, s in sets.items()}
    teacher_seen = {g: s.teacher_view for g, s in sets.items()}
    notes = teacher_notes(config, pretrained)
    health = episode_health(teacher, data, labels, teacher_seen, gen, work, config, notes)
    if "teacher" in config.methods:
        tq = data.teacher_query if data.teacher_query is not None else data.query
        acc = teacher_accuracy(teacher, tq, data.query_labels)
        backbone = teacher.backbone.arch_id  # the spec as resolved (student member or not)
        results["teacher"] = {"accuracy": acc, "queries": n_query, "backbone": backbone}
    teacher_s = time.perf_counter() - t0
    StageTimes(work).add("teacher_and_labels_s", teacher_s)
    del teacher

    val = val_subset(data, config.val_queries_per_class, seed)
    for method in config.methods:
        if method == "teacher":
            continue
        t0 = time.perf_counter()
        student, distilled = distill_student(
            method,
            data,
            labels,
            synthetic,
            pretrained,
            config,
            work / "students" / method,
            seed,
            val,
        )
        acc = evaluate_student(student, data.query, data.query_labels)
        results[method] = {
            "accuracy": acc,
            "queries": n_query,
            "seconds": time.perf_counter() - t0,
            "iterations": distilled.steps,
        }
    if "teacher" in results:
        results["teacher"]["seconds"] = teacher_s
    for g, summary in health["generators"].items():
        if g in results:  # the benchmark's per-episode records carry it to results.json
            results[g]["health"] = summary
    timings = {
        **gen.get("_timings", {}),
        "teacher_and_labels_s": StageTimes(work).get("teacher_and_labels_s"),
    }
    write_json(
        done,
        {
            "methods": results,
            "timings": timings,
            "episode": episode.to_dict(),
            "seed": seed,
            "health": health,
        },
    )
    return results


# The benchmark runner's contract (pipeline.benchmark): the episode function's module declares
# its default methods and checks a run's method configs once, before any episode is scheduled.

# Every method but the LoRA ones (named with --method lora etc.; config.DEFAULT_METHODS).
DEFAULT_METHODS: dict[str, dict[str, Any]] = {m: {} for m in DEFAULT_METHOD_NAMES}


def check_methods(methods: dict[str, dict[str, Any]]) -> None:
    """A bad method config fails here, once, not in every episode."""
    pipeline_config_from_methods(methods)


def run_episode(task: Any) -> dict[str, dict[str, Any]]:
    """The benchmark runner's default episode function (see pipeline.benchmark.EpisodeTask)."""
    ds = task.meta.get("dataset") or {}
    config = task_pipeline_config(task.methods, ds.get("name"), ds.get("split"))
    config.device = getattr(task, "device", "auto") or "auto"
    support_ds, query_ds = task.datasets()
    base_ds = base_dataset(task.meta)
    return run_pipeline_episode(
        task.episode, support_ds, query_ds, base_ds, config, task.work_dir, task.seed
    )
