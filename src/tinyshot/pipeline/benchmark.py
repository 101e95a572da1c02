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
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import math
import os
import random
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger, log_to, progress
from tinyshot.utils.seed import derive_seed

log = get_logger("pipeline.benchmark")

DEFAULT_EPISODE_FN = "tinyshot.pipeline.episode:run_episode"
RUN_FORMAT = "tinyshot.benchmark-run"
EPISODE_FORMAT = "tinyshot.benchmark-episode"
FAILURE_FORMAT = "tinyshot.benchmark-failure"
RESULTS_FORMAT = "tinyshot.benchmark-results"
VERSION = 1


@dataclass
class EpisodeTask:
    """Everything one episode needs; picklable and JSON-serialisable (`to_dict`).

    meta is the episode file's meta (dataset name, root, splits, ways, shots, queries), so
    `task.datasets()` reloads the datasets inside the worker. work_dir is this episode's own
    folder: a function may keep stage artifacts there, so a retried task resumes them.
    """

    index: int
    episode: Episode
    meta: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    seed: int
    work_dir: str
    threads: int = 1
    device: str = "auto"

    def datasets(self) -> tuple[Any, Any]:
        """(support dataset, query dataset), cached per process (workers run many episodes)."""
        return load_task_datasets(self.meta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "episode": self.episode.to_dict(),
            "meta": self.meta,
            "methods": self.methods,
            "seed": self.seed,
            "work_dir": self.work_dir,
            "threads": self.threads,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeTask:
        d = dict(d)
        d["episode"] = Episode.from_dict(d["episode"])
        return cls(**d)


EpisodeFn = Callable[[EpisodeTask], dict[str, dict[str, Any]]]

_DATASET_CACHE: dict[str, tuple[Any, Any]] = {}


def load_task_datasets(meta: dict[str, Any]) -> tuple[Any, Any]:
    from tinyshot.data.episode_io import episode_datasets

    key = json.dumps(meta.get("dataset"), sort_keys=True, default=str)
    if key not in _DATASET_CACHE:
        if len(_DATASET_CACHE) >= 2:
            _DATASET_CACHE.pop(next(iter(_DATASET_CACHE)))
        _DATASET_CACHE[key] = episode_datasets(meta)
    return _DATASET_CACHE[key]


# ------------------------------------------------------------------ episode functions


def resolve_episode_fn(spec: str) -> EpisodeFn:
    """The function named by "pkg.module:function", "pkg.module.function" or
    "path/to/file.py:function" (imported here, i.e. inside the worker)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--episode-fn: expected 'package.module:function'")
    spec = spec.strip()
    if ":" in spec and not spec.rsplit(":", 1)[0].endswith(".py") and spec.count(":") == 1:
        mod_name, attr = spec.split(":")
        module = _import_module(mod_name, spec)
    elif ".py:" in spec:
        file, attr = spec.rsplit(":", 1)
        module = _import_file(Path(file), spec)
    elif "." in spec:
        mod_name, attr = spec.rsplit(".", 1)
        module = _import_module(mod_name, spec)
    else:
        raise ConfigError(f"--episode-fn {spec!r}: expected 'package.module:function'")
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--episode-fn {spec!r}: {module.__name__} has no function {attr!r}")
    return fn


def _import_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(
            f"--episode-fn {spec!r}: cannot import {name} ({type(e).__name__}: {e})"
        ) from e


def _import_file(path: Path, spec: str) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"--episode-fn {spec!r}: file {path} not found")
    name = "tinyshot_episode_fn_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"--episode-fn {spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def default_methods(spec: str) -> dict[str, dict[str, Any]] | None:
    """The DEFAULT_METHODS an episode function's module declares, if any."""
    fn = resolve_episode_fn(spec)
    methods = getattr(sys.modules.get(fn.__module__), "DEFAULT_METHODS", None)
    return {k: dict(v) for k, v in methods.items()} if methods else None


# ------------------------------------------------------------------ running one task


def _jsonable(obj: Any) -> Any:
    from tinyshot.utils.io import _default

    return json.loads(json.dumps(obj, default=_default, allow_nan=True))


def check_episode_output(out: Any, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The episode function's return value, checked against the contract."""
    if not isinstance(out, dict):
        raise TypeError(f"episode function returned {type(out).__name__}, expected a dict")
    missing = [m for m in methods if m not in out]
    extra = [m for m in out if m not in methods]
    if missing or extra:
        raise ValueError(
            f"episode function returned methods {sorted(out)}, expected {list(methods)}"
        )
    checked: dict[str, dict[str, Any]] = {}
    for m in methods:
        d = out[m]
        if not isinstance(d, dict) or "accuracy" not in d or "queries" not in d:
            raise ValueError(f"method {m!r}: expected a dict with 'accuracy' and 'queries'")
        acc, q = d["accuracy"], d["queries"]
        if not isinstance(acc, int | float | np.floating) or not 0.0 <= float(acc) <= 1.0:
            raise ValueError(f"method {m!r}: accuracy must be a fraction in [0, 1], got {acc!r}")
        if isinstance(q, bool) or not isinstance(q, int | np.integer) or int(q) < 1:
            raise ValueError(f"method {m!r}: queries must be an integer >= 1, got {q!r}")
        checked[m] = _jsonable({**d, "accuracy": float(acc), "queries": int(q)})
    return checked


@contextlib.contextmanager
def _task_environment(task: EpisodeTask) -> Iterator[None]:
    """Threads, RNG state and a per-episode log file for one task, all restored afterwards,
    so a sequential run leaves the calling process as it found it."""
    import torch

    old_threads = torch.get_num_threads()
    env_keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    old_env = {k: os.environ.get(k) for k in env_keys}
    py_state, np_state = random.getstate(), np.random.get_state()
    torch.set_num_threads(task.threads)
    for k in env_keys:
        os.environ[k] = str(task.threads)
    try:
        with (
            torch.random.fork_rng(devices=range(torch.cuda.device_count())),
            log_to(Path(task.work_dir)),
        ):
            yield
    finally:
        torch.set_num_threads(old_threads)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        random.setstate(py_state)
        np.random.set_state(np_state)


def _next_attempt(work_dir: Path) -> int:
    """Counts executions of a task (a worker killed mid-episode leaves its count behind)."""
    path = work_dir / "attempts.txt"
    try:
        n = int(path.read_text().strip()) + 1
    except (OSError, ValueError):
        n = 1
    from tinyshot.utils.io import atomic_write

    atomic_write(path, lambda p: p.write_text(f"{n}\n"))
    return n


def execute_task(task: EpisodeTask, episode_fn: str) -> dict[str, Any]:
    """Run one episode; never raises for a Python error (returns a failure outcome instead).

    This is the body of each Ray task and of each step of a sequential run.
    """
    from tinyshot.utils.seed import seed_everything

    work_dir = Path(task.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    attempt = _next_attempt(work_dir)
    where = {"host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt}
    t0 = time.perf_counter()
    try:
        with _task_environment(task):
            fn = resolve_episode_fn(episode_fn)
            seed_everything(task.seed)
            log.debug("episode %d (attempt %d) on %s", task.index, attempt, where["host"])
            out = check_episode_output(fn(task), list(task.methods))
    except Exception as e:
        return {
            "ok": False,
            "index": task.index,
            "error_type": type(e).__name__,
            "message": str(e),
            "traceback": traceback.format_exc(),
            "seconds": time.perf_counter() - t0,
            **where,
        }
    return {
        "ok": True,
        "index": task.index,
        "methods": out,
        "seconds": time.perf_counter() - t0,
        **where,
    }


# ------------------------------------------------------------------ results


def method_statistics(
    accs: Sequence[float],
    queries: Sequence[int],
    target_halfwidth: float | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Mean with Student-t half-width, and the Theorem-1 figures from these episodes."""
    from tinyshot.evaluation import stats

    a = np.asarray(accs, dtype=np.float64)
    mean, hw = stats.mean_confidence_interval(a, confidence)
    q = float(np.mean(queries))
    out: dict[str, Any] = {
        "episodes": int(a.size),
        "mean": mean,
        "half_width": hw,
        "confidence": confidence,
        "std": float(a.std(ddof=1)) if a.size > 1 else float("nan"),
        "mean_queries": q,
        "sigma_a": None,
        "theorem1_variance": None,
        "theorem1_half_width": None,
        "target_halfwidth": target_halfwidth,
        "episodes_for_target": None,
    }
    try:
        sigma = stats.estimate_sigma(a, q)
        out["sigma_a"] = sigma
        out["theorem1_variance"] = stats.theorem1_variance(mean, sigma, q, a.size)
        out["theorem1_half_width"] = stats.halfwidth_for(mean, sigma, q, a.size, confidence)
        if target_halfwidth is not None:
            need = stats.episodes_for_halfwidth(mean, sigma, q, target_halfwidth, confidence)
            out["episodes_for_target"] = stats.ceil_episodes(need)
    except ConfigError as e:  # < 2 episodes, 1 query, or a degenerate spread
        log.debug("Theorem-1 figures unavailable: %s", e)
    return _nan_to_none(out)


def paired_differences(
    per_episode: Sequence[dict[str, Any]], methods: Sequence[str], confidence: float = 0.95
) -> list[dict[str, Any]]:
    """Mean accuracy difference (a - b) with a t-interval over the episodes both finished;
    pairing removes the episode-difficulty spread that dominates sigma_a."""
    from tinyshot.evaluation.stats import mean_confidence_interval

    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            d = [
                r["methods"][a]["accuracy"] - r["methods"][b]["accuracy"]
                for r in per_episode
                if a in r["methods"] and b in r["methods"]
            ]
            if not d:
                continue
            mean, hw = mean_confidence_interval(d, confidence)
            out.append(
                _nan_to_none(
                    {"a": a, "b": b, "episodes": len(d), "mean_difference": mean, "half_width": hw}
                )
            )
    return out


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


@dataclass
class BenchmarkResult:
    """Aggregated results of a run (also in out_dir/results.json and summary.txt)."""

    out_dir: Path
    methods: list[str]
    total: int
    summary: dict[str, dict[str, Any]]
    paired: list[dict[str, Any]]
    per_episode: list[dict[str, Any]]  # sorted by index: {"index", "seed", "methods"}
    failures: list[dict[str, Any]]  # sorted by index: {"index", "error_type", "message"}
    run: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)  # evaluation.health, per generator

    @property
    def complete(self) -> bool:
        return len(self.per_episode) == self.total and not self.failures

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.json"

    def accuracies(self, method: str) -> list[float]:
        return [r["methods"][method]["accuracy"] for r in self.per_episode]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "version": VERSION,
            "run": self.run,
            "episodes_total": self.total,
            "episodes_done": len(self.per_episode),
            "complete": self.complete,
            "summary": self.summary,
            "paired": self.paired,
            "failures": self.failures,
            "per_episode": self.per_episode,
            "health": self.health,
        }

    def render(self, width: int = 120) -> str:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=width, record=True, file=io.StringIO())
        conf = next(iter(self.summary.values()), {}).get("confidence", 0.95)
        pct = f"{100 * conf:g}%"
        target = next(iter(self.summary.values()), {}).get("target_halfwidth")
        t = Table(
            title=f"{len(self.per_episode)}/{self.total} episodes"
            + (f", {len(self.failures)} failed" if self.failures else "")
        )
        for col in (
            "method",
            "P",
            f"accuracy % ± {pct} CI (t)",
            "std %",
            "Q/episode",
            "sigma_a %",
            "Thm-1 var",
            f"Thm-1 ± {pct}",
        ):
            t.add_column(col, justify="left" if col == "method" else "right")
        if target is not None:
            t.add_column(f"P for ±{100 * target:g}%", justify="right")

        def pc(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f}"

        for m, s in self.summary.items():
            row = [
                m,
                str(s["episodes"]),
                f"{pc(s['mean'])} ± {pc(s['half_width'])}",
                pc(s["std"]),
                f"{s['mean_queries']:.0f}",
                pc(s["sigma_a"]),
                "n/a" if s["theorem1_variance"] is None else f"{s['theorem1_variance']:.3g}",
                pc(s["theorem1_half_width"]),
            ]
            if target is not None:
                row.append(
                    "n/a" if s["episodes_for_target"] is None else str(s["episodes_for_target"])
                )
            t.add_row(*row)
        console.print(t)
        if self.paired:
            p = Table(title="paired differences (same episodes)")
            for col in ("a - b", "P", f"difference % ± {pct} CI"):
                p.add_column(col, justify="left" if col == "a - b" else "right")
            for d in self.paired:
                p.add_row(
                    f"{d['a']} - {d['b']}",
                    str(d["episodes"]),
                    f"{100 * d['mean_difference']:+.2f} ± {pc(d['half_width'])}",
                )
            console.print(p)
        for g, s in (self.health.get("generators") or {}).items():
            if s["agreement"] is not None:
                console.print(
                    f"health: {g} synthetic images, teacher agreement {100 * s['agreement']:.1f}% "
                    f"(chance {100 * s['chance']:.1f}%), {s['status']}: failed in "
                    f"{s['episodes_failed']}, warned in {s['episodes_warned']} of "
                    f"{s['episodes']} episodes"
                )
        for f in self.failures:
            console.print(f"episode {f['index']} failed: {f['error_type']}: {f['message']}")
        return console.export_text()


def aggregate(
    out_dir: str | Path,
    indices: Sequence[int],
    methods: Sequence[str],
    *,
    target_halfwidth: float | None = None,
    confidence: float = 0.95,
    run: dict[str, Any] | None = None,
    write: bool = True,
) -> BenchmarkResult:
    """Rebuild the results from out_dir/episodes and out_dir/failures (sorted by index)."""
    out_dir = Path(out_dir)
    per_episode, failures = [], []
    for i in sorted(indices):
        rec_path = out_dir / "episodes" / f"{i}.json"
        fail_path = out_dir / "failures" / f"{i}.json"
        if rec_path.is_file():
            rec = read_json(rec_path)
            per_episode.append({"index": i, "seed": rec["seed"], "methods": rec["methods"]})
        elif fail_path.is_file():
            f = read_json(fail_path)
            failures.append({k: f[k] for k in ("index", "error_type", "message")})
    from tinyshot.evaluation.health import benchmark_health

    summary = {}
    if per_episode:
        for m in methods:
            accs = [r["methods"][m]["accuracy"] for r in per_episode]
            qs = [r["methods"][m]["queries"] for r in per_episode]
            summary[m] = method_statistics(accs, qs, target_halfwidth, confidence)
    result = BenchmarkResult(
        out_dir=out_dir,
        methods=list(methods),
        total=len(indices),
        summary=summary,
        paired=paired_differences(per_episode, list(methods), confidence),
        per_episode=per_episode,
        failures=failures,
        run=dict(run or {}),
        health=benchmark_health(per_episode),
    )
    if write:
        write_json(out_dir / "results.json", result.to_dict())
        text = result.render()
        from tinyshot.utils.io import atomic_write

        atomic_write(out_dir / "summary.txt", lambda p: p.write_text(text))
    return result


# ------------------------------------------------------------------ the runner


def episode_digest(episode: Episode) -> str:
    text = json.dumps(episode.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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


def _run_manifest(
    meta: dict[str, Any],
    methods: dict[str, dict[str, Any]],
    episode_fn: str,
    seed: int,
    episodes_file: str | None,
) -> dict[str, Any]:
    dataset = {k: v for k, v in (meta.get("dataset") or {}).items() if k != "root"}
    return _jsonable(
        {
            "format": RUN_FORMAT,
            "version": VERSION,
            "episode_fn": episode_fn,
            "methods": methods,
            "seed": seed,
            "dataset": dataset,
            "ways": meta.get("ways"),
            "shots": meta.get("shots"),
            "queries": meta.get("queries"),
            "episodes_file": episodes_file,
        }
    )


def _check_manifest(path: Path, new: dict[str, Any]) -> None:
    if not path.is_file():
        write_json(path, new)
        return
    old = read_json(path)
    if old.get("format") != RUN_FORMAT:
        raise DataError(f"{path}: not a tinyshot benchmark run file")
    keys = ("episode_fn", "methods", "seed", "dataset", "ways", "shots", "queries")
    differ = [k for k in keys if old.get(k) != new.get(k)]
    if differ:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise ConfigError(
            f"{path.parent}: holds a benchmark run with other settings ({details}); "
            "use another --out, or delete that folder to start over"
        )
    if old.get("episodes_file") != new.get("episodes_file"):
        write_json(path, new)  # same settings, episodes moved: per-episode digests decide


def _load_finished(out_dir: Path, tasks: Sequence[EpisodeTask]) -> set[int]:
    done = set()
    for t in tasks:
        path = out_dir / "episodes" / f"{t.index}.json"
        if not path.is_file():
            continue
        rec = read_json(path)
        if rec.get("format") != EPISODE_FORMAT or "methods" not in rec:
            raise DataError(f"{path}: not a tinyshot benchmark episode record")
        if rec.get("episode_sha256") != episode_digest(t.episode) or rec.get("seed") != t.seed:
            raise ConfigError(
                f"{path}: was computed for another episode {t.index} than the episode file "
                "holds now; use another --out for other episodes"
            )
        if sorted(rec["methods"]) != sorted(t.methods):
            raise ConfigError(
                f"{path}: holds methods {sorted(rec['methods'])}, not {sorted(t.methods)}"
            )
        done.add(t.index)
    return done


def _store(out_dir: Path, task: EpisodeTask, outcome: dict[str, Any]) -> None:
    rec_path = out_dir / "episodes" / f"{task.index}.json"
    fail_path = out_dir / "failures" / f"{task.index}.json"
    info = {k: outcome[k] for k in ("seconds", "host", "pid", "attempt")}
    if outcome["ok"]:
        write_json(
            rec_path,
            {
                "format": EPISODE_FORMAT,
                "version": VERSION,
                "index": task.index,
                "seed": task.seed,
                "episode_sha256": episode_digest(task.episode),
                "classes": task.episode.classes,
                "methods": outcome["methods"],
                **info,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        fail_path.unlink(missing_ok=True)
        accs = ", ".join(f"{m} {100 * d['accuracy']:.2f}%" for m, d in outcome["methods"].items())
        log.info("episode %d done in %.1f s: %s", task.index, outcome["seconds"], accs)
    else:
        write_json(
            fail_path,
            {
                "format": FAILURE_FORMAT,
                "version": VERSION,
                "index": task.index,
                "seed": task.seed,
                "error_type": outcome["error_type"],
                "message": outcome["message"],
                "traceback": outcome.get("traceback", ""),
                **info,
            },
        )
        log.error(
            "episode %d failed: %s: %s (details in %s)",
            task.index,
            outcome["error_type"],
            outcome["message"],
            fail_path,
        )


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


# ------------------------------------------------------------------ sampled episode files


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
