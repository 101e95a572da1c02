"""Shared fixtures. Tests run on CPU with tiny models; torch uses one thread per xdist worker."""

from __future__ import annotations

import os
import tempfile

import torch

torch.set_num_threads(1)
# Caches (rendered glyphs, pretrained students) go to a throw-away folder, never the home dir.
os.environ.setdefault("TINYSHOT_CACHE", tempfile.mkdtemp(prefix="tinyshot-test-cache-"))
