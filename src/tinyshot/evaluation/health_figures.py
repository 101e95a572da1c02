"""The health checks' figures, each from what the pipeline already has (evaluation.health
judges them): teacher agreement per class, the TI and NTI figures recorded by the
specialization, distances to the supports in the teacher's feature space, and the teacher's
leave-one-out accuracy over the supports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tinyshot.utils.logging import get_logger

log = get_logger("evaluation.health")


def agreement_by_class(
    probs: torch.Tensor, intended: torch.Tensor, ways: int
) -> list[tuple[int, float, float]]:
    """Per class: (images, agreement, mean intended-class probability) from teacher soft labels."""
    intended = intended.long().view(-1)
    if probs.shape[0] != intended.numel():
        raise ValueError(f"{probs.shape[0]} soft labels but {intended.numel()} intended classes")
    pred = probs.argmax(1)
    out = []
    for c in range(ways):
        m = intended == c
        n = int(m.sum())
        if n == 0:
            out.append((0, float("nan"), float("nan")))
            continue
        out.append((n, float((pred[m] == c).double().mean()), float(probs[m, c].double().mean())))
    return out


def _find(meta: dict[str, Any], key: str) -> Any:
    """A per-class figure at the top of the artifact JSON or one level down (e.g. "stats")."""
    if key in meta:
        return meta[key]
    for v in meta.values():
        if isinstance(v, dict) and key in v:
            return v[key]
    return None


def nti_psnr(
    meta: dict[str, Any], support_latents: torch.Tensor | None
) -> tuple[float, str] | None:
    """(PSNR dB, space) of a class's NTI reconstructions, from its specialization JSON.

    Prefers an image-space `nti_psnr_db` recorded by specialize. Else computes it from the
    recorded reconstruction MSEs (`inversion_recon_mse`): for a pixel-space model the "latent"
    is the image in [-1, 1], so PSNR over the range 2 is the image PSNR; for a latent model it
    is a latent-space PSNR over the peak-to-peak range of the class's support latents.
    None when neither is available (e.g. NPI runs).
    """
    v = _find(meta, "nti_psnr_db")
    if v is not None:
        vals = v if isinstance(v, list) else [v]
        return float(sum(vals) / len(vals)), "image"
    mse = _find(meta, "inversion_recon_mse")
    if not mse:
        return None
    mean_mse = max(float(sum(mse) / len(mse)), 1e-12)
    if (meta.get("model") or {}).get("pixel_space"):
        return 10.0 * math.log10(4.0 / mean_mse), "image"
    if support_latents is None or support_latents.numel() == 0:
        return None
    peak = float(support_latents.max() - support_latents.min())
    return 10.0 * math.log10(peak * peak / mean_mse), "latent"


def specialization_figures(spec_dir: str | Path) -> dict[int, dict[str, Any]]:
    """class index -> {ti_loss_init, ti_loss_final, nti_psnr_db, nti_psnr_space, inversion}."""
    from safetensors import safe_open

    from tinyshot.utils.io import read_json

    d = Path(spec_dir)
    out: dict[int, dict[str, Any]] = {}
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        if not p.stem.isdigit():
            continue
        meta = read_json(p)
        lat = None
        st = p.with_suffix(".safetensors")
        pixel = (meta.get("model") or {}).get("pixel_space")
        if st.is_file() and _find(meta, "nti_psnr_db") is None and not pixel:
            try:
                with safe_open(str(st), framework="pt") as f:
                    lat = f.get_tensor("support_latents")
            except Exception as e:  # an unreadable artifact is specialize's error, not ours
                log.debug("%s: no support latents for PSNR (%s)", st, e)
        psnr = nti_psnr(meta, lat) if meta.get("inversion", "nti") == "nti" else None
        out[int(p.stem)] = {
            "ti_loss_init": _find(meta, "ti_loss_init"),
            "ti_loss_final": _find(meta, "ti_loss_final"),
            "nti_psnr_db": None if psnr is None else psnr[0],
            "nti_psnr_space": None if psnr is None else psnr[1],
        }
    if (d / "lora.json").is_file():  # a LoRA folder: its support loss before/after training
        stats = read_json(d / "lora.json").get("stats") or {}
        pairs = zip(stats.get("support_loss_init", []), stats.get("support_loss_final", []))
        for c, (init, final) in enumerate(pairs):
            row = out.setdefault(c, {"nti_psnr_db": None, "nti_psnr_space": None})
            row.update(ti_loss_init=init, ti_loss_final=final)
    return out


@torch.no_grad()
def teacher_features(
    teacher: Any, images: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """(B, D) unit-normalised teacher backbone features of uint8 or [0,1] images."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    was = teacher.training
    teacher.eval()
    feats = teacher._features_batched(x, batch_size).float().cpu()
    teacher.train(was)
    return F.normalize(feats, dim=-1)


def nearest_support_distances(
    synth_feats: torch.Tensor,
    synth_labels: torch.Tensor,
    support_feats: torch.Tensor,
    support_labels: torch.Tensor,
    ways: int,
) -> list[tuple[torch.Tensor, float | None]]:
    """Per class: (each synthetic image's cosine distance to its nearest support of the class,
    support spread). The spread is the mean leave-one-out nearest-neighbour distance among the
    class's supports (None with one support image)."""
    out = []
    for c in range(ways):
        s = support_feats[support_labels == c]
        g = synth_feats[synth_labels == c]
        dist = (1 - g @ s.t()).min(1).values if len(g) and len(s) else torch.empty(0)
        spread = None
        if len(s) >= 2:
            d = 1 - s @ s.t()
            d.fill_diagonal_(float("inf"))
            spread = float(d.min(1).values.mean())
        out.append((dist, spread))
    return out


def support_distances(
    synth_feats: torch.Tensor,
    synth_labels: torch.Tensor,
    support_feats: torch.Tensor,
    support_labels: torch.Tensor,
    ways: int,
) -> list[tuple[float | None, float | None]]:
    """Per class: (mean cosine distance synthetic -> nearest class support, support spread)."""
    return [
        (float(d.mean()) if len(d) else None, spread)
        for d, spread in nearest_support_distances(
            synth_feats, synth_labels, support_feats, support_labels, ways
        )
    ]


@torch.no_grad()
def loo_protonet_accuracy(feats: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[int, int]:
    """Leave-one-out ProtoNet over the supports: (correct, evaluated).

    Each support image is classified by cosine to prototypes built without it (the teacher's
    rule: mean of unit features, renormalised). Images of classes with one support are skipped,
    since leaving them out removes their class.
    """
    f = F.normalize(feats.float(), dim=-1)
    labels = labels.long().view(-1)
    sums = torch.zeros(ways, f.shape[1]).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=ways)
    correct = total = 0
    for i in range(len(f)):
        c = int(labels[i])
        if counts[c] < 2:
            continue
        s = sums.clone()
        s[c] -= f[i]
        protos = F.normalize(s, dim=-1)
        correct += int(int((f[i] @ protos.t()).argmax()) == c)
        total += 1
    return correct, total
