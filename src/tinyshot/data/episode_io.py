"""Episode files: versioned JSON that pins the classes, supports and queries of every episode,
so that every method is scored on exactly the same episodes.

    {"format": "tinyshot.episodes", "version": 1,
     "dataset": {"name": "cub", "split": "test", "query_split": null, "root": "...", "options": {}},
     "ways": 5, "shots": 5, "queries": 15 | "all", "seed": 0,
     "episodes": [{"classes": [...], "support": [[ids]...], "query": [[ids]...], "seed": ...}]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyshot.data.base import FewShotDataset
from tinyshot.data.episodes import Episode
from tinyshot.errors import DataError
from tinyshot.utils.io import _default as _json_default
from tinyshot.utils.io import atomic_write, read_json

FORMAT = "tinyshot.episodes"
VERSION = 1
_META_KEYS = ("dataset", "ways", "shots", "queries", "seed")


def write_episodes(path: str | Path, episodes: Sequence[Episode], meta: dict[str, Any]) -> Path:
    """meta: dataset (dict), ways, shots, queries (int, None or "all"), seed; extra keys kept.

    One episode per line: files with every remaining query stay small and diffable."""
    if not episodes:
        raise DataError(f"{path}: refusing to write an episode file with no episodes")
    meta = dict(meta)
    if meta.get("queries") is None:
        meta["queries"] = "all"
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    for k in _META_KEYS:
        doc[k] = meta.pop(k, None)
    doc.update(meta)
    head = json.dumps(doc, indent=2, default=_json_default)[:-2]  # drop the closing "\n}"
    lines = ",\n".join(
        "    " + json.dumps(e.to_dict(), separators=(",", ":"), default=_json_default)
        for e in episodes
    )
    text = f'{head},\n  "episodes": [\n{lines}\n  ]\n}}\n'

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    return atomic_write(path, write)


def read_episodes(path: str | Path) -> tuple[list[Episode], dict[str, Any]]:
    """(episodes, meta); meta has everything but "episodes", with queries None for "all"."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f'{path}: not a tinyshot episode file (no "format": "{FORMAT}")')
    version = doc.get("version")
    if version != VERSION:
        raise DataError(
            f"{path}: episode file version {version!r} is not supported "
            f"(this tinyshot reads version {VERSION}); regenerate it with `tinyshot episodes`"
        )
    raw = doc.get("episodes")
    if not isinstance(raw, list) or not raw:
        raise DataError(f'{path}: "episodes" must be a non-empty list')
    episodes = []
    for i, d in enumerate(raw):
        episodes.append(_parse_episode(d, f"{path}: episode {i}"))
    meta = {k: v for k, v in doc.items() if k != "episodes"}
    if meta.get("queries") == "all":
        meta["queries"] = None
    return episodes, meta


def _parse_episode(d: Any, where: str) -> Episode:
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected an object")
    classes, support, query = d.get("classes"), d.get("support"), d.get("query", [])

    def ok_groups(g: Any) -> bool:
        return isinstance(g, list) and all(
            isinstance(x, list) and all(isinstance(i, str) for i in x) for x in g
        )

    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(f'{where}: "classes" must be a non-empty list of class names')
    if len(set(classes)) != len(classes):
        raise DataError(f"{where}: a class is listed twice in {classes}")
    if not ok_groups(support) or len(support) != len(classes) or not all(support):
        raise DataError(f'{where}: "support" must hold one non-empty list of item ids per class')
    if not ok_groups(query) or (query and len(query) != len(classes)):
        raise DataError(f'{where}: "query" must hold one list of item ids per class')
    seed = d.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise DataError(f'{where}: "seed" must be an integer')
    return Episode.from_dict(d)


def check_episodes(
    episodes: Sequence[Episode],
    support_ds: FewShotDataset,
    query_ds: FewShotDataset | None = None,
) -> None:
    """Every class and item of the episodes exists in the datasets, with the right label."""
    query_ds = query_ds or support_ds
    for e_no, ep in enumerate(episodes):
        for groups, ds, role in (
            (ep.support, support_ds, "support"),
            (ep.query, query_ds, "query"),
        ):
            for cname, ids in zip(ep.classes, groups):
                cid = ds.class_id(cname)
                for item in ids:
                    if ds.labels[ds.index_of(item)] != cid:
                        raise DataError(
                            f"episode {e_no}: {role} item {item!r} is not of class {cname!r} "
                            f"in {ds.name}/{ds.split}"
                        )


def episode_datasets(
    meta: dict[str, Any], root: str | Path | None = None
) -> tuple[FewShotDataset, FewShotDataset]:
    """(support dataset, query dataset) named in an episode file's meta; root overrides."""
    from tinyshot.data.registry import load_dataset

    d = meta.get("dataset") or {}
    if not isinstance(d, dict) or "name" not in d or "split" not in d:
        raise DataError('episode file: "dataset" must name the dataset and split')
    root = root if root is not None else d.get("root")
    options = d.get("options") or {}
    support = load_dataset(d["name"], d["split"], root, **options)
    qs = d.get("query_split")
    query = load_dataset(d["name"], qs, root, **options) if qs and qs != d["split"] else support
    return support, query
