"""Cheap few-shot methods that need no generator, as a benchmark episode function.

`run_baseline_episode(task)` scores every method of `task.methods` on the episode's queries:

* "prototype-pixels": nearest class mean on raw pixels (resized to `size`, each image
  standardised to zero mean and unit variance). The floor every learned method must beat.
* "teacher": the ProtoNet teacher (`tinyshot.models.teacher.build_teacher`) with prototypes
  from the support set; config `backbone` (default the pipeline's `effnet-lite-student`,
  whose `student` member is bound to the dataset's pretrained student as in a pipeline
  episode; "efficientnet-lite0", "dino-vitb16", "dinov2-small", "dinov2-base", a ViT or
  DINOv2 folder, an ensemble spec, or "conv4"/"resnet12" for toy runs), optional `checkpoint`
  (meta-trained weights), `input_size`, `batch_size`, `init_seed` (weights of randomly
  initialised backbones, the same in every episode because the teacher is fixed across
  episodes). Its images are the pipeline's teacher view (`data.transforms.teacher_view`), so
  it scores the figure a pipeline episode's `teacher` row gives.

A method's kind is its config's "kind", else its name, so `{"teacher-lite0": {"kind":
"teacher"}}` and `{"teacher": {}}` both work. `fail_on_episode` (an index or a list) raises
a RuntimeError on those episodes: it lets tests and users check failure reporting.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from tinyshot.errors import ConfigError, DataError
from tinyshot.pipeline.config import DEFAULT_TEACHER
from tinyshot.pipeline.task_config import bind_teacher_spec
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.baselines")

KINDS = ("prototype-pixels", "teacher")
DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    "prototype-pixels": {},
    "teacher": {"backbone": DEFAULT_TEACHER},
}
_OPTIONS = {
    "prototype-pixels": {"size": 32, "batch_size": 512, "standardize": True},
    "teacher": {
        "backbone": DEFAULT_TEACHER,
        "checkpoint": None,
        "input_size": None,
        "batch_size": 64,
        "init_seed": 0,
    },
}


def run_baseline_episode(task: Any) -> dict[str, dict[str, Any]]:
    """EpisodeFn for the benchmark runner (see tinyshot.pipeline.benchmark)."""
    from tinyshot.evaluation.episodic import episode_query_indices

    support_ds, query_ds = task.datasets()
    ep = task.episode
    s_idx, s_lab = ep.support_indices(support_ds)
    q_idx, q_lab = episode_query_indices(
        ep, support_ds, query_ds if query_ds is not support_ds else None
    )
    if len(q_idx) == 0:
        raise DataError(f"episode {task.index} has no query images")
    out: dict[str, dict[str, Any]] = {}
    for name, raw in task.methods.items():
        kind, cfg = method_config(name, raw)
        fail = raw.get("fail_on_episode")
        if fail is not None and task.index in (fail if isinstance(fail, list) else [fail]):
            raise RuntimeError(
                f"{name}: failure injected on episode {task.index} (method config fail_on_episode)"
            )
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if kind == "prototype-pixels":
            acc = prototype_pixels_accuracy(support_ds, s_idx, s_lab, query_ds, q_idx, q_lab, **cfg)
        else:
            cfg["backbone"], warning = bind_teacher_spec(str(cfg["backbone"]), task.meta)
            if warning:
                log.warning("%s: %s", name, warning)
            acc = teacher_accuracy(
                support_ds, s_idx, s_lab, query_ds, q_idx, q_lab, device=task.device, **cfg
            )
            extra["backbone"] = cfg["backbone"]
        out[name] = {
            "accuracy": acc,
            "queries": len(q_idx),
            "seconds": time.perf_counter() - t0,
            **extra,
        }
    return out


def method_config(name: str, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(kind, options with defaults); unknown kinds and options are errors naming the method."""
    raw = dict(raw)
    raw.pop("fail_on_episode", None)
    kind = str(raw.pop("kind", name))
    if kind not in KINDS:
        raise ConfigError(
            f"method {name!r}: unknown baseline kind {kind!r} (have {', '.join(KINDS)}; "
            'set "kind" in its config)'
        )
    unknown = sorted(set(raw) - set(_OPTIONS[kind]))
    if unknown:
        raise ConfigError(
            f"method {name!r} ({kind}): unknown option(s) {', '.join(unknown)} "
            f"(accepted: {', '.join(_OPTIONS[kind])})"
        )
    return kind, {**_OPTIONS[kind], **raw}


def _batches(ds: Any, idx: np.ndarray, size: int, batch_size: int):
    from tinyshot.data.transforms import images_to_tensor

    for j in range(0, len(idx), batch_size):
        yield images_to_tensor(ds.load_images(idx[j : j + batch_size]), size)


def _pixel_features(x: torch.Tensor, standardize: bool) -> np.ndarray:
    f = x.reshape(len(x), -1).numpy().astype(np.float64)
    if standardize:
        f = (f - f.mean(axis=1, keepdims=True)) / (f.std(axis=1, keepdims=True) + 1e-8)
    return f


def prototype_pixels_accuracy(
    support_ds: Any,
    s_idx: np.ndarray,
    s_lab: np.ndarray,
    query_ds: Any,
    q_idx: np.ndarray,
    q_lab: np.ndarray,
    size: int = 32,
    batch_size: int = 512,
    standardize: bool = True,
) -> float:
    """Nearest class mean (Euclidean) on pixels; float64, so the result is exact everywhere."""
    if int(size) < 1 or int(batch_size) < 1:
        raise ConfigError("prototype-pixels: size and batch_size must be >= 1")
    fs = np.concatenate(
        [_pixel_features(x, standardize) for x in _batches(support_ds, s_idx, size, batch_size)]
    )
    n = int(s_lab.max()) + 1
    protos = np.stack([fs[s_lab == c].mean(axis=0) for c in range(n)])
    p2 = (protos**2).sum(axis=1)
    correct, j = 0, 0
    for x in _batches(query_ds, q_idx, size, batch_size):
        fq = _pixel_features(x, standardize)
        d = p2[None, :] - 2.0 * fq @ protos.T  # + |q|^2, the same for every class
        correct += int((d.argmin(axis=1) == q_lab[j : j + len(fq)]).sum())
        j += len(fq)
    return correct / len(q_lab)


@lru_cache(maxsize=2)
def _cached_teacher(
    backbone: str, checkpoint: str | None, input_size: int | None, init_seed: int, device: str
) -> Any:
    from tinyshot.models.teacher import build_teacher

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        kw = {"input_size": input_size} if input_size else {}
        teacher = build_teacher(backbone, checkpoint=checkpoint, **kw)
    return teacher.to(device).eval()


def teacher_accuracy(
    support_ds: Any,
    s_idx: np.ndarray,
    s_lab: np.ndarray,
    query_ds: Any,
    q_idx: np.ndarray,
    q_lab: np.ndarray,
    backbone: str,  # bound already: run_baseline_episode resolves a bare `student` member
    checkpoint: str | None = None,
    input_size: int | None = None,
    batch_size: int = 64,
    init_seed: int = 0,
    device: str = "auto",
) -> float:
    """ProtoNet teacher accuracy on the episode's queries (the pipeline's teacher view)."""
    from tinyshot.evaluation.episodic import evaluate_teacher_episode, load_teacher_view
    from tinyshot.utils.device import resolve_device

    dev = str(resolve_device(device))
    teacher = _cached_teacher(
        backbone, str(checkpoint) if checkpoint else None, input_size, int(init_seed), dev
    )
    size, q = teacher.input_size, int(batch_size)
    return evaluate_teacher_episode(
        teacher,
        load_teacher_view(support_ds, s_idx, size),
        torch.from_numpy(s_lab),
        (load_teacher_view(query_ds, q_idx[j : j + q], size) for j in range(0, len(q_idx), q)),
        torch.from_numpy(q_lab),
        int(batch_size),
    )


def check_methods(methods: dict[str, dict[str, Any]]) -> None:
    """Called by the runner before scheduling, so a typo fails once, not in every episode."""
    for name, raw in methods.items():
        method_config(name, raw)
