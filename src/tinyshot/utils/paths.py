"""Where tinyshot keeps reusable caches (rendered glyphs, pretrained students)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$TINYSHOT_CACHE, else ~/.cache/tinyshot."""
    env = os.environ.get("TINYSHOT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tinyshot"
