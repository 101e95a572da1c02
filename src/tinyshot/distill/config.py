"""Distillation hyper-parameters (paper App. B.4, LabelHalluc recipe) as plain, serialisable data.

Ablations are configuration: `sources` picks any subset of support/base/synthetic images and
`synthetic_labels` switches the teacher off for synthetic images (hard generator labels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tinyshot.errors import ConfigError

SOURCES = ("support", "base", "synthetic")
# Keys that may change between an interrupted run and its resume without changing the result.
RESUME_FREE_KEYS = ("eval_every", "checkpoint_every", "eval_batch_size")


@dataclass
class DistillConfig:
    iterations: int = 10_000
    batch_size: int = 150
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Learning-rate drops as fractions of `iterations` (paper: x0.1 after 5k of 10k).
    lr_milestones: tuple[float, ...] = (0.5,)
    lr_gamma: float = 0.1
    sources: tuple[str, ...] = SOURCES
    # KL temperature; applied to teacher probabilities (re-tempered) and student logits alike.
    kd_temperature: float = 1.0
    # "teacher": KL to the teacher's soft labels; "generator": CE on the class it was generated for.
    synthetic_labels: str = "teacher"
    augment: bool = True
    color_jitter: float = 0.0
    eval_every: int = 500
    checkpoint_every: int = 500
    eval_batch_size: int = 256
    seed: int = 0
    input_size: int = 84

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        self.validate()

    def validate(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if not self.sources:
            raise ConfigError(f"sources: choose at least one of {', '.join(SOURCES)}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or len(set(self.sources)) != len(self.sources):
            raise ConfigError(
                f"sources must be distinct names from {SOURCES}, got {list(self.sources)}"
            )
        if self.batch_size < len(self.sources):
            raise ConfigError(
                f"batch_size {self.batch_size} is smaller than the number of sources "
                f"({len(self.sources)}); each source needs at least one image per batch"
            )
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0; momentum and weight_decay must be >= 0")
        if any(not 0 < m <= 1 for m in self.lr_milestones):
            raise ConfigError(
                f"lr_milestones are fractions of iterations in (0, 1], got {self.lr_milestones}"
            )
        if self.kd_temperature <= 0:
            raise ConfigError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if self.synthetic_labels not in ("teacher", "generator"):
            raise ConfigError(
                f"synthetic_labels must be 'teacher' or 'generator', got {self.synthetic_labels!r}"
            )
        if self.eval_every < 1 or self.checkpoint_every < 1 or self.eval_batch_size < 1:
            raise ConfigError("eval_every, checkpoint_every and eval_batch_size must be >= 1")
        if self.input_size < 8:
            raise ConfigError(f"input_size must be >= 8 pixels, got {self.input_size}")
        if not 0 <= self.color_jitter < 1:
            raise ConfigError(f"color_jitter must be in [0, 1), got {self.color_jitter}")

    @property
    def milestone_steps(self) -> list[int]:
        return sorted({max(1, round(m * self.iterations)) for m in self.lr_milestones})

    @property
    def per_source(self) -> int:
        """Images per source in each batch: equal parts (remainder dropped)."""
        return self.batch_size // len(self.sources)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown distillation option(s): {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad distillation config: {e}") from e

    def resume_key(self) -> dict[str, Any]:
        """The options that must match for a checkpoint to be resumed."""
        d = self.to_dict()
        for k in RESUME_FREE_KEYS:
            d.pop(k)
        return d
