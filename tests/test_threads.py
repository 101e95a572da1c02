"""Thread defaults for a shared machine: PASSIVE OpenMP waiting set before torch loads, and no
more torch threads than the cores the process may use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinyshot.errors import ConfigError
from tinyshot.utils.threads import (
    available_cpus,
    cgroup_cpu_limit,
    configure_threads,
    default_threads,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    clean.update(env, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_cli_sets_passive_waiting_before_torch_is_imported():
    code = (
        "import sys, os; import tinyshot.cli; "
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules, "
        "os.environ.get('GOMP_SPINCOUNT'))"
    )
    # the module imports no torch before its first line has set the policy
    assert _run("import sys, tinyshot.utils.threads; print('torch' in sys.modules)") == "False"
    out = _run(code).split()
    assert (out[0], out[2]) == ("PASSIVE", "10000")
    # the user's choice wins, and then no spin count is imposed on it
    out = _run(code, OMP_WAIT_POLICY="ACTIVE").split()
    assert (out[0], out[2]) == ("ACTIVE", "None")


def test_cgroup_quota_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 0.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_available_cpus_is_capped_by_affinity_and_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no quota files: the affinity mask
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("20000 100000\n")  # 0.2 CPU still gets one thread
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (affinity + 8)} 100000\n")
    assert available_cpus(tmp_path) == affinity


def test_thread_count_from_flag_env_or_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert default_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert default_threads() == available_cpus()
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="--threads"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_fit_and_demo_take_threads():
    from tinyshot.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["fit", "d", "--out", "o", "--threads", "3"]).threads == 3
    assert parser.parse_args(["demo", "--threads", "1"]).threads == 1
    assert parser.parse_args(["demo"]).threads is None


def test_a_resume_with_another_thread_count_is_warned_about(tmp_path):
    import logging

    from tinyshot.utils.threads import note_thread_count

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tinyshot")
    logger.addHandler(handler)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert note_thread_count(tmp_path) == 1  # first start: recorded
        assert json.loads((tmp_path / "threads.json").read_text()) == {"torch_threads": 1}
        assert note_thread_count(tmp_path) == 1 and not records  # same count: silent
        torch.set_num_threads(2)
        assert note_thread_count(tmp_path) == 1  # the first count stays recorded
        assert len(records) == 1 and "--threads 1" in records[0].getMessage()
    finally:
        torch.set_num_threads(before)
        logger.removeHandler(handler)
