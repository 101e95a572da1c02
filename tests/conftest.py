"""Shared fixtures. Tests run on CPU with tiny models; torch uses one thread per xdist worker."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import torch

torch.set_num_threads(1)
# ... and `tinyshot.cli.main`, which sets the thread count from OMP_NUM_THREADS or the cores, keeps it.
os.environ["OMP_NUM_THREADS"] = "1"
# Caches (rendered glyphs, pretrained students) go to a throw-away folder, never the home dir,
# made once per session (xdist workers inherit it) and removed when the session's process ends.
if "TINYSHOT_CACHE" not in os.environ:
    os.environ["TINYSHOT_CACHE"] = tempfile.mkdtemp(prefix="tinyshot-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TINYSHOT_CACHE"], ignore_errors=True)
