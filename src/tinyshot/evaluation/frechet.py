"""Frechet distance between two image sets in some feature space (the formula behind FID).

`frechet_distance` follows pytorch-fid's `calculate_frechet_distance` (scipy `sqrtm`, an eps
offset for singular covariances, tiny imaginary parts dropped) so numbers are comparable.
The metric's name always says which features were used: "FID-64" only for the Inception-V3
early-layer features of the paper (`tinyshot.evaluation.inception`); the offline stand-in on
EfficientNet-Lite0 features is "FD-EffNetLite0" and must not be reported as FID.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from tinyshot.errors import DataError
from tinyshot.utils.logging import get_logger, progress

log = get_logger("evaluation.frechet")

EFFNET_METRIC = "FD-EffNetLite0"


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps (B,3,H,W) images in [0,1] to (B,D) features; resizing/normalising is its own job."""

    metric_name: str
    feature_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


ImageSet = torch.Tensor | np.ndarray | Sequence[Image.Image]


@dataclass
class FrechetResult:
    metric: str
    value: float
    n_a: int
    n_b: int
    feature_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N,D) features, in float64."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise DataError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise DataError(f"need at least 2 images for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise DataError("features contain NaN or infinity")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's "singular matrix" notice; we check the result
        return linalg.sqrtm(a)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise DataError(
            f"Frechet distance: shapes do not match (mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {s1.shape} vs {s2.shape})"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning(
            "Frechet distance: singular product of covariances; adding %g to diagonals", eps
        )
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            # Numerically indefinite product: use the symmetric form Tr((S1^1/2 S2 S1^1/2)^1/2).
            log.warning("Frechet distance: large imaginary component; using symmetric form")
            return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_sym(s1, s2))
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """The Frechet distance of the Gaussians fitted to two feature sets (same value as
    `frechet_distance(*feature_statistics(fa), *feature_statistics(fb))`).

    With fewer images than feature dimensions (300 images, 1280-d features) the D x D matrix
    square root is replaced by an exact n x n eigenproblem: the non-zero eigenvalues of
    S1 S2 = X'X Y'Y / ((n-1)(m-1)) are those of the symmetric PSD matrix (XY')(XY')' / ((n-1)(m-1)),
    with X, Y the centred features. Seconds become milliseconds and no eps offset is needed.
    """
    mu1, s1 = feature_statistics(fa)
    mu2, s2 = feature_statistics(fb)
    n, m, d = fa.shape[0], fb.shape[0], fa.shape[1]
    if min(n, m) >= d:
        return frechet_distance(mu1, s1, mu2, s2)
    x = np.asarray(fa, np.float64) - mu1
    y = np.asarray(fb, np.float64) - mu2
    c = x @ y.T if n <= m else y @ x.T  # the smaller side keeps the eigenproblem small
    k = (c @ c.T) / ((n - 1) * (m - 1))
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((k + k.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _trace_sqrt_sym(s1: np.ndarray, s2: np.ndarray) -> float:
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r @ s2 @ r
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def _batches(images: ImageSet, batch_size: int):
    """Yield float (B,3,H,W) batches in [0,1] from tensors/arrays (uint8 or float) or PIL lists."""
    n = len(images)
    for i in range(0, n, batch_size):
        chunk = images[i : i + batch_size]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.ascontiguousarray(chunk))
        if isinstance(chunk, torch.Tensor):
            x = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
        else:
            from tinyshot.data.transforms import images_to_tensor

            sizes = {im.size for im in chunk}
            size = None if len(sizes) == 1 else max(max(s) for s in sizes)
            x = images_to_tensor(list(chunk), size)
        if x.ndim != 4 or x.shape[1] != 3:
            raise DataError(f"images must be (N,3,H,W), got a batch of shape {tuple(x.shape)}")
        yield x


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    images: ImageSet,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    desc: str = "features",
) -> np.ndarray:
    """(N, D) float64 features of an image set, computed in batches."""
    from tinyshot.utils.device import resolve_device

    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if isinstance(extractor, torch.nn.Module):
        extractor.to(dev).eval()
    out = []
    total = (len(images) + batch_size - 1) // batch_size
    for x in progress(_batches(images, batch_size), desc=desc, total=total):
        out.append(extractor(x.to(dev)).detach().float().cpu().numpy().astype(np.float64))
    if not out:
        raise DataError("no images to compute features of")
    return np.concatenate(out)


def frechet_between(
    images_a: ImageSet,
    images_b: ImageSet,
    extractor: FeatureExtractor,
    batch_size: int = 50,
    device: str | torch.device | None = None,
) -> FrechetResult:
    """Frechet distance between two image sets in the extractor's feature space."""
    fa = extract_features(extractor, images_a, batch_size, device, desc="features A")
    fb = extract_features(extractor, images_b, batch_size, device, desc="features B")
    if fa.shape[0] <= fa.shape[1] or fb.shape[0] <= fb.shape[1]:
        log.debug(
            "%s: %d/%d images for %d-d features; the covariance is rank-deficient and the "
            "distance is dominated by estimation noise",
            extractor.metric_name,
            fa.shape[0],
            fb.shape[0],
            fa.shape[1],
        )
    value = frechet_distance_features(fa, fb)
    return FrechetResult(extractor.metric_name, value, fa.shape[0], fb.shape[0], fa.shape[1])


class BackboneFeatures(torch.nn.Module):
    """Wrap a `FeatureBackbone` ([0,1] images -> pooled (B,D) features) as a Frechet extractor."""

    def __init__(self, backbone: torch.nn.Module, metric_name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.metric_name = metric_name
        self.feature_dim = int(backbone.feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.backbone(images)
        return f.flatten(1) if f.ndim > 2 else f


def efficientnet_frechet(
    images_a: ImageSet,
    images_b: ImageSet,
    backbone: torch.nn.Module | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
) -> FrechetResult:
    """Frechet distance on EfficientNet-Lite0 pooled features (1280-d): "FD-EffNetLite0", not FID.

    Offline stand-in for FID (no Inception weights ship in any package). Values are not
    comparable with FID numbers from papers.
    """
    if backbone is None:
        from tinyshot.models.backbones import build_backbone

        backbone = build_backbone("efficientnet-lite0")
    return frechet_between(
        images_a, images_b, BackboneFeatures(backbone, EFFNET_METRIC), batch_size, device
    )


def read_image_dir(folder: str | Path, limit: int | None = None) -> list[Image.Image]:
    """All images under `folder` (recursive, sorted by path, hidden files skipped) as RGB."""
    from tinyshot.data.images import IMAGE_EXTENSIONS, open_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if limit is not None:
        files = files[:limit]
    if len(files) < 2:
        raise DataError(f"{folder}: found {len(files)} image file(s); need at least 2")
    return [open_rgb(p) for p in progress(files, desc=f"read {folder.name}")]
