"""Episode functions for the benchmark tests, loaded by file path (`--episode-fn FILE.py:fn`).

`crash_once` records every call in the episode's work folder and, on the first attempt of the
episodes listed in a method's "kill_on", SIGKILLs its own process mid-episode: a Ray worker
in a Ray run, the whole run in a sequential one.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

from tinyshot.pipeline.baselines import run_baseline_episode


def crash_once(task):
    kill_on: set[int] = set()
    methods = {}
    for name, cfg in task.methods.items():
        cfg = dict(cfg)
        kill_on |= set(cfg.pop("kill_on", []))
        methods[name] = cfg
    work = Path(task.work_dir)
    with open(work / "calls.txt", "a") as f:
        f.write(f"{os.getpid()}\n")
    marker = work / "killed"
    if task.index in kill_on and not marker.exists():
        marker.write_text(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return run_baseline_episode(dataclasses.replace(task, methods=methods))
