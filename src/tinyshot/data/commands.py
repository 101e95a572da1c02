"""CLI: `tinyshot episodes` writes an episode file; `tinyshot datasets` lists the loaders."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tinyshot.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "episodes",
        help="sample N-way K-shot episodes into a JSON episode file",
        description="Sample seeded N-way K-shot episodes from a dataset split and write them "
        "to an episode file, so every method is scored on the same episodes.",
    )
    p.add_argument("--dataset", required=True, help="registry name (see `tinyshot datasets`)")
    p.add_argument("--root", default=None, help="dataset folder (required for most datasets)")
    p.add_argument("--split", default=None, help="split for supports (default: the novel split)")
    p.add_argument(
        "--query-split", default=None, help="draw queries from this split (classes matched by name)"
    )
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=_queries, default=15, help="per class, or 'all'")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option, e.g. split_file=cub_split.json or samples_per_class=20 (repeatable)",
    )
    p.add_argument("--out", required=True, help="episode file to write (.json)")
    p.set_defaults(func=cmd_episodes)

    d = sub.add_parser("datasets", help="list the dataset loaders, their splits and options")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_datasets)


def _queries(s: str) -> int | None:
    if s.strip().lower() == "all":
        return None
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {s!r}") from None


def parse_options(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is read as JSON when it parses (numbers, lists, true), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--option: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def cmd_episodes(args: argparse.Namespace) -> int:
    from tinyshot.data.episode_io import write_episodes
    from tinyshot.data.registry import dataset_info, load_dataset
    from tinyshot.data.sampler import sample_episodes

    info = dataset_info(args.dataset)
    split = args.split or info.eval_split
    options = parse_options(args.option)
    ds = load_dataset(info.name, split, args.root, **options)
    qds = None
    if args.query_split and args.query_split != split:
        qds = load_dataset(info.name, args.query_split, args.root, **options)
    episodes = sample_episodes(
        ds, args.episodes, args.ways, args.shots, args.queries, args.seed, query_ds=qds
    )
    meta = {
        "dataset": {
            "name": info.name,
            "split": split,
            "query_split": args.query_split if qds is not None else None,
            "root": str(args.root) if args.root is not None else None,
            "options": options,
        },
        "ways": args.ways,
        "shots": args.shots,
        "queries": args.queries,
        "seed": args.seed,
    }
    path = write_episodes(args.out, episodes, meta)
    nq = sum(len(q) for e in episodes for q in e.query)
    print(
        f"wrote {len(episodes)} episodes ({args.ways}-way {args.shots}-shot, "
        f"{nq / len(episodes):.0f} queries per episode) from {info.name}/{split}"
        f"{'+' + args.query_split if qds is not None else ''} to {path}"
    )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from tinyshot.data.registry import dataset_info, list_datasets

    rows = []
    for name in list_datasets():
        info = dataset_info(name)
        rows.append(
            {
                "name": name,
                "splits": list(info.splits) if info.splits else None,
                "base_split": info.base_split,
                "eval_split": info.eval_split,
                "needs_root": info.needs_root,
                "options": info.options(),
                "description": info.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        splits = ", ".join(r["splits"]) if r["splits"] else "any sub-folder, or 'all'"
        print(f"{r['name']:<14} {r['description']}")
        print(f"{'':<14} splits: {splits}; base: {r['base_split']}; novel: {r['eval_split']}")
        if r["options"]:
            print(f"{'':<14} options: {', '.join(r['options'])}")
    return 0
