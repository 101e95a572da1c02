"""Training checkpoints that make resume bit-exact and refuse the wrong architecture.

A checkpoint holds model/optimizer/scheduler state, the step, every RNG state and a small
`meta` dict (architecture, number of classes, config). Writes are atomic, so a kill during a
save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyshot.errors import ModelError
from tinyshot.utils.io import atomic_write


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    step: int,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
    generators: dict[str, torch.Generator] | None = None,
) -> Path:
    state = {
        "model": model.state_dict(),
        "step": step,
        "meta": meta,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "extra": extra or {},
    }
    return atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(
    path: str | Path, expect: dict[str, Any] | None = None, map_location: str = "cpu"
) -> dict[str, Any]:
    """Load and check that meta matches `expect` (e.g. {"arch": "conv4", "num_classes": 5})."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # corrupt or foreign file
        raise ModelError(
            f"{path}: not a readable tinyshot checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise ModelError(f"{path}: not a tinyshot checkpoint")
    for key, want in (expect or {}).items():
        got = state["meta"].get(key)
        if got != want:
            raise ModelError(f"{path}: checkpoint has {key}={got!r}, expected {key}={want!r}")
    return state


def restore(
    state: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    generators: dict[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> int:
    """Put a loaded checkpoint back in place; returns the step to continue from."""
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    for k, g in (generators or {}).items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k])
    if restore_rng:
        set_rng_state(state["rng"])
    return int(state["step"])
