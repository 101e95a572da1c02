"""The on-disk store of a benchmark run: run.json (the settings), episodes/<i>.json (finished),
failures/<i>.json (Python errors); each written atomically, so a rerun resumes (see
`_load_finished`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError, DataError
from tinyshot.pipeline.benchmark.tasks import EpisodeTask, _jsonable
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.benchmark")


RUN_FORMAT = "tinyshot.benchmark-run"
EPISODE_FORMAT = "tinyshot.benchmark-episode"
FAILURE_FORMAT = "tinyshot.benchmark-failure"
RESULTS_FORMAT = "tinyshot.benchmark-results"
VERSION = 1


def episode_digest(episode: Episode) -> str:
    text = json.dumps(episode.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
