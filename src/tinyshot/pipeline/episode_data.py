"""The images of one episode, loaded once: at the student's input size, and as the teacher sees
them (data.transforms.teacher_view: the originals, resized only to its input size when they
differ in size or are larger). Base-class images reach the teacher slice by slice
(DatasetView), so they never sit in memory at the teacher's size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tinyshot.data.base import FewShotDataset
from tinyshot.data.episodes import Episode
from tinyshot.data.transforms import images_to_uint8, teacher_view
from tinyshot.pipeline.config import STREAM_CHUNK, PipelineConfig
from tinyshot.utils.seed import derive_seed


@dataclass
class EpisodeData:
    """The images of one episode as uint8 tensors: at the student's input size (support, query,
    base) and as the teacher sees them (teacher_*: the originals, see teacher_view)."""

    class_names: list[str]
    support_pil: list[list[Any]]  # per class, PIL images (generator input)
    support: torch.Tensor  # (NK,3,S,S) uint8
    support_labels: torch.Tensor
    query: torch.Tensor | None = None
    query_labels: torch.Tensor | None = None
    base: torch.Tensor | None = None
    teacher_support: torch.Tensor | None = None
    teacher_query: torch.Tensor | None = None
    # the base images as the teacher sees them, loaded slice by slice (DatasetView) or a tensor
    teacher_base: Any = None

    @property
    def ways(self) -> int:
        return len(self.class_names)


def load_episode_data(
    episode: Episode,
    support_ds: FewShotDataset,
    query_ds: FewShotDataset | None,
    base_ds: FewShotDataset | None,
    config: PipelineConfig,
    seed: int,
) -> EpisodeData:
    """The episode's supports and queries, and its base-class images when a method uses them."""
    size = config.image_size
    tsize = config.teacher_input_size
    support_pil = [
        support_ds.load_images([support_ds.index_of(i) for i in ids]) for ids in episode.support
    ]
    labels = [c for c, imgs in enumerate(support_pil) for _ in imgs]
    flat = [im for imgs in support_pil for im in imgs]
    data = EpisodeData(
        class_names=list(episode.classes),
        support_pil=support_pil,
        support=images_to_uint8(flat, size),
        support_labels=torch.tensor(labels, dtype=torch.long),
        teacher_support=teacher_view(flat, tsize),
    )
    if episode.query:
        qds = query_ds or support_ds
        idx, qlab = episode.query_indices(qds)
        query_pil = qds.load_images(idx)
        data.query = images_to_uint8(query_pil, size)
        data.teacher_query = teacher_view(query_pil, tsize)
        data.query_labels = torch.from_numpy(qlab)
    uses_base = any(m not in ("teacher", "support-only") for m in config.methods)
    if uses_base and base_ds is not None and config.base_images > 0:
        data.base, data.teacher_base = load_base_images(base_ds, config, seed)
    return data


class DatasetView:
    """Dataset images (at `indices`) as a teacher sees them (teacher_view), loaded slice by
    slice: `view[a:b]` is uint8 (n,3,S,S)."""

    def __init__(self, ds: FewShotDataset, indices: np.ndarray, size: int | None) -> None:
        self.ds, self.indices, self.size = ds, np.asarray(indices), size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: slice) -> torch.Tensor:
        return teacher_view(self.ds.load_images(self.indices[key].tolist()), self.size)

    def source_id(self) -> str:
        import hashlib

        ids = [self.ds.item_id(int(i)) for i in self.indices]
        key = {"dataset": self.ds.name, "split": self.ds.split, "size": self.size, "items": ids}
        return hashlib.sha256(repr(key).encode()).hexdigest()


def load_base_images(
    base_ds: FewShotDataset, config: PipelineConfig, seed: int
) -> tuple[torch.Tensor, DatasetView]:
    """config.base_images base-class images drawn with the run's seed: at the student's size in
    memory (bounded by base_images), and for the teacher as a DatasetView."""
    rng = np.random.default_rng(derive_seed(seed, "base"))
    n = min(config.base_images, len(base_ds))
    pick = np.sort(rng.choice(len(base_ds), size=n, replace=False))
    student = torch.cat(
        [
            images_to_uint8(
                base_ds.load_images(pick[i : i + STREAM_CHUNK].tolist()), config.image_size
            )
            for i in range(0, n, STREAM_CHUNK)
        ]
    )
    return student, DatasetView(base_ds, pick, config.teacher_input_size)


def val_subset(
    data: EpisodeData, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to `per_class` queries per class, drawn with the run's seed, for the accuracy curve."""
    if data.query is None or data.query_labels is None or per_class <= 0:
        return None
    g = torch.Generator().manual_seed(derive_seed(seed, "val") % 2**63)
    keep = []
    for c in range(data.ways):
        idx = torch.nonzero(data.query_labels == c).view(-1)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    sel = torch.cat(keep)
    return data.query[sel], data.query_labels[sel]
