"""Teacher soft labels for the distillation images, cached on disk and resumable.

The teacher is slow (a ViT on tens of thousands of base images), so its probabilities are
written as safetensors with a fingerprint of everything that determines them (the images,
the teacher's weights and support set, the temperature). A cache whose fingerprint differs
is recomputed, never silently reused. Large sets are labelled in chunks; every finished chunk
is a file of its own, so a killed job resumes at the first missing chunk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import atomic_write
from tinyshot.utils.logging import get_logger, progress

log = get_logger("distill.pseudo_label")

FORMAT = "tinyshot-soft-labels-v1"
ImageLoader = Callable[[int, int], torch.Tensor]  # (start, stop) -> images[start:stop]


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes."""
    h = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}".encode())
    t = x.detach().cpu().contiguous().reshape(-1)
    if t.numel():
        h.update(t.view(torch.uint8).numpy())  # buffer protocol: no copy of large image sets
    return h.hexdigest()


def teacher_fingerprint(teacher: Any, probe: torch.Tensor, temperature: float) -> str:
    """What the teacher would answer: its weights/buffers, plus its probabilities on a probe batch.

    The probe catches state that lives outside `state_dict` (e.g. prototypes set by
    `set_support`). Probabilities are rounded so float noise does not invalidate a cache.
    """
    fp = getattr(teacher, "fingerprint", None)
    if callable(fp):
        return str(fp())
    h = hashlib.sha256()
    if isinstance(teacher, torch.nn.Module):
        for k, v in sorted(teacher.state_dict().items()):
            h.update(k.encode())
            h.update(tensor_digest(v).encode())
    with torch.no_grad():
        p = teacher.predict_proba(_to_float(probe), temperature=temperature)
    h.update(str(tuple(p.shape)).encode())
    h.update(json.dumps(torch.round(p.float().cpu() * 1e4).int().tolist()).encode())
    return h.hexdigest()


def _read_labels(path: Path) -> tuple[torch.Tensor, dict[str, str]] | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path))["probs"], meta
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        log.warning("%s: unreadable soft-label file (%s); recomputing", path, e)
        return None


def _write_labels(path: Path, probs: torch.Tensor, meta: dict[str, str]) -> None:
    atomic_write(path, lambda p: save_file({"probs": probs.contiguous()}, str(p), metadata=meta))


def load_soft_labels(path: str | Path) -> torch.Tensor:
    """Read a cached (N, ways) soft-label file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: soft-label file not found")
    got = _read_labels(path)
    if got is None:
        raise DataError(f"{path}: not a readable soft-label file")
    return got[0]


def _predict(
    teacher: Any, x: torch.Tensor, temperature: float, batch_size: int | None
) -> torch.Tensor:
    """Probabilities for a chunk, converted to float a few batches at a time (a chunk of
    uint8 images at 224 px is 4x larger as floats)."""
    step = (batch_size or 64) * max(1, 256 // (batch_size or 64))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), step):
            p = teacher.predict_proba(
                _to_float(x[i : i + step]), temperature=temperature, batch_size=batch_size
            )
            out.append(p.detach().float().cpu())
    return torch.cat(out)


def pseudo_label(
    teacher: Any,
    images: torch.Tensor | ImageLoader,
    cache_path: str | Path,
    *,
    temperature: float = 1.0,
    batch_size: int | None = None,
    chunk_size: int = 2048,
    num_images: int | None = None,
    source_id: str | None = None,
) -> torch.Tensor:
    """(N, ways) teacher probabilities for `images`, cached at `cache_path` (safetensors).

    images: a (N,3,H,W) tensor (uint8 or float in [0,1]) or a loader `(start, stop) -> tensor`
    for sets too large for memory; a loader needs `num_images` and a `source_id` string that
    changes whenever the images do (it stands in for hashing their content).
    """
    cache_path = Path(cache_path)
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1 or (batch_size is not None and batch_size < 1):
        raise ConfigError("chunk_size and batch_size must be >= 1")
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"images must be (N,3,H,W), got {tuple(images.shape)}")
        n = images.shape[0]
        source = tensor_digest(images)

        def load(a: int, b: int) -> torch.Tensor:
            return images[a:b]
    else:
        if num_images is None or source_id is None:
            raise ConfigError("an image loader needs num_images and source_id")
        n, source, load = int(num_images), f"loader:{source_id}", images
    if n == 0:
        raise DataError("no images to pseudo-label")

    probe = load(0, min(8, n))
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "format": FORMAT,
                "n": n,
                "images": source,
                "teacher": teacher_fingerprint(teacher, probe, temperature),
                "temperature": float(temperature),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    meta = {"format": FORMAT, "fingerprint": fingerprint, "num_images": str(n)}

    if cache_path.is_file():
        got = _read_labels(cache_path)
        if got is not None and got[1].get("fingerprint") == fingerprint and got[0].shape[0] == n:
            log.info("%s: reusing cached soft labels (%d images)", cache_path, n)
            return got[0]
        if got is not None:
            log.info("%s: cache is for other images/teacher/temperature; recomputing", cache_path)

    parts_dir = cache_path.with_name(cache_path.name + ".parts")
    parts: list[torch.Tensor] = []
    starts = list(range(0, n, chunk_size))
    for start in progress(starts, desc=f"teacher labels ({cache_path.stem})", unit="batch"):
        stop = min(start + chunk_size, n)
        part_path = parts_dir / f"part_{start:09d}_{stop:09d}.safetensors"
        if part_path.is_file():
            got = _read_labels(part_path)
            if got is not None and got[1].get("fingerprint") == fingerprint:
                parts.append(got[0])
                continue
        x = load(start, stop)
        if x.shape[0] != stop - start:
            raise DataError(
                f"image loader returned {x.shape[0]} images for [{start}, {stop}) "
                f"(expected {stop - start})"
            )
        p = _predict(teacher, x, temperature, batch_size)
        if not torch.isfinite(p).all():
            raise DataError(
                f"teacher returned non-finite probabilities for images [{start}, {stop})"
            )
        _write_labels(part_path, p, {**meta, "start": str(start), "stop": str(stop)})
        parts.append(p)
    probs = torch.cat(parts)
    _write_labels(cache_path, probs, meta)
    shutil.rmtree(parts_dir, ignore_errors=True)
    log.info("%s: %d soft labels over %d classes", cache_path, n, probs.shape[1])
    return probs
