"""Seeding: every random stream in tinyshot comes from an explicit seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (strings, ints); independent of PYTHONHASHSEED."""
    import hashlib

    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)
