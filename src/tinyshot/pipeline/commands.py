"""CLI sub-commands of the pipeline stage: `benchmark` (more are added by `register`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tinyshot.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the `tinyshot` parser."""
    _register_benchmark(sub)


# ------------------------------------------------------------------ benchmark


def _register_benchmark(sub: argparse._SubParsersAction) -> None:
    from tinyshot.data.commands import _queries
    from tinyshot.pipeline.benchmark import DEFAULT_EPISODE_FN

    p = sub.add_parser(
        "benchmark",
        help="run methods on many episodes (Ray tasks, resumable) and report accuracy ± CI",
        description="Run every method on every episode of an episode file (or of P episodes "
        "sampled here), one Ray task per episode, locally or on a cluster (--address). "
        "Finished episodes are kept: rerun the same command to resume. Results: "
        "OUT/results.json, OUT/summary.txt, OUT/episodes/<i>.json, OUT/failures/<i>.json. "
        "See docs/benchmark.md.",
    )
    p.add_argument(
        "--episodes",
        required=True,
        help="an episode file (from `tinyshot episodes`), or a number P of episodes to sample "
        "into OUT/episodes.json",
    )
    p.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME[=CONFIG]",
        help="a method; CONFIG is a JSON/TOML file or an inline JSON object (repeatable). "
        "A JSON/TOML file alone lists several methods. Default: the episode function's "
        "DEFAULT_METHODS",
    )
    p.add_argument("--out", required=True, help="run folder (rerun with it to resume)")
    g = p.add_argument_group("sampling (with --episodes P)")
    g.add_argument("--dataset", default=None, help="registry name (see `tinyshot datasets`)")
    g.add_argument("--root", default=None, help="dataset folder; also overrides an episode file's")
    g.add_argument("--split", default=None, help="split for supports (default: the novel split)")
    g.add_argument("--query-split", default=None, help="draw queries from this split")
    g.add_argument("--ways", type=int, default=5)
    g.add_argument("--shots", type=int, default=5)
    g.add_argument("--queries", type=_queries, default=None, help="per class, or 'all' (default)")
    g.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="loader option"
    )
    r = p.add_argument_group("execution")
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        help="episodes at a time (default: what fits here: GPUs / --gpus-per-task, else "
        "CPUs / --cpus-per-task; no cap on a cluster)",
    )
    r.add_argument("--cpus-per-task", type=float, default=1.0, help="also the torch threads")
    r.add_argument("--gpus-per-task", type=float, default=0.0)
    r.add_argument(
        "--address", default=None, help="join a Ray cluster (`ray start`), e.g. auto or HOST:6379"
    )
    r.add_argument("--no-ray", action="store_true", help="run episodes one after another here")
    r.add_argument("--max-retries", type=int, default=2, help="retries of a killed worker")
    r.add_argument("--episode-fn", default=DEFAULT_EPISODE_FN, help="package.module:function")
    r.add_argument("--device", default="auto", help="device inside each episode (auto, cpu, cuda)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed and per-episode seeds")
    r.add_argument("--no-check", action="store_true", help="skip checking item ids up front")
    s = p.add_argument_group("statistics")
    s.add_argument(
        "--target-halfwidth",
        type=float,
        default=None,
        help="report the episodes a 95%% CI of ± this (accuracy units, e.g. 0.005) needs",
    )
    s.add_argument("--confidence", type=float, default=0.95)
    p.set_defaults(func=cmd_benchmark)


def load_methods_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """{"methods": {name: config}} or {name: config}, from JSON or TOML."""
    data = _read_config(Path(path))
    methods = data.get("methods", data) if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"{path}: expected a table of methods, name -> config")
    for name, cfg in methods.items():
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: method {name!r}: config must be a table/object")
    return {str(k): dict(v) for k, v in methods.items()}


def _read_config(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"--method: config file {path} not found")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from e


def parse_methods(items: list[str]) -> dict[str, dict[str, Any]] | None:
    """`--method` values: NAME, NAME=FILE, NAME={json}, or a methods file; None when empty."""
    methods: dict[str, dict[str, Any]] = {}

    def add(name: str, cfg: Any, where: str) -> None:
        if not name:
            raise ConfigError(f"--method {where!r}: empty method name")
        if not isinstance(cfg, dict):
            raise ConfigError(f"--method {where!r}: the config must be a JSON/TOML object")
        if name in methods:
            raise ConfigError(f"--method: method {name!r} given twice")
        methods[name] = dict(cfg)

    for item in items:
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq:
            if Path(name).suffix.lower() in (".json", ".toml") and Path(name).is_file():
                for k, v in load_methods_file(name).items():
                    add(k, v, item)
            else:
                add(name, {}, item)
        elif value.startswith("{"):
            try:
                add(name, json.loads(value), item)
            except json.JSONDecodeError as e:
                raise ConfigError(f"--method {item!r}: invalid inline JSON ({e})") from e
        else:
            add(name, _read_config(Path(value)), item)
    return methods or None


def cmd_benchmark(args: argparse.Namespace) -> int:
    from tinyshot.data.commands import parse_options
    from tinyshot.pipeline.benchmark import prepare_episodes, run_benchmark

    methods = parse_methods(args.method)
    out = Path(args.out)
    limit = None
    if args.episodes.strip().isdigit():
        if not args.dataset:
            raise ConfigError("--episodes P samples episodes: give --dataset (or an episode file)")
        limit = int(args.episodes)
        episodes = prepare_episodes(
            out / "episodes.json",
            args.dataset,
            limit,
            split=args.split,
            query_split=args.query_split,
            root=args.root,
            options=parse_options(args.option),
            ways=args.ways,
            shots=args.shots,
            queries=args.queries,
            seed=args.seed,
        )
    else:
        episodes = Path(args.episodes)
        if not episodes.is_file():
            raise ConfigError(f"--episodes {episodes}: no such episode file (or give a number)")
        if args.dataset:
            from tinyshot.data.episode_io import read_episodes
            from tinyshot.data.registry import dataset_info

            name = (read_episodes(episodes)[1].get("dataset") or {}).get("name")
            if name != dataset_info(args.dataset).name:
                raise ConfigError(
                    f"--dataset {args.dataset}: the episode file {episodes} is for {name!r}"
                )
    result = run_benchmark(
        episodes,
        methods,
        out,
        episode_fn=args.episode_fn,
        use_ray=False if args.no_ray else None,
        address=args.address,
        num_workers=args.workers,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        max_retries=args.max_retries,
        seed=args.seed,
        target_halfwidth=args.target_halfwidth,
        confidence=args.confidence,
        root=args.root,
        device=args.device,
        limit=limit,
        check=not args.no_check,
        log_to_driver=bool(getattr(args, "verbose", False)),
    )
    print(result.render(), end="")
    print(f"results: {result.results_path}")
    if result.failures:
        print(
            f"{len(result.failures)} episode(s) failed (details in {out / 'failures'}); "
            "rerun the same command to retry them"
        )
        return 1
    return 0
