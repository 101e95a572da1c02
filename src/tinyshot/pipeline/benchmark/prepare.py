"""Episode files for a benchmark: sample n episodes, or reuse (and grow) the file a previous run
wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError


def prepare_episodes(
    path: str | Path,
    dataset: str,
    n: int,
    *,
    split: str | None = None,
    query_split: str | None = None,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    ways: int = 5,
    shots: int = 5,
    queries: int | None = None,
    seed: int = 0,
) -> Path:
    """Sample n episodes into `path`, or reuse the file a previous run wrote there.

    The file may grow (episode i never changes with n), but a file sampled with other
    settings is an error rather than silently mixing episodes.
    """
    from tinyshot.data.episode_io import read_episodes, write_episodes
    from tinyshot.data.registry import dataset_info, load_dataset
    from tinyshot.data.sampler import sample_episodes

    path = Path(path)
    info = dataset_info(dataset)
    split = split or info.eval_split
    options = dict(options or {})
    qsplit = query_split if query_split and query_split != split else None
    meta = {
        "dataset": {
            "name": info.name,
            "split": split,
            "query_split": qsplit,
            "root": str(root) if root is not None else None,
            "options": options,
        },
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "seed": seed,
    }
    old: list[Episode] = []
    if path.is_file():
        old, old_meta = read_episodes(path)
        od, nd = old_meta.get("dataset") or {}, meta["dataset"]
        pairs = [(k, old_meta.get(k), meta[k]) for k in ("ways", "shots", "queries", "seed")]
        pairs += [(f"dataset.{k}", od.get(k), nd[k]) for k in ("name", "split", "query_split")]
        pairs.append(("dataset.options", od.get("options") or {}, nd["options"]))
        differ = [f"{k}: {a!r} there, {b!r} now" for k, a, b in pairs if a != b]
        if differ:
            raise ConfigError(
                f"{path}: holds episodes sampled with other settings ({'; '.join(differ)}); "
                "use another --out, or pass that file as --episodes FILE"
            )
        if len(old) >= n:
            return path
    ds = load_dataset(info.name, split, root, **options)
    qds = load_dataset(info.name, qsplit, root, **options) if qsplit else None
    eps = sample_episodes(ds, n, ways, shots, queries, seed, query_ds=qds)
    if [e.to_dict() for e in eps[: len(old)]] != [e.to_dict() for e in old]:
        raise ConfigError(
            f"{path}: its episodes differ from the ones sampled now (has the dataset changed?); "
            "use another --out"
        )
    return write_episodes(path, eps, meta)
