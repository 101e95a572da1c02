"""Running the episodes of a benchmark: one after another in this process, or as Ray tasks (each
declaring its CPUs/GPUs) on this machine or a cluster; `run_benchmark` is the entry point.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError
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


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def default_workers(cpus_per_task: float = 1.0, gpus_per_task: float = 0.0) -> int:
    """Workers that fit on this machine: one per GPU share, else one per CPU share."""
    if gpus_per_task > 0:
        import torch

        return max(1, int(torch.cuda.device_count() // gpus_per_task))
    from tinyshot.utils.threads import available_cpus

    # The cores this process may use (affinity, cgroup quota), not every core of the host.
    return max(1, int(available_cpus() // max(cpus_per_task, 1e-9)))


def _sequential(
    tasks: Sequence[EpisodeTask], episode_fn: str
) -> Iterator[tuple[EpisodeTask, dict[str, Any]]]:
    for t in tasks:
        yield t, execute_task(t, episode_fn)


def init_ray(
    address: str | None = None,
    num_workers: int | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    log_to_driver: bool = False,
) -> bool:
    """Connect to `address` (or $RAY_ADDRESS), or start a local Ray sized for num_workers
    tasks; reuse a session that is already up. True when this call started one."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"log_to_driver": log_to_driver, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **common)
    else:
        n = num_workers or default_workers(cpus_per_task, gpus_per_task)
        kw: dict[str, Any] = {"num_cpus": max(1, math.ceil(n * cpus_per_task))}
        if gpus_per_task <= 0:
            kw["num_gpus"] = 0  # CPU episodes must not grab a GPU
        ray.init(include_dashboard=False, **kw, **common)
    return True


def _ray_outcomes(
    tasks: Sequence[EpisodeTask],
    episode_fn: str,
    *,
    address: str | None,
    num_workers: int | None,
    cpus_per_task: float,
    gpus_per_task: float,
    max_retries: int,
    log_to_driver: bool,
) -> Iterator[tuple[EpisodeTask, dict[str, Any]]]:
    """Outcomes as tasks finish; at most num_workers in flight (None: all, on a cluster)."""
    import ray

    started = init_ray(address, num_workers, cpus_per_task, gpus_per_task, log_to_driver)
    if started and not (address or os.environ.get("RAY_ADDRESS")):
        num_workers = num_workers or default_workers(cpus_per_task, gpus_per_task)
    pending: dict[Any, EpisodeTask] = {}
    try:
        have = ray.cluster_resources()
        for res, need in (("CPU", cpus_per_task), ("GPU", gpus_per_task)):
            if need > have.get(res, 0.0):
                raise ConfigError(
                    f"--{res.lower()}s-per-task {need:g}: the Ray cluster has only "
                    f"{have.get(res, 0.0):g} {res}(s); no episode could ever be scheduled"
                )
        remote = ray.remote(
            num_cpus=cpus_per_task,
            num_gpus=gpus_per_task,
            max_retries=max_retries,
            retry_exceptions=False,
        )(execute_task)
        cap = num_workers or len(tasks)
        log.info(
            "Ray: %d episode(s), %g CPU / %g GPU each, up to %d at a time, cluster %s",
            len(tasks),
            cpus_per_task,
            gpus_per_task,
            cap,
            {k: v for k, v in have.items() if k in ("CPU", "GPU")},
        )
        todo = deque(tasks)
        while todo or pending:
            while todo and len(pending) < cap:
                t = todo.popleft()
                ref = remote.options(name=f"tinyshot-episode-{t.index}").remote(t, episode_fn)
                pending[ref] = t
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                t = pending.pop(ref)
                attempt = None
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # the worker died more often than max_retries allows
                    attempts = Path(t.work_dir) / "attempts.txt"  # readable on shared storage
                    with contextlib.suppress(OSError, ValueError):
                        attempt = int(attempts.read_text().strip())
                    outcome = {
                        "ok": False,
                        "index": t.index,
                        "error_type": type(e).__name__,
                        "message": str(e).strip().splitlines()[0] if str(e).strip() else "",
                        "traceback": str(e),
                        "seconds": None,
                        "host": None,
                        "pid": None,
                        "attempt": attempt,
                    }
                yield t, outcome
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


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
    check: bool = True,
    log_to_driver: bool = False,
) -> BenchmarkResult:
    """Run (or resume) every episode of `episodes` for every method; see the module doc.

    episodes: an episode file or (episodes, meta) as `read_episodes` returns them.
    methods: name -> config dict handed to the episode function (None: the function's
    module DEFAULT_METHODS). use_ray None: Ray when importable and more than one worker (or
    an address) is asked for. num_workers None: what fits on this machine locally, and no
    cap on a cluster. root overrides the dataset root stored in the episode file; limit runs
    the first episodes only; check verifies every item id against the datasets first.
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
    todo = [t for t in tasks if t.index not in done]
    log.info(
        "%s: %d episode(s), %d already finished, %d to run (%s, episode function %s)",
        out_dir,
        len(tasks),
        len(done),
        len(todo),
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
