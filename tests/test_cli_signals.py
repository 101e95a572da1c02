"""SIGTERM gets what Ctrl-C gets: the CLI keeps finished work (here: textual inversion's state
at the last completed step), prints "rerun to resume" and exits 128 + 15; a rerun resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinyshot.diffusion.bench import synthetic_episode
from tinyshot.diffusion.model import build_tiny_diffusion_model
from tinyshot.utils.interrupt import Terminated, exit_code

SRC = Path(__file__).resolve().parents[1] / "src"


def test_exit_codes_follow_the_shell_convention():
    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(Terminated()) == 143


def _wait_for(
    path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 240.0, count: int = 1
) -> str:
    """Until `pattern` occurs `count` times in the file (a log that several runs append to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.is_file() else ""
        if len(re.findall(pattern, text)) >= count:
            return text
        if proc.poll() is not None:
            pytest.fail(f"CLI exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{pattern!r} never appeared in {path}")


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tinyshot.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _terminate(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _stop_until(argv: list[str], log: Path, started: str, done) -> None:
    """Start the CLI, SIGTERM it a while after `started` appears in its log, and again with a
    longer wait (2, 8, 30 s) until `done()`: under load a fixed wait can stop a run before its
    first step, which has nothing to keep."""
    for attempt, wait in enumerate((2.0, 8.0, 30.0), start=1):
        proc = _start(argv)
        _wait_for(log, started, proc, count=attempt)
        time.sleep(wait)
        rc, err = _terminate(proc)
        assert rc == 143, err
        assert f"{argv[0]}: interrupted; finished work is kept, rerun to resume" in err
        if done():
            return


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_keeps_ti_state_and_rerun_resumes(tmp_path):
    model = build_tiny_diffusion_model(seed=11).save(tmp_path / "tiny-sd")
    images, _ = synthetic_episode(2, 2, size=28, seed=3)
    for name, imgs in zip(["sandal", "boot"], images):
        (tmp_path / "data" / name).mkdir(parents=True)
        for k, im in enumerate(imgs):
            im.save(tmp_path / "data" / name / f"{k}.png")
    out = tmp_path / "spec"
    # so many steps that only the interrupt can write a checkpoint (10% = 100000 steps, 60 s)
    argv = ["specialize", str(tmp_path / "data"), "--model", str(model), "--out", str(out),
            "--ti-steps", "1000000", "--upscale", "bilinear", "--inversion", "npi"]  # fmt: skip
    log = out / "log.txt"

    def kept_step() -> int:
        state = out / "ti_state.pt"
        return torch.load(state, weights_only=True)["step"] if state.is_file() else 0

    # A run stopped before its first TI step has nothing to keep (under load the set-up can
    # outlast a fixed wait: no ti_state.pt once, in a fresh-clone CI).
    _stop_until(argv, log, r"textual inversion: 2 classes", lambda: kept_step() >= 1)
    first = kept_step()
    assert first >= 1
    assert f"interrupted, step {first}/1000000 kept" in log.read_text()

    # The rerun resumes at the kept step and goes on from it (a run stopped before its first
    # step keeps the same step: 23 -> 23 once, under load).
    _stop_until(argv, log, rf"resuming at step {first}/1000000", lambda: kept_step() > first)
    assert torch.load(out / "ti_state.pt", weights_only=True)["step"] > first
