"""N-way K-shot episodes: the unit every method is evaluated on.

An `Episode` fixes the classes (by name) and the support/query items (by stable item id).
`tinyshot.data.episode_io` reads and writes them as versioned JSON episode files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinyshot.data.base import FewShotDataset


@dataclass
class Episode:
    """classes[i] is the name of episode-local class i; support[i]/query[i] hold its item ids."""

    classes: list[str]
    support: list[list[str]]
    query: list[list[str]] = field(default_factory=list)
    seed: int | None = None

    @property
    def ways(self) -> int:
        return len(self.classes)

    @property
    def shots(self) -> int:
        return min(len(s) for s in self.support)

    def support_indices(self, ds: FewShotDataset) -> tuple[np.ndarray, np.ndarray]:
        """(dataset indices, episode-local labels) of the support set, class by class."""
        return _flatten(ds, self.support)

    def query_indices(self, ds: FewShotDataset) -> tuple[np.ndarray, np.ndarray]:
        return _flatten(ds, self.query)

    def to_dict(self) -> dict:
        d = {"classes": self.classes, "support": self.support, "query": self.query}
        if self.seed is not None:
            d["seed"] = self.seed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Episode:
        return cls(
            classes=list(d["classes"]),
            support=[list(s) for s in d["support"]],
            query=[list(q) for q in d.get("query", [])],
            seed=d.get("seed"),
        )


def _flatten(ds: FewShotDataset, groups: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    idx = [ds.index_of(i) for g in groups for i in g]
    lab = [c for c, g in enumerate(groups) for _ in g]
    return np.asarray(idx, dtype=np.int64), np.asarray(lab, dtype=np.int64)
