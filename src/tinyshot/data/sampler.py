"""Seeded N-way K-shot episode sampling.

Episode i of a run uses `derive_seed(seed, i)`, so asking for more episodes never changes
the earlier ones. Supports and queries may come from different datasets (e.g. supports
from Fashion-MNIST novel-train, queries from novel-test); classes are matched by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinyshot.data.base import FewShotDataset
from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError
from tinyshot.utils.seed import derive_seed


def class_indices(ds: FewShotDataset) -> list[np.ndarray]:
    """Item indices of every class, computed once per dataset (episodic training samples
    tens of thousands of episodes from one dataset)."""
    cache = getattr(ds, "_class_indices_cache", None)
    if cache is None or cache[0] is not ds.labels or cache[1] != len(ds.labels):
        order = np.argsort(ds.labels, kind="stable")
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        cache = (ds.labels, len(ds.labels), np.split(order, np.cumsum(counts)[:-1]))
        ds._class_indices_cache = cache  # type: ignore[attr-defined]
    return cache[2]


class _Pool:
    """Per-class item indices of the support (and query) dataset, checked once."""

    def __init__(
        self,
        ds: FewShotDataset,
        ways: int,
        shots: int,
        queries: int | None,
        classes: Sequence[str | int] | None,
        query_ds: FewShotDataset | None,
    ) -> None:
        where = f"{ds.name}/{ds.split}"
        if ways < 1:
            raise ConfigError(f"--ways must be >= 1, got {ways}")
        if shots < 1:
            raise ConfigError(f"--shots must be >= 1, got {shots}")
        if queries is not None and queries < 1:
            raise ConfigError(f"--queries must be >= 1 or 'all', got {queries}")
        if classes is None:
            names = list(ds.class_names)
            if query_ds is not None:
                qnames = set(query_ds.class_names)
                names = [n for n in names if n in qnames]
        else:
            names = []
            for c in classes:
                n = ds.class_names[c] if isinstance(c, int | np.integer) else str(c)
                ds.class_id(n)  # clear error for an unknown class
                if n in names:
                    raise ConfigError(f"--classes: class {n!r} given twice")
                names.append(n)
        if ways > len(names):
            src = where if query_ds is None else f"{where} and {query_ds.name}/{query_ds.split}"
            raise ConfigError(
                f"--ways {ways}: {src} has only {len(names)} "
                f"{'shared ' if query_ds is not None else ''}class(es) to draw from"
            )
        self.names = names
        per_class = class_indices(ds)
        self.support = {n: per_class[ds.class_id(n)] for n in names}
        if query_ds is None:
            need = shots + (queries if queries is not None else 1)
            what = f"{shots} shots + {f'{queries} queries' if queries is not None else 'at least 1 query'}"
            small = [(n, len(v)) for n, v in self.support.items() if len(v) < need]
            self._raise_small(small, need, what, where, shots, queries)
            self.query = None
        else:
            qwhere = f"{query_ds.name}/{query_ds.split}"
            small = [(n, len(v)) for n, v in self.support.items() if len(v) < shots]
            self._raise_small(small, shots, f"{shots} shots", where, shots, queries)
            q_per_class = class_indices(query_ds)
            self.query = {n: q_per_class[query_ds.class_id(n)] for n in names}
            qneed = queries if queries is not None else 1
            small = [(n, len(v)) for n, v in self.query.items() if len(v) < qneed]
            self._raise_small(small, qneed, f"{qneed} queries", qwhere, shots, queries)

    @staticmethod
    def _raise_small(
        small: list[tuple[str, int]],
        need: int,
        what: str,
        where: str,
        shots: int,
        queries: int | None,
    ) -> None:
        if not small:
            return
        listed = ", ".join(f"{n!r} ({k})" for n, k in small[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        raise ConfigError(
            f"{where}: class(es) with fewer than {need} images ({what}): {listed}{more}; "
            "lower --shots/--queries or add images"
        )


def _draw(
    pool: _Pool,
    ds: FewShotDataset,
    ways: int,
    shots: int,
    queries: int | None,
    seed: int,
    query_ds: FewShotDataset | None,
) -> Episode:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool.names), size=ways, replace=False)
    classes = [pool.names[i] for i in pick]
    support: list[list[str]] = []
    query: list[list[str]] = []
    for n in classes:
        perm = rng.permutation(pool.support[n])
        support.append([ds.item_id(int(i)) for i in perm[:shots]])
        if query_ds is None:
            rest = perm[shots:] if queries is None else perm[shots : shots + queries]
            query.append([ds.item_id(int(i)) for i in rest])
        else:
            assert pool.query is not None
            qperm = rng.permutation(pool.query[n])
            qsel = qperm if queries is None else qperm[:queries]
            query.append([query_ds.item_id(int(i)) for i in qsel])
    return Episode(classes=classes, support=support, query=query, seed=seed)


def sample_episode(
    ds: FewShotDataset,
    ways: int,
    shots: int,
    queries: int | None,
    seed: int,
    classes: Sequence[str | int] | None = None,
    query_ds: FewShotDataset | None = None,
) -> Episode:
    """One episode: `ways` classes (from `classes` when given), `shots` supports and
    `queries` queries per class (None: every remaining image; with `query_ds`, every image
    of the class there)."""
    pool = _Pool(ds, ways, shots, queries, classes, query_ds)
    return _draw(pool, ds, ways, shots, queries, seed, query_ds)


def sample_episodes(
    ds: FewShotDataset,
    n: int,
    ways: int,
    shots: int,
    queries: int | None,
    seed: int,
    classes: Sequence[str | int] | None = None,
    query_ds: FewShotDataset | None = None,
) -> list[Episode]:
    """n episodes; episode i is `sample_episode(..., seed=derive_seed(seed, i))`."""
    if n < 1:
        raise ConfigError(f"--episodes must be >= 1, got {n}")
    pool = _Pool(ds, ways, shots, queries, classes, query_ds)
    return [_draw(pool, ds, ways, shots, queries, derive_seed(seed, i), query_ds) for i in range(n)]
