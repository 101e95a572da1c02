"""What one benchmark episode is and how it runs: `EpisodeTask`, the episode function named by
a string (resolved inside the worker), and `execute_task`, the body of every Ray task and of
every step of a sequential run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import random
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError
from tinyshot.utils.logging import get_logger, log_to

log = get_logger("pipeline.benchmark")


DEFAULT_EPISODE_FN = "tinyshot.pipeline.episode:run_episode"


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
