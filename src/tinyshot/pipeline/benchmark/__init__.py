"""Benchmark runner: every episode of an episode file is one independent task.

An evaluation in the paper's protocol is 120 episodes of a full specialise -> generate ->
pseudo-label -> distill -> evaluate run (hours each), so the runner

* schedules episodes as Ray tasks (each declaring its CPUs/GPUs) on this machine or on a
  cluster started with `ray start`, or runs them one after another without Ray;
* stores each finished episode at once (`out_dir/episodes/<index>.json`, atomic), so a
  killed run loses at most the episodes in flight, and a rerun submits only the missing ones;
* lets Ray retry a task whose worker process died (`max_retries`), while a Python exception
  is a reported failure (`out_dir/failures/<index>.json`) that does not sink the others;
* gives every episode only its own seed, so results do not depend on scheduling order, the
  number of workers or on Ray itself;
* aggregates per method: mean accuracy with a Student-t CI and the Theorem-1 figures
  (estimated sigma_a, achieved variance, episodes needed for a target half-width), plus
  paired differences between methods on the same episodes.

The per-episode work is a plain function referenced by a string ("package.module:function"
or "path/to/file.py:function") resolved inside the worker, so workers only need tinyshot
installed (and the file on a shared path). Contract: `fn(task: EpisodeTask)` returns, per
method name of `task.methods`, a dict with at least "accuracy" (fraction in [0, 1]) and
"queries" (int), plus optional JSON-serialisable extras. The function's module may also
define DEFAULT_METHODS (used when no method is given) and check_methods(methods) (called once
by the driver, so a bad config fails before any episode is scheduled).

Modules, lowest first: `tasks` (EpisodeTask, the episode function, running one task),
`store` (run.json, episodes/, failures/, resume), `statistics` (CI, Theorem-1, paired
differences), `results` (BenchmarkResult, aggregate), `ray_runner` (Ray), `runners`
(run_benchmark and the sequential runner), `prepare` (sampled episode files).
"""

from tinyshot.pipeline.benchmark.prepare import prepare_episodes
from tinyshot.pipeline.benchmark.ray_runner import default_workers, init_ray, ray_available
from tinyshot.pipeline.benchmark.results import BenchmarkResult, aggregate
from tinyshot.pipeline.benchmark.runners import run_benchmark
from tinyshot.pipeline.benchmark.statistics import method_statistics, paired_differences
from tinyshot.pipeline.benchmark.store import (
    EPISODE_FORMAT,
    FAILURE_FORMAT,
    RESULTS_FORMAT,
    RUN_FORMAT,
    VERSION,
    episode_digest,
)
from tinyshot.pipeline.benchmark.tasks import (
    DEFAULT_EPISODE_FN,
    EpisodeFn,
    EpisodeTask,
    check_episode_output,
    default_methods,
    execute_task,
    load_task_datasets,
    resolve_episode_fn,
)

__all__ = [
    "DEFAULT_EPISODE_FN",
    "EPISODE_FORMAT",
    "FAILURE_FORMAT",
    "RESULTS_FORMAT",
    "RUN_FORMAT",
    "VERSION",
    "BenchmarkResult",
    "EpisodeFn",
    "EpisodeTask",
    "aggregate",
    "check_episode_output",
    "default_methods",
    "default_workers",
    "episode_digest",
    "execute_task",
    "init_ray",
    "load_task_datasets",
    "method_statistics",
    "paired_differences",
    "prepare_episodes",
    "ray_available",
    "resolve_episode_fn",
    "run_benchmark",
]
