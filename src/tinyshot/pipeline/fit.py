"""`tinyshot fit`: the TINT pipeline on a user's ImageFolder (K images per class, no query set).

Run folder (every stage's output is kept; an interrupted fit resumes at the stage and item
where it stopped):

    config.json             the configuration that reproduces the run
    classes.json            class names in label order
    specialize/             TI + NTI artifacts per class
    synthetic/tint/         generated images + manifest.jsonl
    labels/*.safetensors    teacher soft labels
    student_images/*.npy    the synthetic images at the student's size, memory-mapped
    student/                distillation checkpoints, history.json (curves), result.json
    model.onnx              the exported student (preprocessing in its metadata)
    model.int8.onnx         with --quantize int8 or `tinyshot quantize`: its int8 copy, and
    quantize.json           its calibration images and agreement with fp32 (pipeline.quantize_run)
    report.html             generated samples, alpha sweep, training curve
    fit.json                summary: timings, sizes, where everything is
    health.json             synthetic-data health per class + real-image estimate (evaluation.health)
    log.txt
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tinyshot.data.transforms import images_to_uint8, teacher_view
from tinyshot.distill.image_cache import ImageSubset
from tinyshot.errors import ConfigError, DataError
from tinyshot.pipeline.config import (
    DEFAULT_TEACHER,
    PipelineConfig,
    generator_prep,
    resolve_generator,
)
from tinyshot.pipeline.episode_data import EpisodeData, load_base_images
from tinyshot.pipeline.generation_stage import specialize_and_generate
from tinyshot.pipeline.report_builder import VAL_NAME
from tinyshot.pipeline.run_folder import (
    check_out_is_a_folder,
    check_out_outside_data,
    check_run_folder,
    warn_few_images,
)
from tinyshot.pipeline.student_stage import distill_student, pretrained_student_path, sources_of
from tinyshot.pipeline.synthetic import synthetic_sets
from tinyshot.pipeline.teacher_stage import build_episode_teacher, label_images, teacher_notes
from tinyshot.utils.io import write_json
from tinyshot.utils.logging import get_logger, setup_logging
from tinyshot.utils.seed import derive_seed
from tinyshot.utils.threads import note_thread_count
from tinyshot.utils.timing import StageTimes

log = get_logger("pipeline.fit")

HOLDOUT_FRACTION = 0.1  # synthetic images held out to draw the teacher-agreement curve

# fit's default teacher, for a user's images rather than Fashion-MNIST (experiments/
# teacher_default.py, results/teacher-default.json, docs/models.md "fit's default teacher").
# Without --base: Lite0 at 224 + Lite1 at 240 px, the best held-out accuracy on real colour
# drawings (Noto emoji) within 100 ms per image, +4 points over Lite0 + Lite1 at 96 px; it has no
# `student` member, so nothing is left out and nothing warns. With --base: the demo's teacher,
# whose base-pretrained student member is then there (best or tied on glyphs and Fashion-MNIST).
FIT_TEACHER = "effnet-lite-ensemble"
FIT_TEACHER_INPUT_SIZE = 240  # the user's images reach Lite1 at up to its own 240 px
FIT_TEACHER_WITH_BASE = DEFAULT_TEACHER  # effnet-lite-student
FIT_TEACHER_WITH_BASE_INPUT_SIZE = 96


def fit_teacher_defaults(base: str | None, pretrain_student: bool = True) -> dict[str, Any]:
    """`teacher` and `teacher_input_size` of a fit that names no teacher (no flag, config file
    or preset): with the base-pretrained student when the fit has one, else without."""
    if base and pretrain_student:
        return {
            "teacher": FIT_TEACHER_WITH_BASE,
            "teacher_input_size": FIT_TEACHER_WITH_BASE_INPUT_SIZE,
        }
    return {"teacher": FIT_TEACHER, "teacher_input_size": FIT_TEACHER_INPUT_SIZE}


def default_fit_config(base: str | None = None) -> PipelineConfig:
    """The demo-sized defaults, minus the comparison methods (only TINT is trained), with fit's
    own default teacher."""
    return PipelineConfig(methods=("tint",), **fit_teacher_defaults(base))


def check_teacher_student(config: PipelineConfig, base: str | None) -> None:
    """A teacher with a `student` member needs the base-class pretrained student: without one
    fit stops before any work (instead of a teacher that silently lacks a member)."""
    from tinyshot.models.ensemble import uses_student

    if not uses_student(config.teacher) or config.pretrain_student:
        return
    why = "pretrain_student is off" if base else "this fit has no --base"
    raise ConfigError(
        f"teacher {config.teacher!r} has a 'student' member (the student pretrained on base "
        f"classes), and {why}: pass --base (a folder of class folders, or a dataset "
        f"NAME[:SPLIT] such as fashion-mnist:base), or leave --teacher out for fit's default "
        f"without a base ({FIT_TEACHER!r}), or name a teacher without 'student'"
    )


def _load_user_classes(data_dir: str | Path, config: PipelineConfig) -> EpisodeData:
    from tinyshot.data.imagefolder import (
        load_imagefolder,
        nested_class_folders,
        validate_images,
    )

    ds = load_imagefolder(data_dir)
    nested = nested_class_folders(ds)
    if ds.num_classes < 2:
        hint = ""
        if nested:
            ((name, subs),) = nested.items()
            hint = (
                f"; its images lie in the sub-folders of {Path(data_dir) / name} "
                f"({', '.join(subs)}): if those are the classes, pass {Path(data_dir) / name}"
            )
        raise DataError(
            f"{data_dir}: found {ds.num_classes} class folder(s); fit needs at least 2{hint}"
        )
    for name, subs in nested.items():
        log.warning(
            "class folder %r holds no images of its own, only sub-folders (%s): they are all "
            "taken as one class %r",
            name,
            ", ".join(subs),
            name,
        )
    validate_images(ds)  # every bad file reported at once, before hours of work
    support_pil = [ds.load_images(ds.indices_of(c)) for c in range(ds.num_classes)]
    labels = [c for c, imgs in enumerate(support_pil) for _ in imgs]
    flat = [im for imgs in support_pil for im in imgs]
    return EpisodeData(
        class_names=list(ds.class_names),
        support_pil=support_pil,
        support=images_to_uint8(flat, config.image_size),
        support_labels=torch.tensor(labels, dtype=torch.long),
        teacher_support=teacher_view(flat, config.teacher_input_size),
    )


def effective_config(config: PipelineConfig, base: str | None) -> PipelineConfig:
    """The configuration as it will run: without --base there is no base-class pretraining and
    no base images (config.json and the report must not claim them)."""
    import dataclasses

    if base:
        return config
    return dataclasses.replace(config, pretrain_student=False, base_images=0)


def _load_base(base: str | None, config: PipelineConfig, seed: int):
    """--base NAME:SPLIT (a registry dataset) or a folder of base-class images."""
    if not base:
        return None
    from tinyshot.data.registry import load_dataset

    if Path(base).is_dir():
        return load_dataset("imagefolder", "all", root=base)
    name, _, split = base.partition(":")
    return load_dataset(name, split or "base")


def fit(
    data_dir: str | Path,
    out_dir: str | Path,
    config: PipelineConfig | None = None,
    base: str | None = None,
    seed: int = 0,
    strict: bool = False,
    holdout: int = 0,
) -> dict[str, Any]:
    """Specialize -> generate -> pseudo-label -> distill -> export; returns the fit summary.

    strict: stop with HealthError (finished stages kept) instead of distilling when a class's
    synthetic images fail the health checks. holdout: supports per class kept out of every
    training stage, to estimate student and teacher accuracy on real images (docs/pipeline.md).
    """
    config = (config or default_fit_config(base)).validate()
    students = [m for m in config.methods if m != "teacher"]
    if len(students) != 1:
        raise ConfigError(
            f"fit trains one student; methods must name exactly one of support-only, "
            f"support+base, name, ti, dafusion, tint (got {list(config.methods)})"
        )
    method = students[0]
    if method == "support+base" and not base:
        raise ConfigError(
            "--method support+base needs base-class images: pass --base (a folder of class "
            "folders or a dataset NAME[:SPLIT]), or use --method support-only"
        )
    config = effective_config(config, base)
    check_teacher_student(config, base)
    out = Path(out_dir)
    record = {
        "data_dir": str(Path(data_dir).resolve()),
        "base": base,
        "seed": seed,
        "config": config.to_dict(),
    }
    if holdout:  # changes what every stage sees; absent when 0 so older run folders resume
        record["holdout_per_class"] = holdout
    # Every check before the first write: a refused run leaves no folder and no changed file.
    check_out_is_a_folder(out)
    check_out_outside_data(data_dir, out)
    data = _load_user_classes(data_dir, config)
    base_ds = _load_base(base, config, seed)
    check_run_folder(out, record, data.class_names)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    write_json(out / "config.json", record)
    write_json(out / "classes.json", data.class_names)
    times = StageTimes(out)  # seconds per stage summed over attempts (resumes add up)
    times.add("attempts", 1)
    with times.stage("wall_s"):
        return _fit_stages(data, base_ds, out, config, method, seed, times, strict, holdout)


def _fit_stages(
    data: EpisodeData,
    base_ds: Any,
    out: Path,
    config: PipelineConfig,
    method: str,
    seed: int,
    times: StageTimes,
    strict: bool = False,
    holdout: int = 0,
) -> dict[str, Any]:

    t_start = time.perf_counter()
    held = None
    if holdout:
        from tinyshot.evaluation.holdout import split_supports

        data, h = split_supports(data, holdout, derive_seed(seed, "holdout") % 2**63)
        # (student's view, labels, teacher's view): each model is scored on its own input
        held = (h.support, h.support_labels, h.teacher_support)
    shots = [len(x) for x in data.support_pil]
    log.info("fit: %d classes, %s images per class -> %s", data.ways, shots, out)
    warn_few_images(data.class_names, shots)
    note_thread_count(out)

    if base_ds is not None and config.base_images > 0:
        data.base, data.teacher_base = load_base_images(base_ds, config, seed)

    gen = specialize_and_generate(data, config, out, seed)
    timings = dict(gen.pop("_timings", {}))
    return finish_fit(
        data, gen, out, config, method, seed, times, timings, base_ds, strict, held, shots,
        t_start,
    )  # fmt: skip


def finish_fit(
    data: EpisodeData,
    stores: dict[str, Any],
    out: Path,
    config: PipelineConfig,
    method: str,
    seed: int,
    times: StageTimes,
    timings: dict[str, float],
    base_ds: Any = None,
    strict: bool = False,
    held: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
    shots: list[int] | None = None,
    t_start: float | None = None,
) -> dict[str, Any]:
    """Every stage of `fit` that reads the synthetic images (teacher labels, the student's
    image files, health checks, distillation, export, report), given the generated stores;
    `tinyshot bench scale` runs exactly this on stores of any size."""
    from tinyshot.models.export import export_onnx
    from tinyshot.pipeline.report_builder import build_fit_report

    t_start = time.perf_counter() if t_start is None else t_start
    shots = shots or [len(x) for x in data.support_pil]
    pretrained = pretrained_student_path(base_ds, config)
    with times.stage("teacher_s"):
        teacher = build_episode_teacher(data, config, pretrained)
        teacher_size = int(teacher.input_size)
        teacher_backbone = teacher.backbone.arch_id  # the spec as resolved (student member?)
        labels: dict[str, torch.Tensor] = {}
        if data.base is not None:
            labels["base"] = label_images(
                teacher, data.teacher_base, out / "labels" / "base.safetensors"
            )
    sets = synthetic_sets(teacher, stores, config, out, times)
    synthetic: dict[str, Any] = {}
    val = None
    for g, syn in sets.items():
        labels[g], synthetic[g] = syn.labels, syn.student
        if g == method:
            # Hold out a slice of the synthetic set; the curve is agreement with the teacher.
            n = len(syn.student)
            n_hold = max(data.ways, int(HOLDOUT_FRACTION * n))
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            hold, keep = perm[:n_hold], perm[n_hold:]
            val = (syn.student[hold], syn.labels[hold].argmax(1))
            synthetic[g], labels[g] = ImageSubset(syn.student, keep), syn.labels[keep]
    with times.stage("health_s"):
        all_labels = {g: (syn.teacher_view, syn.labels) for g, syn in sets.items()}
        notes = teacher_notes(config, pretrained)
        health = _fit_health(teacher, data, all_labels, stores, out, method, held, notes)
    del teacher
    if strict and health.failed:
        _stop_unhealthy(health, out)

    prep = generator_prep(config)
    with times.stage("distill_s"):
        student, result = distill_student(
            method, data, labels, synthetic, pretrained, config, out / "student", seed, val,
            val_name=VAL_NAME,
        )  # fmt: skip
    if held is not None:
        from tinyshot.evaluation.episodic import evaluate_student

        health.real["holdout"]["student"] = evaluate_student(student, held[0], held[1])
        log.info(
            "held-out supports (%d real images, an estimate from few images): student %.1f%%, "
            "teacher %.1f%%",
            len(held[1]),
            100 * health.real["holdout"]["student"],
            100 * health.real["holdout"]["teacher"],
        )
    with times.stage("export_s"):
        onnx_path = export_onnx(student.eval(), out / "model.onnx", data.class_names)
    totals = times.totals()
    for key in ("teacher_s", "student_images_s", "health_s", "distill_s", "export_s"):
        timings[key] = totals.get(key, 0.0)
    summary = {
        "format": "tinyshot.fit",
        "version": 1,
        "classes": data.class_names,
        "shots": shots,
        "method": method,
        "generator": resolve_generator(config.generator),
        "teacher": config.teacher,
        "student": {"arch": config.student, "input_size": config.image_size},
        # What each model was actually given (issue 14: the report must say what was used).
        "inputs": {
            "teacher": {
                "backbone": teacher_backbone,
                "input_size": teacher_size,
                "images": "originals (resized only when sizes differ or exceed the input size)",
            },
            "student": {
                "input_size": config.image_size,
                "base_pretrained": pretrained is not None,
                "base_images": 0 if data.base is None else len(data.base),
            },
            "generator": {
                "image_prep": prep.to_dict(),
                "synthetic_frame": "cropped" if prep.content not in (None, prep.size) else "none",
            },
        },
        "model": str(onnx_path),
        "teacher_agreement_on_heldout_synthetic": result.final_val_acc,
        "health": health.to_dict(),
        "timings": timings,
        "wall_seconds": times.get("wall_s", running_since=t_start),
        "attempts": int(times.get("attempts")),
        "torch_threads": torch.get_num_threads(),  # results are identical for the same count
    }
    write_json(out / "health.json", summary["health"])
    write_json(out / "fit.json", summary)
    with times.stage("report_s"):
        build_fit_report(out, summary, data, config)
    log.info("fit done: %s (report %s)", onnx_path, out / "report.html")
    return summary


def _fit_health(
    teacher: Any,
    data: EpisodeData,
    labelled: dict[str, tuple[torch.Tensor, torch.Tensor]],
    stores: dict[str, Any],
    out: Path,
    method: str,
    held: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
    notes: Sequence[str] = (),
) -> Any:
    """Health figures of this fit (evaluation.health), logged and written to health.json."""
    from tinyshot.evaluation.health import assess, intended_labels, remedy

    report = assess(
        teacher=teacher,
        class_names=data.class_names,
        support=data.teacher_support if data.teacher_support is not None else data.support,
        support_labels=data.support_labels,
        soft_labels={g: p for g, (_, p) in labelled.items()},
        intended={g: intended_labels(stores[g]) for g in labelled},
        synthetic={g: x for g, (x, _) in labelled.items()},
        spec_dir=out / "specialize" if (out / "specialize").is_dir() else None,
        lora_dir=out / "lora" if (out / "lora").is_dir() else None,
        sources=sources_of(method, data.base is not None),
        notes=notes,
        advice=lambda g: remedy(fit=True, has_base=data.base is not None, method=g),
    )
    if held is not None:
        seen = held[2] if held[2] is not None else held[0]
        probs = teacher.predict_proba(seen.float() / 255.0)
        report.real["holdout"] = {
            "images": len(held[1]),
            "teacher": float((probs.argmax(1) == held[1]).double().mean()),
            "student": None,
            "method": "supports held out of specialization, teacher prototypes and distillation",
        }
    report.log_warnings()
    write_json(out / "health.json", report.to_dict())
    return report


def _stop_unhealthy(report: Any, out: Path) -> None:
    from tinyshot.evaluation.health import HealthError, remedy

    method = report.failed[0].generator if report.failed else None
    advice = remedy(fit=True, has_base="base" in report.sources, method=method)
    failed = "; ".join(
        f"{h.class_name!r} ({h.generator}: teacher agreement {100 * h.agreement:.1f}%, "
        f"chance {100 * h.chance:.1f}%)"
        for h in report.failed
    )
    raise HealthError(
        f"--strict: synthetic images failed the health check for {failed}; nothing was "
        f"distilled. Finished stages are kept in {out} (figures in {out / 'health.json'}); "
        f"{advice}, or rerun without --strict to distill anyway"
    )
