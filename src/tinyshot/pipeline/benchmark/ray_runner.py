"""The Ray runner: each episode a Ray task declaring its CPUs/GPUs, on this machine or on a
cluster started with `ray start`; a task whose worker died is retried (`max_retries`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tinyshot.errors import ConfigError
from tinyshot.pipeline.benchmark.tasks import (
    EpisodeTask,
    execute_task,
)
from tinyshot.utils.logging import get_logger

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
