"""Shared fixtures. Tests run on CPU with tiny models; torch uses one thread per xdist worker."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
