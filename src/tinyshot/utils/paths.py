"""Where tinyshot keeps reusable caches (rendered glyphs, pretrained students), and how run
folders name the models shipped inside the package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """$TINYSHOT_CACHE, else ~/.cache/tinyshot."""
    env = os.environ.get("TINYSHOT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tinyshot"


def portable_model_id(model_id: str) -> str:
    """A model id as run folders compare it: a model shipped in the package (`.../tinyshot/
    assets/<kind>/<name>`) by its place in the package, since the checkout or environment it
    was loaded from may move between a run and its resume; any other id as it is."""
    parts = Path(model_id).parts
    if len(parts) >= 4 and parts[-4] == "tinyshot" and parts[-3] == "assets":
        return f"tinyshot-assets:{parts[-2]}/{parts[-1]}"
    return model_id


def portable_record(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its "model_id" (if any) made portable, for comparing fingerprints."""
    if isinstance(record.get("model_id"), str):
        return {**record, "model_id": portable_model_id(record["model_id"])}
    return record


def same_model(recorded: str | None, model_id: str) -> bool:
    """Whether a record's model id (None: not recorded) names the model `model_id`."""
    return recorded is None or portable_model_id(recorded) == portable_model_id(model_id)
