"""`tinyshot bench inference`: what shipping each student costs, per precision.

One row per student and precision (fp32, int8): parameters, ONNX file size, latency per image
at batch 1 (median and 95th percentile over repeated calls), throughput at batch 64,
accuracy on an episode's queries when the models were trained on that episode, and for int8
the ratios to the same student's fp32 row, measured in the same invocation (so both sit on the
same machine load).

The models are either
- fit run folders (`runs`): their model.onnx, and their model.int8.onnx, or when a run has
  none (or one older than its model.onnx) an int8 copy made here in a temporary folder exactly
  as `tinyshot quantize` would (calibrated on the run's own images); or
- students built here (`students`, name[@size]): Conv4 and ResNet12 with random weights,
  EfficientNet-Lite0 with its ImageNet weights, each with a random 5-way head and an int8 copy
  calibrated on random images. Speed does not depend on the weights' values; accuracy is '-'.

Timings use onnxruntime's CPU provider with `threads` intra-op threads (1 by default: the
figure for a device that runs one inference at a time) on a fixed random input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.deploy_bench")

DEFAULT_STUDENTS = ("conv4", "resnet12", "efficientnet-lite0")
PRECISIONS = ("fp32", "int8")
THROUGHPUT_BATCH = 64
MIN_LATENCY_CALLS = 50  # enough calls for a 95th percentile
MIN_THROUGHPUT_CALLS = 5
BUILT_WAYS = 5


@dataclass
class BenchModel:
    """One student to time: its fp32 file and, when asked for, its int8 file."""

    student: str  # arch (and run folder)
    arch: str
    source: str  # the run folder, or "built here"
    fp32: Path
    int8: Path | None = None
    trained: bool = False  # a run's trained model (accuracy means something)


def parse_students(spec: str | Sequence[str], size: int | None = None) -> list[tuple[str, int]]:
    """ "conv4,resnet12@84,efficientnet-lite0" -> [(arch, input size)]: a size after @, else
    `size`, else the size `fit` gives that student (PipelineConfig.from_dict)."""
    from tinyshot.models.students import ARCHS
    from tinyshot.pipeline.config import PipelineConfig

    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, at = item.partition("@")
        name = name.strip().lower()
        if name not in ARCHS:
            raise ConfigError(f"--students: unknown student {name!r}; choose from {list(ARCHS)}")
        if at:
            try:
                s = int(at)
            except ValueError:
                raise ConfigError(
                    f"--students: {item!r}: the size after @ must be pixels"
                ) from None
        else:
            s = size or PipelineConfig.from_dict({"student": name}).image_size
        out.append((name, s))
    if not out:
        raise ConfigError("--students: name at least one student")
    return out


def built_models(
    students: Sequence[tuple[str, int]], folder: Path, int8: bool, seed: int = 0
) -> list[BenchModel]:
    """Students built here, exported to `folder` (and quantized on random images)."""
    import torch

    from tinyshot.models.export import export_onnx
    from tinyshot.models.students import build_student

    out = []
    for arch, size in students:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = build_student(arch, BUILT_WAYS, size).eval()
        fp32 = export_onnx(student, folder / f"{arch}-{size}.onnx")
        model = BenchModel(f"{arch} @{size}", arch, "built here", fp32)
        if int8:
            model.int8 = _quantize_random(fp32, folder / f"{arch}-{size}.int8.onnx", size, seed)
        out.append(model)
    return out


def _quantize_random(fp32: Path, out: Path, size: int, seed: int, n: int = 32) -> Path:
    """An int8 copy calibrated on random images: right for timing, not for accuracy."""
    from PIL import Image

    from tinyshot.models.quantize import quantize_onnx

    rng = np.random.default_rng(seed)
    images = (
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    )
    quantize_onnx(fp32, out, images, n, extra_meta={"calibration_sources": "random images"})
    return out


def run_models(
    runs: Sequence[str | Path], folder: Path, int8: bool, max_images: int | None = None
) -> list[BenchModel]:
    """The models of fit run folders; a missing int8 copy is made in `folder`."""
    from tinyshot.models.export import MODEL_FILE, OnnxClassifier
    from tinyshot.models.quantize import INT8_MODEL_FILE
    from tinyshot.pipeline.quantize_run import check_run_dir, quantize_run

    out = []
    for i, r in enumerate(runs):
        run, _ = check_run_dir(r)
        arch = OnnxClassifier(run / MODEL_FILE).arch
        model = BenchModel(f"{arch} ({run.name})", arch, str(run), run / MODEL_FILE, trained=True)
        if int8:
            model.int8 = run / INT8_MODEL_FILE
            fp32_time = model.fp32.stat().st_mtime
            if not model.int8.is_file() or model.int8.stat().st_mtime < fp32_time:
                why = "older than" if model.int8.is_file() else "missing beside"
                log.info("%s: %s %s %s; quantizing a copy for this bench", run, INT8_MODEL_FILE,
                         why, MODEL_FILE)  # fmt: skip
                model.int8 = folder / f"run{i}.int8.onnx"
                quantize_run(run, max_images, out=model.int8)
        out.append(model)
    return out


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _call_times(
    fn: Callable[[], Any], budget: float, min_calls: int, warmup: int = 3
) -> np.ndarray:
    """Seconds per call: `warmup` calls, then calls for about `budget` seconds, at least
    `min_calls` of them (at most 20,000)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < budget and len(times) < 20_000):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return np.asarray(times)


def time_model(path: Path, size: int, threads: int = 1, budget: float = 1.0) -> dict[str, float]:
    """Batch-1 latency (median, p95, ms) and batch-64 throughput (images/s, from the median
    call) of an .onnx student at `threads` onnxruntime threads."""
    sess = _session(path, threads)
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 3, size, size), dtype=np.float32)
    xb = rng.random((THROUGHPUT_BATCH, 3, size, size), dtype=np.float32)
    one = _call_times(lambda: sess.run(None, {name: x1}), budget, MIN_LATENCY_CALLS)
    many = _call_times(lambda: sess.run(None, {name: xb}), budget, MIN_THROUGHPUT_CALLS, 1)
    return {
        "latency_ms_median": 1000 * float(np.median(one)),
        "latency_ms_p95": 1000 * float(np.percentile(one, 95)),
        "latency_calls": len(one),
        "throughput_images_per_s": THROUGHPUT_BATCH / float(np.median(many)),
        "throughput_calls": len(many),
    }


@dataclass
class EpisodeQueries:
    """An episode's query images (as `predict` would open them) and their class names."""

    name: str
    classes: list[str]
    images: list[Any]
    labels: np.ndarray  # episode-local class index per image


def read_episode(spec: str, root: str | Path | None = None) -> tuple[Any, Any, Any, str]:
    """FILE[:INDEX] (episode 0 by default) -> (episode, support dataset, query dataset, name)."""
    from tinyshot.data.episode_io import episode_datasets, read_episodes

    file, index = spec, 0
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit():
        file, index = head, int(tail)
    if not Path(file).is_file():
        raise ConfigError(f"{spec}: no such episode file")
    episodes, meta = read_episodes(file)
    if not 0 <= index < len(episodes):
        raise ConfigError(f"{spec}: the file holds episodes 0..{len(episodes) - 1}")
    support_ds, query_ds = episode_datasets(meta, root)
    return episodes[index], support_ds, query_ds, f"{Path(file).name}:{index}"


def load_episode_queries(spec: str, root: str | Path | None = None) -> EpisodeQueries:
    """The query images of episode FILE[:INDEX], loaded once for every model."""
    ep, _, query_ds, name = read_episode(spec, root)
    if not ep.query:
        raise DataError(f"--episode {spec}: the episode lists no query images")
    idx, labels = ep.query_indices(query_ds)
    return EpisodeQueries(name, list(ep.classes), query_ds.load_images(idx), labels)


def write_episode_supports(spec: str, out: str | Path, root: str | Path | None = None) -> Path:
    """Episode FILE[:INDEX]'s supports as class folders under `out` (one PNG per image, as the
    dataset gives it), the DATA_DIR of a `fit` whose models --episode then scores. Its
    queries are never written."""
    from tinyshot.diffusion.store import folder_name

    ep, support_ds, _, name = read_episode(spec, root)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder")
    idx, labels = ep.support_indices(support_ds)
    for k, (i, c) in enumerate(zip(idx, labels)):
        folder = out / folder_name(ep.classes[int(c)])
        folder.mkdir(parents=True, exist_ok=True)
        support_ds.load_image(int(i)).save(folder / f"{k:03d}.png")
    log.info("wrote the %d supports of %s to %s", len(idx), name, out)
    return out


def episode_accuracy(path: Path, queries: EpisodeQueries, threads: int = 1) -> float:
    """Top-1 accuracy of an .onnx student on the episode's queries; its classes are matched
    to the episode's by name (class folder names such as "Ankle boot" or "ankle_boot")."""
    predicted = episode_predictions(path, queries, threads)
    return sum(p == int(y) for p, y in zip(predicted, queries.labels)) / len(queries.labels)


def episode_predictions(path: Path, queries: EpisodeQueries, threads: int = 1) -> list[int]:
    """An .onnx student's top-1 class of each query, as an index into the episode's classes."""
    from tinyshot.models.export import OnnxClassifier, class_key

    clf = OnnxClassifier(path, threads=threads)
    keys = [class_key(c) for c in queries.classes]
    mine = [class_key(c) for c in clf.class_names]
    if sorted(keys) != sorted(mine):
        raise ConfigError(
            f"{path}: classes {clf.class_names} are not the episode's {queries.classes} "
            f"({queries.name}); fit the run on that episode's supports"
        )
    predicted, _ = clf.predict(queries.images)
    return [keys.index(class_key(p)) for p in predicted]


def run_deploy_bench(
    students: Sequence[tuple[str, int]] = (),
    runs: Sequence[str | Path] = (),
    precisions: Sequence[str] = PRECISIONS,
    episode: str | None = None,
    root: str | Path | None = None,
    threads: int = 1,
    budget: float = 1.0,
    calibration_images: int | None = None,
) -> dict[str, Any]:
    """The rows of the table (see the module doc) and the settings they were measured with."""
    import tempfile

    import onnxruntime as ort

    from tinyshot.models.export import OnnxClassifier

    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ConfigError(f"--precisions: choose from {list(PRECISIONS)}, got {list(precisions)}")
    if episode and not runs:
        raise ConfigError(
            "--episode scores trained models: give --runs, fit run folders trained on the "
            "episode's supports"
        )
    queries = load_episode_queries(episode, root) if episode else None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tinyshot-bench-") as tmp:
        int8 = "int8" in precisions
        models = run_models(runs, Path(tmp), int8, calibration_images)
        models += built_models(students, Path(tmp), int8)
        for m in models:
            fp32_row: dict[str, Any] | None = None
            for precision in precisions:
                path = m.int8 if precision == "int8" and m.int8 is not None else m.fp32
                clf = OnnxClassifier(path)
                log.info("timing %s %s (%s)", m.student, precision, path)
                row: dict[str, Any] = {
                    "student": m.student,
                    "arch": m.arch,
                    "source": m.source,
                    "precision": precision,
                    "input_size": clf.input_size,
                    "parameters": int(clf.meta.get("num_parameters", 0)),
                    "onnx_bytes": path.stat().st_size,
                    "onnx_mb": path.stat().st_size / 1e6,
                    **time_model(path, clf.input_size, threads, budget),
                    "accuracy": None,
                    "queries": None,
                }
                if queries is not None and m.trained:
                    row["accuracy"] = episode_accuracy(path, queries)
                    row["queries"] = len(queries.labels)
                if precision == "fp32":
                    fp32_row = row
                elif fp32_row is not None:
                    row["speedup_latency_vs_fp32"] = (
                        fp32_row["latency_ms_median"] / row["latency_ms_median"]
                    )
                    row["speedup_throughput_vs_fp32"] = (
                        row["throughput_images_per_s"] / fp32_row["throughput_images_per_s"]
                    )
                    row["size_ratio_vs_fp32"] = row["onnx_bytes"] / fp32_row["onnx_bytes"]
                    if row["accuracy"] is not None and fp32_row["accuracy"] is not None:
                        row["accuracy_change_vs_fp32"] = row["accuracy"] - fp32_row["accuracy"]
                rows.append(row)
    return {
        "format": "tinyshot.bench-inference",
        "version": 1,
        "rows": rows,
        "settings": {
            "threads": threads,
            "budget_s": budget,
            "latency_batch": 1,
            "throughput_batch": THROUGHPUT_BATCH,
            "episode": queries.name if queries else None,
            "onnxruntime": ort.__version__,
            "machine": _machine(),
        },
    }


def _machine() -> dict[str, Any]:
    import os
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(load[0], 2) if load else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def format_deploy_table(result: dict[str, Any]) -> str:
    """The rows as a fixed-width table; int8 rows show their ratios to fp32."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    head = (
        f"{'student':<34} {'prec':<5} {'px':>4} {'params':>10} {'MB':>7} {'b1 ms med':>10} "
        f"{'b1 ms p95':>10} {'b64 img/s':>10} {'acc %':>6} {'speed-up':>9} {'size':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        ratio = f"{r['speedup_latency_vs_fp32']:.2f}x" if "speedup_latency_vs_fp32" in r else "-"
        size = f"{r['size_ratio_vs_fp32']:.2f}" if "size_ratio_vs_fp32" in r else "-"
        lines.append(
            f"{r['student']:<34} {r['precision']:<5} {r['input_size']:>4} {r['parameters']:>10,} "
            f"{r['onnx_mb']:>7.2f} {r['latency_ms_median']:>10.3f} {r['latency_ms_p95']:>10.3f} "
            f"{r['throughput_images_per_s']:>10.1f} {pct(r['accuracy']):>6} {ratio:>9} {size:>6}"
        )
    s = result["settings"]
    queries = {r["queries"] for r in result["rows"] if r["queries"]}
    episode = f"; accuracy on {s['episode']} ({', '.join(map(str, queries))} queries)"
    lines.append(
        f"(onnxruntime {s['onnxruntime']} CPU, {s['threads']} thread(s); batch-1 latency "
        f"median and p95, batch-{s['throughput_batch']} throughput; int8: speed-up of the "
        f"batch-1 median and size as a fraction of fp32, same run"
        + (episode if s["episode"] else "")
        + f"; load average {s['machine']['load_average_1min']})"
    )
    return "\n".join(lines)


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """The result as JSON, for scripts."""
    from tinyshot.utils.io import write_json

    path = Path(path)
    write_json(path, result)
    return path
