"""Running the episodes of a benchmark: `run_benchmark` checks the settings, skips finished
episodes and stores each outcome; the outcomes come from a runner, the sequential one below
(one after another in this process) or the Ray one (ray_runner.py). A runner is a generator
of (task, outcome) pairs; another one is another file and one branch in `_run`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError
from tinyshot.pipeline.benchmark.ray_runner import _ray_outcomes, default_workers, ray_available
from tinyshot.pipeline.benchmark.results import BenchmarkResult, aggregate
from tinyshot.pipeline.benchmark.store import _check_manifest, _load_finished, _run_manifest, _store
from tinyshot.pipeline.benchmark.tasks import (
    DEFAULT_EPISODE_FN,
    EpisodeTask,
    _jsonable,
    default_methods,
    execute_task,
    load_task_datasets,
    resolve_episode_fn,
)
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger, log_to, progress
from tinyshot.utils.seed import derive_seed

log = get_logger("pipeline.benchmark")


def parse_indices(spec: str) -> list[int]:
    """`--only` values: "6-9", "0,3,5-7" -> sorted distinct indices."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise ConfigError(
                f"--only {spec!r}: expected episode indices like 6-9 or 0,3,5-7"
            ) from None
        if a < 0 or b < a:
            raise ConfigError(f"--only {spec!r}: {part.strip()!r} is not an index range")
        out.update(range(a, b + 1))
    return sorted(out)


def format_indices(indices: Sequence[int]) -> str:
    """The inverse of `parse_indices`: [0, 3, 5, 6, 7] -> "0,3,5-7"."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _sequential(
    tasks: Sequence[EpisodeTask], episode_fn: str
) -> Iterator[tuple[EpisodeTask, dict[str, Any]]]:
    for t in tasks:
        yield t, execute_task(t, episode_fn)


def run_benchmark(
    episodes: str | Path | tuple[Sequence[Episode], dict[str, Any]],
    methods: dict[str, dict[str, Any]] | None,
    out_dir: str | Path,
    *,
    episode_fn: str = DEFAULT_EPISODE_FN,
    use_ray: bool | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    max_retries: int = 2,
    seed: int = 0,
    target_halfwidth: float | None = None,
    confidence: float = 0.95,
    root: str | Path | None = None,
    device: str = "auto",
    limit: int | None = None,
    only: Sequence[int] | None = None,
    check: bool = True,
    log_to_driver: bool = False,
) -> BenchmarkResult:
    """Run (or resume) every episode of `episodes` for every method; see the module doc.

    episodes: an episode file or (episodes, meta) as `read_episodes` returns them.
    methods: name -> config dict handed to the episode function (None: the function's
    module DEFAULT_METHODS). use_ray None: Ray when importable and more than one worker (or
    an address) is asked for. num_workers None: what fits on this machine locally, and no
    cap on a cluster. root overrides the dataset root stored in the episode file; limit runs
    the first episodes only; only runs just these episode indices (a shard: each episode keeps
    its index and seed, so shards' episodes/<i>.json copied into one folder make one run);
    check verifies every item id against the datasets first.
    """
    from tinyshot.data.episode_io import read_episodes

    out_dir = Path(out_dir)
    episodes_file = None
    if isinstance(episodes, str | Path):
        episodes_file = str(Path(episodes).resolve())
        eps, meta = read_episodes(episodes)
    else:
        eps, meta = list(episodes[0]), dict(episodes[1])
        if not eps:
            raise ConfigError("no episodes to run")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--episodes must be >= 1, got {limit}")
        eps = eps[:limit]
    if only is not None:
        only = sorted(set(only))
        outside = [i for i in only if not 0 <= i < len(eps)]
        if not only or outside:
            raise ConfigError(
                f"--only: episode indices {outside or 'none'} are not in 0-{len(eps) - 1} "
                f"(the run has {len(eps)} episode(s))"
            )
    meta = _jsonable(meta)
    if root is not None:
        meta["dataset"] = {**(meta.get("dataset") or {}), "root": str(root)}
    if cpus_per_task <= 0 or gpus_per_task < 0:
        raise ConfigError("--cpus-per-task must be > 0 and --gpus-per-task >= 0")
    if num_workers is not None and num_workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {num_workers}")
    if max_retries < 0:
        raise ConfigError(f"--max-retries must be >= 0, got {max_retries}")
    fn = resolve_episode_fn(episode_fn)  # fail here, not in every worker
    if methods is None:
        methods = default_methods(episode_fn)
        if not methods:
            raise ConfigError(
                f"--method: give at least one method ({episode_fn} declares no DEFAULT_METHODS)"
            )
    if not methods:
        raise ConfigError("--method: give at least one method")
    methods = {str(k): dict(v) for k, v in methods.items()}
    check_methods = getattr(sys.modules.get(fn.__module__), "check_methods", None)
    if callable(check_methods):
        check_methods(methods)  # a typo fails here once, not in every episode
    if use_ray is None:
        use_ray = ray_available() and (
            address is not None
            or (num_workers or default_workers(cpus_per_task, gpus_per_task)) > 1
        )
    if address is not None and use_ray is False:
        raise ConfigError("--address joins a Ray cluster; it cannot be combined with --no-ray")
    if use_ray and not ray_available():
        raise ConfigError(
            "Ray is not installed: pip install 'tinyshot[distributed]', or run with --no-ray"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    with log_to(out_dir):
        return _run(
            eps,
            meta,
            methods,
            out_dir,
            episode_fn=episode_fn,
            episodes_file=episodes_file,
            use_ray=bool(use_ray),
            address=address,
            num_workers=num_workers,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            max_retries=max_retries,
            seed=seed,
            target_halfwidth=target_halfwidth,
            confidence=confidence,
            device=device,
            only=only,
            check=check,
            log_to_driver=log_to_driver,
        )


def _run(
    eps: Sequence[Episode],
    meta: dict[str, Any],
    methods: dict[str, dict[str, Any]],
    out_dir: Path,
    *,
    episode_fn: str,
    episodes_file: str | None,
    use_ray: bool,
    address: str | None,
    num_workers: int | None,
    cpus_per_task: float,
    gpus_per_task: float,
    max_retries: int,
    seed: int,
    target_halfwidth: float | None,
    confidence: float,
    device: str,
    only: Sequence[int] | None,
    check: bool,
    log_to_driver: bool,
) -> BenchmarkResult:
    from tinyshot.data.episode_io import check_episodes

    _check_manifest(
        out_dir / "run.json", _run_manifest(meta, methods, episode_fn, seed, episodes_file)
    )
    if check:
        support_ds, query_ds = load_task_datasets(meta)
        check_episodes(eps, support_ds, query_ds)
    threads = max(1, int(cpus_per_task))
    tasks = [
        EpisodeTask(
            index=i,
            episode=ep,
            meta=meta,
            methods=methods,
            seed=derive_seed(seed, "benchmark", i),
            work_dir=str((out_dir / "work" / str(i)).resolve()),
            threads=threads,
            device=device,
        )
        for i, ep in enumerate(eps)
    ]
    done = _load_finished(out_dir, tasks)
    todo = [t for t in tasks if t.index not in done and (only is None or t.index in only)]
    log.info(
        "%s: %d episode(s), %d already finished, %d to run%s (%s, episode function %s)",
        out_dir,
        len(tasks),
        len(done),
        len(todo),
        "" if only is None else f" (--only {format_indices(only)})",
        "Ray" if use_ray and todo else "sequential",
        episode_fn,
    )
    for t in todo:
        write_json(Path(t.work_dir) / "task.json", t.to_dict())
    if todo:
        if use_ray:
            outcomes = _ray_outcomes(
                todo,
                episode_fn,
                address=address,
                num_workers=num_workers,
                cpus_per_task=cpus_per_task,
                gpus_per_task=gpus_per_task,
                max_retries=max_retries,
                log_to_driver=log_to_driver,
            )
        else:
            outcomes = _sequential(todo, episode_fn)
        with contextlib.closing(outcomes):  # shuts Ray down / cancels tasks on Ctrl-C too
            for t, outcome in progress(outcomes, desc="episodes", total=len(todo), unit="episode"):
                _store(out_dir, t, outcome)
    run = read_json(out_dir / "run.json")
    result = aggregate(
        out_dir,
        [t.index for t in tasks],
        list(methods),
        target_halfwidth=target_halfwidth,
        confidence=confidence,
        run=run,
    )
    log.info("results: %s", out_dir / "results.json")
    return result
