"""CPU threads that degrade gracefully on a shared machine.

Two defaults, both overridable:

- `OMP_WAIT_POLICY=PASSIVE` with `GOMP_SPINCOUNT=10000` (set by the CLI before torch is
  imported): an OpenMP worker that finishes its share spins only briefly (~10k iterations),
  then sleeps. Long-spinning workers of two processes on the same cores steal each other's
  time slices; pure PASSIVE (no spin) costs ~24% on Conv4 steps when alone, the short spin
  gets that back. Measured in docs/pipeline.md ("Threads").
- torch's intra-op thread count is no larger than the cores this process may use: its CPU
  affinity mask, capped by a cgroup CPU quota (a container limited to 2 CPUs on a 64-core
  host gets 2 threads, not 64).

The thread count changes float summation order in some kernels, so results are identical
only between runs with the same count (docs/pipeline.md, "Reproducibility").
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tinyshot.errors import ConfigError, DataError

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def set_default_env() -> None:
    """Process-wide OpenMP defaults; must run before torch is first imported (the CLI entry
    point does it). A value the user already set is kept."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # a short spin, then sleep


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by a cgroup quota (v2 cpu.max, or v1 cfs quota/period); None if unlimited."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """Cores this process may run on: its affinity mask, capped by the cgroup quota (>= 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def default_threads() -> int:
    """OMP_NUM_THREADS when the user set it, else the available cores."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cpus()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads` (--threads) or `default_threads()`; returns it."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    import torch

    n = threads or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def note_thread_count(run_dir: str | Path) -> int:
    """Record the torch thread count of a run folder's first start in run_dir/threads.json and
    warn when a resume uses another: its finished stages keep the first count's numbers, the
    rest gets the new count's, so the mix matches neither uninterrupted run."""
    import torch

    from tinyshot.utils.io import read_json, write_json
    from tinyshot.utils.logging import get_logger

    path = Path(run_dir) / "threads.json"
    now = torch.get_num_threads()
    first = None
    if path.is_file():
        try:
            first = int(read_json(path)["torch_threads"])
        except (DataError, KeyError, TypeError, ValueError):
            first = None
    if first is None:
        write_json(path, {"torch_threads": now})
        return now
    if first != now:
        get_logger("threads").warning(
            "%s was started with %d torch thread(s) and now runs with %d: results will differ "
            "in the last digits from an uninterrupted run; rerun with --threads %d to match",
            run_dir,
            first,
            now,
            first,
        )
    return first
