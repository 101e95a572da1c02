"""Generated images as each model sees them, and each generator's set as the pipeline uses it.

A pad-mode generator's border is cropped (data.transforms.crop_generator_frame) before the
teacher or the student sees a generated image, so real and synthetic images share one frame.
The pipeline reads the stores slice by slice (diffusion.store.StoreView): the teacher labels
them in chunks and the student trains from a memory-mapped file at its input size, so memory
does not grow with the synthetic count. teacher_synthetic and student_synthetic are the
in-memory forms of the same preparation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyshot.data.transforms import crop_generator_frame, exact_uint8, shrink_uint8
from tinyshot.pipeline.config import STREAM_CHUNK, PipelineConfig, generator_prep
from tinyshot.pipeline.teacher_stage import label_images
from tinyshot.utils.timing import StageTimes


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    """ImageStore tensors are floats k/255: back to their exact uint8 values."""
    return x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)


def teacher_synthetic(x: torch.Tensor, prep: Any, size: int | None) -> torch.Tensor:
    """Generated images as the teacher sees them: without the generator's pad frame, shrunk
    only when larger than its input size (in-memory form of StoreView's "shrink" mode)."""
    return shrink_uint8(crop_generator_frame(_as_uint8(x), prep), size)


def student_synthetic(x: torch.Tensor, prep: Any, size: int, chunk: int = 1000) -> torch.Tensor:
    """Generated images as the student sees them: without the pad frame, at its input size, by
    the same resize its real images get, so a generated image equal to a prepared support is
    exactly that support to the student (in-memory form of StoreView's "exact")."""
    return exact_uint8(crop_generator_frame(_as_uint8(x), prep), size, chunk)


@dataclass
class SyntheticSet:
    """One generator's images as the pipeline uses them; nothing here holds the set in memory."""

    teacher_view: Any  # diffusion.store.StoreView at the teacher's input size
    student: torch.Tensor  # (N,3,S,S) uint8 at the student's size, memory-mapped
    labels: torch.Tensor  # (N, ways) teacher soft labels


def synthetic_sets(
    teacher: Any,
    stores: dict[str, Any],
    config: PipelineConfig,
    work: Path,
    times: StageTimes | None = None,
) -> dict[str, SyntheticSet]:
    """Teacher labels and the student's image file of every generator's store, streamed
    (timed as teacher_s and student_images_s when `times` is given)."""
    from tinyshot.diffusion.store import StoreView
    from tinyshot.distill.image_cache import cached_images

    times = times or StageTimes(work)
    prep = generator_prep(config)
    seen, labels, student = {}, {}, {}
    with times.stage("teacher_s"):
        for g in config.generators:
            seen[g] = StoreView(stores[g], prep, teacher.input_size, "shrink")
            labels[g] = label_images(teacher, seen[g], work / "labels" / f"{g}.safetensors")
    with times.stage("student_images_s"):
        for g in config.generators:
            small = StoreView(stores[g], prep, config.image_size, "exact")
            student[g] = cached_images(
                lambda a, b, v=small: v[a:b],
                len(small),
                config.image_size,
                work / "student_images" / f"{g}.npy",
                small.source_id(),
                chunk_size=STREAM_CHUNK,
            )
    return {g: SyntheticSet(seen[g], student[g], labels[g]) for g in config.generators}
