"""The synthetic-data health of an episode (evaluation.health), logged and kept in health.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tinyshot.pipeline.config import PipelineConfig
from tinyshot.pipeline.episode_data import EpisodeData
from tinyshot.utils.io import write_json


def episode_health(
    teacher: Any,
    data: EpisodeData,
    labels: dict[str, torch.Tensor],
    synthetic: dict[str, torch.Tensor],
    stores: dict[str, Any],
    work: Path,
    config: PipelineConfig,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Synthetic-data health of an episode (evaluation.health): logged, written to health.json."""
    from tinyshot.evaluation.health import assess, intended_labels

    sources = ["support"] + (["base"] if data.base is not None else [])
    report = assess(
        teacher=teacher,
        class_names=data.class_names,
        support=data.teacher_support if data.teacher_support is not None else data.support,
        support_labels=data.support_labels,
        soft_labels={g: labels[g] for g in synthetic},
        intended={g: intended_labels(stores[g]) for g in synthetic},
        synthetic=synthetic,
        spec_dir=work / "specialize" if (work / "specialize").is_dir() else None,
        lora_dir=work / "lora" if (work / "lora").is_dir() else None,
        sources=sources + [f"synthetic:{g}" for g in synthetic],
        notes=notes,
    )
    report.log_warnings()
    out = report.to_dict()
    write_json(work / "health.json", out)
    return out
