"""`tinyshot fit`: the TINT pipeline on a user's ImageFolder (K images per class, no query set).

Run folder (every stage's output is kept; an interrupted fit resumes at the stage and item
where it stopped):

    config.json             the configuration that reproduces the run
    classes.json            class names in label order
    specialize/             TI + NTI artifacts per class
    synthetic/tint/         generated images + manifest.jsonl
    labels/*.safetensors    teacher soft labels
    student/                distillation checkpoints, history.json (curves), result.json
    model.onnx              the exported student (preprocessing in its metadata)
    report.html             generated samples, alpha sweep, training curve
    fit.json                summary: timings, sizes, where everything is
    log.txt
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tinyshot.errors import ConfigError, DataError
from tinyshot.pipeline.episode import (
    EpisodeData,
    PipelineConfig,
    _resize_uint8,
    _uint8,
    build_episode_teacher,
    distill_student,
    pretrained_student_path,
    resolve_generator,
    specialize_and_generate,
)
from tinyshot.pipeline.run_folder import (
    check_out_outside_data,
    check_run_folder,
    warn_few_images,
)
from tinyshot.utils.io import write_json
from tinyshot.utils.logging import get_logger, setup_logging
from tinyshot.utils.seed import derive_seed
from tinyshot.utils.threads import note_thread_count

log = get_logger("pipeline.fit")

HOLDOUT_FRACTION = 0.1  # synthetic images held out to draw the teacher-agreement curve


def default_fit_config() -> PipelineConfig:
    """The demo-sized defaults, minus the comparison methods: only TINT is trained."""
    return PipelineConfig(methods=("tint",))


def _load_user_classes(data_dir: str | Path, config: PipelineConfig) -> EpisodeData:
    from tinyshot.data.imagefolder import load_imagefolder, validate_images

    ds = load_imagefolder(data_dir)
    validate_images(ds)  # every bad file reported at once, before hours of work
    if ds.num_classes < 2:
        raise DataError(f"{data_dir}: found {ds.num_classes} class folder(s); fit needs at least 2")
    support_pil = [ds.load_images(ds.indices_of(c)) for c in range(ds.num_classes)]
    labels = [c for c, imgs in enumerate(support_pil) for _ in imgs]
    return EpisodeData(
        class_names=list(ds.class_names),
        support_pil=support_pil,
        support=_uint8([im for imgs in support_pil for im in imgs], config.image_size),
        support_labels=torch.tensor(labels, dtype=torch.long),
    )


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
) -> dict[str, Any]:
    """Specialize -> generate -> pseudo-label -> distill -> export; returns the fit summary."""
    from tinyshot.distill.pseudo_label import pseudo_label
    from tinyshot.models.export import export_onnx
    from tinyshot.pipeline.report_builder import build_fit_report

    config = (config or default_fit_config()).validate()
    students = [m for m in config.methods if m != "teacher"]
    if len(students) != 1:
        raise ConfigError(
            f"fit trains one student; methods must name exactly one of support-only, "
            f"support+base, ti, dafusion, tint (got {list(config.methods)})"
        )
    method = students[0]
    out = Path(out_dir)
    record = {
        "data_dir": str(Path(data_dir).resolve()),
        "base": base,
        "seed": seed,
        "config": config.to_dict(),
    }
    # Every check before the first write: a refused run leaves no folder and no changed file.
    check_out_outside_data(data_dir, out)
    t_start = time.perf_counter()
    data = _load_user_classes(data_dir, config)
    base_ds = _load_base(base, config, seed)
    check_run_folder(out, record, data.class_names)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    write_json(out / "config.json", record)
    write_json(out / "classes.json", data.class_names)
    shots = [len(x) for x in data.support_pil]
    log.info("fit: %d classes, %s images per class -> %s", data.ways, shots, out)
    warn_few_images(data.class_names, shots)
    note_thread_count(out)

    if base_ds is not None and config.base_images > 0:
        import numpy as np

        rng = np.random.default_rng(derive_seed(seed, "base"))
        pick = np.sort(
            rng.choice(len(base_ds), size=min(config.base_images, len(base_ds)), replace=False)
        )
        data.base = _uint8(base_ds.load_images(pick), config.image_size)

    timings: dict[str, float] = {}
    gen = specialize_and_generate(data, config, out, seed)
    timings.update(gen.get("_timings", {}))
    synthetic = {
        g: _resize_uint8(gen[g].load_tensor()[0], config.image_size) for g in config.generators
    }

    t0 = time.perf_counter()
    teacher = build_episode_teacher(data, config)
    labels: dict[str, torch.Tensor] = {}
    if data.base is not None:
        labels["base"] = pseudo_label(teacher, data.base, out / "labels" / "base.safetensors")
    val = None
    for g, x in synthetic.items():
        labels[g] = pseudo_label(teacher, x, out / "labels" / f"{g}.safetensors")
        if g == method:
            # Hold out a slice of the synthetic set; the curve is agreement with the teacher.
            n_hold = max(data.ways, int(HOLDOUT_FRACTION * len(x)))
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            hold, keep = perm[:n_hold], perm[n_hold:]
            val = (x[hold], labels[g][hold].argmax(1))
            synthetic[g], labels[g] = x[keep], labels[g][keep]
    timings["teacher_s"] = time.perf_counter() - t0
    del teacher

    t0 = time.perf_counter()
    pretrained = pretrained_student_path(base_ds, config)
    student, result = distill_student(
        method, data, labels, synthetic, pretrained, config, out / "student", seed, val
    )
    timings["distill_s"] = time.perf_counter() - t0
    onnx_path = export_onnx(student.eval(), out / "model.onnx", data.class_names)
    summary = {
        "format": "tinyshot.fit",
        "version": 1,
        "classes": data.class_names,
        "shots": shots,
        "method": method,
        "generator": resolve_generator(config.generator),
        "teacher": config.teacher,
        "student": {"arch": config.student, "input_size": config.image_size},
        "model": str(onnx_path),
        "teacher_agreement_on_heldout_synthetic": result.final_val_acc,
        "timings": timings,
        "wall_seconds": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),  # results are identical for the same count
    }
    write_json(out / "fit.json", summary)
    build_fit_report(out, summary, data, config)
    log.info("fit done: %s (report %s)", onnx_path, out / "report.html")
    return summary
