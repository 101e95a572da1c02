"""The episode's teacher: built on the episode's supports, its run-level notes, its soft labels
of an image set (cached, streamed for views) and its accuracy on the queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinyshot.pipeline.config import STREAM_CHUNK, PipelineConfig
from tinyshot.pipeline.episode_data import EpisodeData
from tinyshot.utils.device import resolve_device
from tinyshot.utils.logging import get_logger
from tinyshot.utils.seed import derive_seed

log = get_logger("pipeline.teacher_stage")


def build_episode_teacher(
    data: EpisodeData, config: PipelineConfig, pretrained_student: Path | None = None
):
    """The configured teacher with its supports set; a `student` member of its spec is the
    run's base-class pretrained student (`pretrained_student`), left out with a warning when
    the run has none."""
    from tinyshot.models.ensemble import with_student
    from tinyshot.models.teacher import build_teacher

    spec, warning = with_student(config.teacher, pretrained_student)
    if warning:
        log.warning("%s", warning)
    kw: dict[str, Any] = {}
    if config.teacher_input_size:
        kw["input_size"] = config.teacher_input_size
    with torch.random.fork_rng(devices=[]):  # a randomly initialised part is seeded too
        torch.manual_seed(derive_seed("teacher", config.teacher) % 2**63)
        teacher = build_teacher(spec, checkpoint=config.teacher_checkpoint, **kw)
    teacher.eval().to(resolve_device(None if config.device == "auto" else config.device))
    support = data.teacher_support if data.teacher_support is not None else data.support
    teacher.set_support(support.float() / 255.0, data.support_labels)
    return teacher


def teacher_notes(config: PipelineConfig, pretrained_student: Path | None) -> list[str]:
    """Run-level warnings about the teacher as built (its `student` member left out), for the
    health report and so report.html."""
    from tinyshot.models.ensemble import with_student

    warning = with_student(config.teacher, pretrained_student)[1]
    return [warning] if warning else []


def label_images(teacher: Any, images: Any, path: Path) -> torch.Tensor:
    """Teacher soft labels of a tensor, or of a view read slice by slice (StoreView,
    DatasetView), cached at `path` (distill.pseudo_label)."""
    from tinyshot.distill.pseudo_label import pseudo_label

    if isinstance(images, torch.Tensor):
        return pseudo_label(teacher, images, path)
    return pseudo_label(
        teacher,
        lambda a, b: images[a:b],
        path,
        num_images=len(images),
        source_id=images.source_id(),
        chunk_size=STREAM_CHUNK,
    )


def teacher_accuracy(teacher: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Teacher accuracy on uint8 images, in chunks (queries at the teacher's size are large)."""
    hits = 0
    for i in range(0, len(images), 500):
        probs = teacher.predict_proba(images[i : i + 500].float() / 255.0)
        hits += int((probs.argmax(1) == labels[i : i + 500]).sum())
    return hits / max(1, len(images))
