"""`fit --holdout N`: supports kept out of every training stage, to estimate accuracy on real
images from the few a user has."""

from __future__ import annotations

from typing import Any

import torch


def holdout_split(
    labels: torch.Tensor, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out): `per_class` supports of every class, drawn with `seed`.

    Every class must keep at least one image for training.
    """
    labels = labels.long().view(-1)
    g = torch.Generator().manual_seed(seed)
    keep, hold = [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).view(-1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        hold.append(idx[:per_class])
        keep.append(idx[per_class:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(hold)).values


def hold_out_supports(
    data: Any, per_class: int, seed: int
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Remove `per_class` supports of every class from an EpisodeData before any training stage.

    Returns (the remaining data, held-out images uint8, their labels). A class needs more
    than `per_class` images, or it would have none left to learn from.
    """
    rest, held = split_supports(data, per_class, seed)
    return rest, held.support, held.support_labels


def split_supports(data: Any, per_class: int, seed: int) -> tuple[Any, Any]:
    """(remaining, held out): two EpisodeData, each with the student's and the teacher's view
    of its supports, so a held-out image reaches neither model's training in any size."""
    import dataclasses

    from tinyshot.errors import ConfigError

    if per_class < 1:
        raise ConfigError(f"--holdout must be >= 1 image per class, got {per_class}")
    short = [n for n, imgs in zip(data.class_names, data.support_pil) if len(imgs) <= per_class]
    if short:
        raise ConfigError(
            f"--holdout {per_class}: class(es) {short} have <= {per_class} images, none would be "
            "left for training; add images or lower --holdout"
        )
    keep, hold = holdout_split(data.support_labels, per_class, seed)

    def subset(rows: torch.Tensor) -> Any:
        chosen = set(rows.tolist())
        pil, flat = [], 0
        for imgs in data.support_pil:
            pil.append([im for j, im in enumerate(imgs) if flat + j in chosen])
            flat += len(imgs)
        teacher = data.teacher_support
        return dataclasses.replace(
            data,
            support_pil=pil,
            support=data.support[rows],
            support_labels=data.support_labels[rows],
            teacher_support=None if teacher is None else teacher[rows],
        )

    return subset(keep), subset(hold)
