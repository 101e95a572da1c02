"""Benchmark runner: Ray equals sequential, killed workers are retried, killed runs resume,
failures are reported without sinking the other episodes, statistics match closed forms."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyshot.cli import main
from tinyshot.data.episode_io import write_episodes
from tinyshot.data.registry import load_dataset
from tinyshot.data.sampler import sample_episodes
from tinyshot.errors import ConfigError
from tinyshot.pipeline import benchmark as bm
from tinyshot.pipeline.benchmark import runners
from tinyshot.pipeline.commands import parse_methods
from tinyshot.utils.io import read_json

BASELINE_FN = "tinyshot.pipeline.baselines:run_baseline_episode"
FNS_FILE = Path(__file__).with_name("benchmark_fns.py")
CRASH_FN = f"{FNS_FILE}:crash_once"
METHODS = {
    "pixels": {"kind": "prototype-pixels", "size": 12},
    "teacher": {"kind": "teacher", "backbone": "conv4", "input_size": 16},
}


@pytest.fixture(scope="module")
def episodes_file(tmp_path_factory) -> Path:
    """4 noisy classes of 10 images (12 px) as an ImageFolder; 4 episodes, 3-way 2-shot."""
    tmp = tmp_path_factory.mktemp("bench_data")
    root = tmp / "folder"
    rng = np.random.default_rng(0)
    common = rng.integers(60, 200, size=(12, 12, 3))
    for c in range(4):
        base = common + rng.normal(0, 20, size=common.shape)
        for k in range(10):
            img = np.clip(base + rng.normal(0, 90, size=common.shape), 0, 255).astype(np.uint8)
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / f"c{c}" / f"{k}.png")
    ds = load_dataset("imagefolder", "all", root)
    eps = sample_episodes(ds, 4, ways=3, shots=2, queries=None, seed=0)
    meta = {
        "dataset": {"name": "imagefolder", "split": "all", "root": str(root), "options": {}},
        "ways": 3,
        "shots": 2,
        "queries": None,
        "seed": 0,
    }
    return write_episodes(tmp / "episodes.json", eps, meta)


@pytest.fixture(scope="module")
def sequential(episodes_file, tmp_path_factory) -> bm.BenchmarkResult:
    out = tmp_path_factory.mktemp("bench_seq")
    return bm.run_benchmark(
        episodes_file, METHODS, out, episode_fn=BASELINE_FN, use_ray=False, seed=3
    )


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (started by the runner's own init_ray, 2 CPU slots)."""
    ray = pytest.importorskip("ray")
    assert bm.init_ray(num_workers=2, cpus_per_task=1.0)
    yield ray
    ray.shutdown()


def _figures(result: bm.BenchmarkResult) -> list[dict]:
    return [
        {
            "index": r["index"],
            "seed": r["seed"],
            **{m: (d["accuracy"], d["queries"]) for m, d in r["methods"].items()},
        }
        for r in result.per_episode
    ]


def test_sequential_run_is_real(sequential):
    assert sequential.complete and sequential.total == 4
    assert [r["index"] for r in sequential.per_episode] == [0, 1, 2, 3]
    pix = sequential.accuracies("pixels")
    assert all(r["methods"]["pixels"]["queries"] == 24 for r in sequential.per_episode)
    assert len(set(pix)) > 1 and 1 / 3 < np.mean(pix) < 1.0  # real, non-trivial accuracies
    s = sequential.summary["pixels"]
    assert s["mean"] == pytest.approx(np.mean(pix), abs=1e-15)
    # The seeds are the runner's, distinct per episode.
    assert len({r["seed"] for r in sequential.per_episode}) == 4
    saved = read_json(sequential.results_path)
    assert saved["summary"] == json.loads(json.dumps(sequential.summary))
    assert "pixels - teacher" in (sequential.out_dir / "summary.txt").read_text()


def test_task_files_round_trip(sequential):
    import pickle

    task = bm.EpisodeTask.from_dict(read_json(sequential.out_dir / "work" / "2" / "task.json"))
    assert task.index == 2 and task.seed == sequential.per_episode[2]["seed"]
    assert pickle.loads(pickle.dumps(task)) == task
    # A task file is enough to recompute its episode by hand.
    out = bm.execute_task(task, BASELINE_FN)
    assert out["ok"] and out["methods"]["pixels"]["accuracy"] == sequential.accuracies("pixels")[2]


def test_without_ray_runs_sequentially(monkeypatch, episodes_file, sequential, tmp_path):
    monkeypatch.setattr(runners, "ray_available", lambda: False)
    with pytest.raises(ConfigError, match="Ray is not installed"):
        bm.run_benchmark(episodes_file, METHODS, tmp_path, episode_fn=BASELINE_FN, use_ray=True)
    r = bm.run_benchmark(
        episodes_file, METHODS, tmp_path, episode_fn=BASELINE_FN, num_workers=2, seed=3
    )
    assert _figures(r) == _figures(sequential) and r.summary == sequential.summary


def test_ray_two_workers_equal_sequential(ray_session, episodes_file, sequential, tmp_path):
    r = bm.run_benchmark(
        episodes_file,
        METHODS,
        tmp_path,
        episode_fn=BASELINE_FN,
        use_ray=True,
        num_workers=2,
        seed=3,
    )
    assert r.complete
    assert _figures(r) == _figures(sequential)
    assert r.summary == sequential.summary and r.paired == sequential.paired
    pids = {read_json(tmp_path / "episodes" / f"{i}.json")["pid"] for i in range(4)}
    assert os.getpid() not in pids  # ran in Ray worker processes


def test_ray_killed_worker_is_retried(ray_session, episodes_file, sequential, tmp_path):
    methods = {
        "pixels": {**METHODS["pixels"], "kill_on": [1]},
        "teacher": METHODS["teacher"],
    }
    r = bm.run_benchmark(
        episodes_file,
        methods,
        tmp_path,
        episode_fn=CRASH_FN,
        use_ray=True,
        num_workers=2,
        max_retries=2,
        seed=3,
    )
    assert r.complete and not r.failures
    assert _figures(r) == _figures(sequential)
    assert r.summary == sequential.summary
    calls = (tmp_path / "work" / "1" / "calls.txt").read_text().split()
    killed_pid = int((tmp_path / "work" / "1" / "killed").read_text())
    rec = read_json(tmp_path / "episodes" / "1.json")
    assert len(calls) == 2 and rec["attempt"] == 2 and rec["pid"] != killed_pid
    assert read_json(tmp_path / "episodes" / "0.json")["attempt"] == 1

    # Without retries left, the dead worker is a reported failure; the rest still finish.
    r0 = bm.run_benchmark(
        episodes_file,
        methods,
        tmp_path / "no_retry",
        episode_fn=CRASH_FN,
        use_ray=True,
        num_workers=2,
        max_retries=0,
        seed=3,
    )
    assert [f["index"] for f in r0.failures] == [1]
    assert r0.failures[0]["error_type"] == "WorkerCrashedError"
    assert read_json(tmp_path / "no_retry" / "failures" / "1.json")["attempt"] == 1
    assert [e["index"] for e in r0.per_episode] == [0, 2, 3]


def test_killed_run_resumes_without_recomputing(episodes_file, sequential, tmp_path):
    method = json.dumps({**METHODS["pixels"], "kill_on": [2]})
    args = [
        "benchmark",
        "--episodes",
        str(episodes_file),
        "--method",
        f"pixels={method}",
        "--episode-fn",
        CRASH_FN,
        "--no-ray",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "tinyshot.cli", *args], capture_output=True, text=True
    )
    assert proc.returncode == -9, proc.stderr  # SIGKILLed in the middle of episode 2
    ep = tmp_path / "episodes"
    assert sorted(p.name for p in ep.iterdir()) == ["0.json", "1.json"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in ep.iterdir()}
    assert not (tmp_path / "results.json").exists()

    assert main(args) == 0
    assert {p: (ep / p).stat().st_mtime_ns for p in mtimes} == mtimes
    calls = [len((tmp_path / "work" / str(i) / "calls.txt").read_text().split()) for i in range(4)]
    assert calls == [1, 1, 2, 1]
    r = read_json(tmp_path / "results.json")
    assert r["complete"] and r["summary"]["pixels"] == sequential.summary["pixels"]
    assert [e["methods"]["pixels"]["accuracy"] for e in r["per_episode"]] == sequential.accuracies(
        "pixels"
    )


def test_failing_episode_is_reported_and_others_finish(episodes_file, sequential, tmp_path):
    methods = {"pixels": {**METHODS["pixels"], "fail_on_episode": 2}}
    kw = {"episode_fn": BASELINE_FN, "use_ray": False, "seed": 3}
    r = bm.run_benchmark(episodes_file, methods, tmp_path, **kw)
    assert not r.complete
    assert [e["index"] for e in r.per_episode] == [0, 1, 3]
    assert len(r.failures) == 1 and r.failures[0]["index"] == 2
    assert r.failures[0]["error_type"] == "RuntimeError"
    assert "fail_on_episode" in r.failures[0]["message"]
    fail = read_json(tmp_path / "failures" / "2.json")
    assert "Traceback" in fail["traceback"] and "RuntimeError" in fail["traceback"]
    saved = read_json(tmp_path / "results.json")
    assert saved["failures"] == r.failures and saved["episodes_done"] == 3
    want = [sequential.accuracies("pixels")[i] for i in (0, 1, 3)]
    assert r.summary["pixels"]["episodes"] == 3
    assert r.summary["pixels"]["mean"] == pytest.approx(np.mean(want), abs=1e-15)
    assert "episode 2 failed: RuntimeError" in (tmp_path / "summary.txt").read_text()

    # A rerun retries the failed episode only.
    mtimes = {i: (tmp_path / "episodes" / f"{i}.json").stat().st_mtime_ns for i in (0, 1, 3)}
    r2 = bm.run_benchmark(episodes_file, methods, tmp_path, **kw)
    assert [f["index"] for f in r2.failures] == [2]
    assert (tmp_path / "work" / "2" / "attempts.txt").read_text().strip() == "2"
    assert all(
        (tmp_path / "episodes" / f"{i}.json").stat().st_mtime_ns == t for i, t in mtimes.items()
    )


def test_rerun_with_other_settings_is_refused(episodes_file, tmp_path):
    kw = {"episode_fn": BASELINE_FN, "use_ray": False}
    bm.run_benchmark(episodes_file, {"pixels": METHODS["pixels"]}, tmp_path, seed=3, **kw)
    with pytest.raises(ConfigError, match="seed: 3 -> 4"):
        bm.run_benchmark(episodes_file, {"pixels": METHODS["pixels"]}, tmp_path, seed=4, **kw)
    with pytest.raises(ConfigError, match=r"unknown option.*sizee"):
        bm.run_benchmark(episodes_file, {"prototype-pixels": {"sizee": 3}}, tmp_path / "x", **kw)
    with pytest.raises(ConfigError, match="cannot import"):
        bm.run_benchmark(episodes_file, None, tmp_path / "y", episode_fn="nope.mod:fn")


def test_cli_fashion_mnist_samples_and_extends(tmp_path, capsys):
    args = [
        "benchmark",
        "--dataset",
        "fashion-mnist",
        "--split",
        "novel-train",
        "--query-split",
        "novel-test",
        "--ways",
        "2",
        "--shots",
        "1",
        "--queries",
        "5",
        "--method",
        "prototype-pixels",
        "--episode-fn",
        BASELINE_FN,
        "--no-ray",
        "--target-halfwidth",
        "0.05",
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "prototype-pixels" in out and "P for ±5%" in out
    first = read_json(tmp_path / "results.json")
    assert first["summary"]["prototype-pixels"]["episodes"] == 3
    assert first["summary"]["prototype-pixels"]["mean_queries"] == 10
    assert first["summary"]["prototype-pixels"]["episodes_for_target"] >= 1
    eps3 = read_json(tmp_path / "episodes.json")["episodes"]

    # More episodes extend the file (episode i never changes) and only the new one runs.
    assert main([*args, "--episodes", "4"]) == 0
    eps4 = read_json(tmp_path / "episodes.json")["episodes"]
    assert eps4[:3] == eps3 and len(eps4) == 4
    assert [(tmp_path / "work" / str(i) / "attempts.txt").read_text() for i in range(4)] == [
        "1\n"
    ] * 4
    # Other sampling settings in the same folder: a clear error, not mixed episodes.
    assert main([*args[:-2], "--out", str(tmp_path), "--episodes", "4", "--ways", "3"]) == 2
    assert "ways: 2 there, 3 now" in capsys.readouterr().err


def test_method_statistics_closed_form():
    accs, q = [0.8, 0.9, 1.0], 10
    s = bm.method_statistics(accs, [q] * 3, target_halfwidth=0.05)
    assert s["mean"] == pytest.approx(0.9)
    assert s["half_width"] == pytest.approx(4.302652729749464 * 0.1 / math.sqrt(3))
    # sigma^2 = (s^2 - a(1-a)/Q) / (1 - 1/Q) = (0.01 - 0.009) / 0.9
    assert s["sigma_a"] == pytest.approx(math.sqrt(0.001 / 0.9))
    # Theorem 1 with the estimated sigma gives back the sample variance of the mean.
    assert s["theorem1_variance"] == pytest.approx(0.01 / 3)
    assert s["theorem1_half_width"] == pytest.approx(1.959963984540054 * math.sqrt(0.01 / 3))
    assert s["episodes_for_target"] == math.ceil(0.01 / (0.05 / 1.959963984540054) ** 2) == 16
    one = bm.method_statistics([0.5], [q])
    assert one["half_width"] is None and one["sigma_a"] is None

    per = [{"methods": {"a": {"accuracy": x}, "b": {"accuracy": y}}} for x, y in [(0.9, 0.8)] * 3]
    (d,) = bm.paired_differences(per, ["a", "b"])
    assert d["mean_difference"] == pytest.approx(0.1) and d["half_width"] == pytest.approx(0.0)


def test_parse_methods(tmp_path):
    (tmp_path / "t.json").write_text('{"backbone": "conv4"}')
    (tmp_path / "all.toml").write_text(
        '[methods.pixels]\nkind = "prototype-pixels"\n[methods.teacher]\nbackbone = "conv4"\n'
    )
    assert parse_methods([]) is None
    assert parse_methods(["pixels", f"teacher={tmp_path / 't.json'}", 'x={"size": 8}']) == {
        "pixels": {},
        "teacher": {"backbone": "conv4"},
        "x": {"size": 8},
    }
    assert parse_methods([str(tmp_path / "all.toml")]) == {
        "pixels": {"kind": "prototype-pixels"},
        "teacher": {"backbone": "conv4"},
    }
    with pytest.raises(ConfigError, match="given twice"):
        parse_methods(["a", "a"])
    with pytest.raises(ConfigError, match="not found"):
        parse_methods(["a=missing.json"])


def test_only_runs_a_shard_and_shards_merge(episodes_file, sequential, tmp_path):
    """Two shards (--only) in two folders, their episode records copied into one folder, give
    the run that did every episode in one go: same seeds, same accuracies, same statistics."""
    kw = {"episode_fn": BASELINE_FN, "use_ray": False, "seed": 3}
    a = bm.run_benchmark(episodes_file, METHODS, tmp_path / "a", only=[0, 2], **kw)
    assert [e["index"] for e in a.per_episode] == [0, 2] and not a.complete and a.total == 4
    assert sorted(p.name for p in (tmp_path / "a" / "episodes").iterdir()) == ["0.json", "2.json"]
    args = ["benchmark", "--episodes", str(episodes_file), "--episode-fn", BASELINE_FN]
    args += ["--no-ray", "--seed", "3", "--out", str(tmp_path / "b"), "--only", "1,3"]
    for m, cfg in METHODS.items():
        args += ["--method", f"{m}={json.dumps(cfg)}"]
    assert main(args) == 0
    merged = tmp_path / "merged" / "episodes"
    merged.mkdir(parents=True)
    for shard in ("a", "b"):
        for p in (tmp_path / shard / "episodes").iterdir():
            (merged / p.name).write_bytes(p.read_bytes())
    r = bm.run_benchmark(episodes_file, METHODS, tmp_path / "merged", **kw)
    assert not (tmp_path / "merged" / "work").exists()  # nothing recomputed
    assert r.complete
    assert _figures(r) == _figures(sequential) and r.summary == sequential.summary
    assert r.paired == sequential.paired


def test_only_rejects_bad_indices(episodes_file, tmp_path):
    from tinyshot.pipeline.benchmark.runners import format_indices, parse_indices

    assert parse_indices("6-9") == [6, 7, 8, 9]
    assert parse_indices("0, 3,5-7,3") == [0, 3, 5, 6, 7]
    assert format_indices([7, 0, 3, 5, 6]) == "0,3,5-7"
    for bad in ("a", "3-1", "-2", "1-x"):
        with pytest.raises(ConfigError, match="--only"):
            parse_indices(bad)
    with pytest.raises(ConfigError, match=r"--only: episode indices \[4\] are not in 0-3"):
        bm.run_benchmark(
            episodes_file, METHODS, tmp_path, episode_fn=BASELINE_FN, use_ray=False, only=[1, 4]
        )
