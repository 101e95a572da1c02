"""Seconds per stage summed over every attempt of a run, kept in the run folder.

A resumed run skips finished work, so the last attempt's clock says little (seconds for a
stage that took an hour before the kill). Each stage's time is added to <run>/timings.json
when it ends, normally or not (Ctrl-C, SIGTERM, an error); only a hard kill (SIGKILL, power
loss) loses the attempt in progress. The process's peak resident memory at each stage's end
is kept beside it (`peak_rss_mib`), so a run folder says which stage needed the memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from tinyshot.utils.io import read_json, write_json

TIMINGS_FILE = "timings.json"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class StageTimes:
    """Per-stage seconds of one run folder: `with times.stage("distill_s"): ...`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / TIMINGS_FILE

    def totals(self) -> dict[str, float]:
        """Stage -> seconds over all attempts so far (empty for a new run)."""
        if not self.path.is_file():
            return {}
        try:
            data = read_json(self.path)
        except Exception:  # a damaged file must not stop a run: timings restart
            return {}
        return {str(k): float(v) for k, v in data.get("seconds", {}).items()}

    def peak_rss(self) -> dict[str, float]:
        """Stage -> the process's peak resident memory (MiB) when the stage last ended."""
        try:
            data = read_json(self.path) if self.path.is_file() else {}
        except Exception:
            return {}
        return {str(k): float(v) for k, v in data.get("peak_rss_mib", {}).items()}

    def add(self, key: str, seconds: float) -> None:
        totals = self.totals()
        totals[key] = totals.get(key, 0.0) + max(0.0, float(seconds))
        rss = {**self.peak_rss(), key: round(peak_rss_mib(), 1)}
        write_json(self.path, {"seconds": totals, "peak_rss_mib": rss})

    def get(self, key: str, running_since: float | None = None) -> float:
        """The stage's total; with running_since (a perf_counter value) its running attempt
        is included."""
        now = 0.0 if running_since is None else time.perf_counter() - running_since
        return self.totals().get(key, 0.0) + now

    @contextlib.contextmanager
    def stage(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(key, time.perf_counter() - t0)
