"""On-disk cache of a backbone's features per image content (safetensors shards).

Base and query images recur across episodes (the base pool and the query split are fixed),
and an ensemble teacher costs seconds per hundred images on a CPU, so each member's features
are stored once per (backbone weights, input size, image bytes). The cache key of a backbone
hashes its architecture, input size, normalisation and every weight, so fine-tuned or
re-initialised weights never read another backbone's features. Each batch of new features is
one shard file `<digest>.safetensors` with tensors `keys` (B, 32) uint8 (sha256 of every
image's float32 bytes and shape) and `features` (B, D); shards written by other processes are
picked up when a lookup misses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tinyshot.utils.io import atomic_write
from tinyshot.utils.logging import get_logger
from tinyshot.utils.paths import cache_dir

log = get_logger("models.feature_cache")

FORMAT = "tinyshot-features-v1"


def default_feature_cache_root() -> Path:
    """$TINYSHOT_CACHE/features."""
    return cache_dir() / "features"


def image_keys(images: torch.Tensor) -> list[bytes]:
    """sha256 per image of its float32 values and shape: the same picture gives the same key
    whether it arrives as uint8/255 or float32, alone or inside any batch."""
    x = images.detach().to("cpu", torch.float32).contiguous()
    shape = str(tuple(x.shape[1:])).encode()
    keys = []
    for im in x:
        h = hashlib.sha256(shape)
        h.update(im.reshape(-1).view(torch.uint8).numpy())
        keys.append(h.digest())
    return keys


def backbone_key(backbone: nn.Module, *parts: object) -> str:
    """Hex digest of the backbone's weights and buffers plus `parts` (arch, size, ...)."""
    h = hashlib.sha256(FORMAT.encode())
    for p in parts:
        h.update(repr(p).encode())
    for name, t in sorted(backbone.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class FeatureCache:
    """Features of one backbone, looked up by image content; `features()` computes only misses."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._loaded: set[str] = set()
        self._rows: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def _refresh(self) -> None:
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.safetensors")):
            if path.name in self._loaded:
                continue
            try:
                d = load_file(str(path))
                keys, feats = d["keys"], d["features"]
            except (SafetensorError, OSError, KeyError, ValueError) as e:
                log.warning("%s: unreadable feature shard (%s); ignored", path, e)
                continue
            for k, f in zip(keys, feats, strict=True):
                self._rows[bytes(k.numpy().tobytes())] = f
            self._loaded.add(path.name)

    def _write(self, keys: list[bytes], feats: torch.Tensor) -> None:
        k = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), 32)
        name = hashlib.sha256(b"".join(keys)).hexdigest()[:32] + ".safetensors"
        data = {"keys": k.contiguous(), "features": feats.contiguous()}
        atomic_write(self.folder / name, lambda p: save_file(data, str(p), {"format": FORMAT}))
        self._loaded.add(name)

    def features(
        self, backbone: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
    ) -> torch.Tensor:
        """(B, D) features of `images` (B,3,H,W): cached rows, `backbone(images[misses])` else."""
        keys = image_keys(images)
        if any(k not in self._rows for k in keys):
            self._refresh()  # another process may have written them meanwhile
        miss = [i for i, k in enumerate(keys) if k not in self._rows]
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        if miss:
            fresh = backbone(images[miss]).detach().float().cpu()
            new_keys = [keys[i] for i in miss]
            self._write(new_keys, fresh)
            for k, f in zip(new_keys, fresh, strict=True):
                self._rows[k] = f
        if not keys:
            return torch.empty(0, 0, device=images.device)
        return torch.stack([self._rows[k] for k in keys]).to(images.device)
