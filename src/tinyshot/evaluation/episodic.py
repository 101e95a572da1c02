"""Episodic evaluation: accuracy per episode for teachers and students, with 95% intervals.

Following the paper (Sec. 3.3, App. B.6), each episode is evaluated on all of its query
images (by default all remaining images of its classes), per-episode accuracies are kept,
and the summary is their mean with a Student-t 95% confidence interval. `EpisodeResults`
is saved after every episode, so a killed evaluation resumes at the next episode.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyshot.errors import DataError
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger, progress

log = get_logger("evaluation.episodic")

FORMAT = "tinyshot-episode-results-v1"


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict_student(
    student: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Predicted class per image (int64, CPU); images uint8 or float in [0,1]."""
    dev = device if device is not None else next(student.parameters()).device
    was_training = student.training
    student.eval()
    preds = []
    for i in range(0, images.shape[0], batch_size):
        x = _as_float(images[i : i + batch_size].to(dev))
        preds.append(student(x).argmax(dim=1).cpu())
    student.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def evaluate_student(
    student: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy of the student on labelled images (its training mode is restored)."""
    labels = torch.as_tensor(labels).long().view(-1)
    if labels.numel() != images.shape[0]:
        raise DataError(f"{images.shape[0]} images but {labels.numel()} labels")
    if labels.numel() == 0:
        raise DataError("no query images to evaluate on")
    pred = predict_student(student, images, batch_size, device)
    return float((pred == labels).double().mean())


@torch.no_grad()
def evaluate_teacher_episode(
    teacher: Any,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor | Iterable[torch.Tensor],
    query_labels: torch.Tensor,
    batch_size: int | None = None,
) -> float:
    """ProtoNet accuracy on one episode: prototypes from the support, argmax over the queries.

    query_images may be a tensor or an iterable of batches (for thousands of queries).
    """
    teacher.set_support(_as_float(support_images), torch.as_tensor(support_labels).long())
    query_labels = torch.as_tensor(query_labels).long().view(-1)
    batches = [query_images] if isinstance(query_images, torch.Tensor) else query_images
    preds = [
        teacher.predict_proba(_as_float(x), batch_size=batch_size).argmax(dim=1).cpu()
        for x in batches
    ]
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    if pred.numel() != query_labels.numel() or pred.numel() == 0:
        raise DataError(f"{pred.numel()} query predictions for {query_labels.numel()} labels")
    return float((pred == query_labels).double().mean())


class EpisodeResults:
    """Per-episode accuracies per method; JSON with a Student-t summary; a rich table."""

    def __init__(self, meta: dict[str, Any] | None = None, confidence: float = 0.95) -> None:
        self.meta: dict[str, Any] = dict(meta or {})
        self.confidence = confidence
        self.methods: dict[str, dict[int, dict[str, Any]]] = {}

    def add(
        self, method: str, episode: int, accuracy: float, n_query: int | None = None, **extra: Any
    ) -> None:
        if not 0.0 <= accuracy <= 1.0:
            raise DataError(f"{method}: accuracy must be a fraction in [0,1], got {accuracy}")
        entry = {"episode": int(episode), "accuracy": float(accuracy)}
        if n_query is not None:
            entry["n_query"] = int(n_query)
        entry.update(extra)
        self.methods.setdefault(method, {})[int(episode)] = entry

    def has(self, method: str, episode: int) -> bool:
        return int(episode) in self.methods.get(method, {})

    def accuracies(self, method: str) -> list[float]:
        eps = self.methods.get(method, {})
        return [eps[k]["accuracy"] for k in sorted(eps)]

    def summary(self) -> dict[str, dict[str, Any]]:
        from tinyshot.evaluation.stats import mean_confidence_interval

        out = {}
        for method in self.methods:
            accs = self.accuracies(method)
            mean, half = mean_confidence_interval(accs, confidence=self.confidence)
            q = [e.get("n_query") for e in self.methods[method].values()]
            out[method] = {
                "n_episodes": len(accs),
                "mean": float(mean),
                "ci": None if math.isnan(half) else float(half),
                "confidence": self.confidence,
                "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                "mean_queries": float(np.mean(q)) if q and None not in q else None,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "meta": self.meta,
            "summary": self.summary() if self.methods else {},
            "per_episode": {m: [eps[k] for k in sorted(eps)] for m, eps in self.methods.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "results") -> EpisodeResults:
        if d.get("format") != FORMAT:
            raise DataError(f"{source}: not a tinyshot episode-results file")
        r = cls(d.get("meta"))
        first = next(iter(d.get("summary", {}).values()), None)
        if first:
            r.confidence = float(first.get("confidence", 0.95))
        for m, entries in d.get("per_episode", {}).items():
            for e in entries:
                e = dict(e)
                r.add(m, e.pop("episode"), e.pop("accuracy"), e.pop("n_query", None), **e)
        return r

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> EpisodeResults:
        return cls.from_dict(read_json(path), str(path))

    def table(self, title: str | None = None):
        from rich.table import Table

        pct = round(self.confidence * 100)
        t = Table(title=title)
        t.add_column("method")
        t.add_column("episodes", justify="right")
        t.add_column(f"accuracy % (±{pct}% CI)", justify="right")
        t.add_column("std %", justify="right")
        t.add_column("queries/ep", justify="right")
        for m, s in self.summary().items():
            t.add_row(
                m,
                str(s["n_episodes"]),
                f"{100 * s['mean']:.2f} ± "
                + (f"{100 * s['ci']:.2f}" if s["ci"] is not None else "n/a"),
                f"{100 * s['std']:.2f}",
                f"{s['mean_queries']:.0f}" if s["mean_queries"] is not None else "-",
            )
        return t

    def render(self, title: str | None = None, width: int = 100) -> str:
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO())
        console.print(self.table(title))
        return console.export_text()


def episode_query_indices(
    episode: Any, dataset: Any, query_dataset: Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The episode's queries (in `query_dataset` when the file names a separate query split);
    with none listed, all remaining images of its classes."""
    if any(len(q) for q in episode.query):
        return episode.query_indices(query_dataset or dataset)
    if query_dataset is not None and query_dataset is not dataset:
        dataset = query_dataset
        support_idx = np.empty(0, dtype=np.int64)
    else:
        support_idx, _ = episode.support_indices(dataset)
    taken = set(int(i) for i in support_idx)
    idx, lab = [], []
    for c, name in enumerate(episode.classes):
        rest = [int(i) for i in dataset.indices_of(dataset.class_id(name)) if int(i) not in taken]
        idx += rest
        lab += [c] * len(rest)
    return np.asarray(idx, dtype=np.int64), np.asarray(lab, dtype=np.int64)


def _load_tensor(dataset: Any, indices: Sequence[int], size: int) -> torch.Tensor:
    from tinyshot.data.transforms import images_to_tensor

    return images_to_tensor(dataset.load_images(indices), size)


def load_teacher_view(dataset: Any, indices: Sequence[int], size: int) -> torch.Tensor:
    """Images of a dataset as the pipeline gives them to a teacher of input size `size`."""
    from tinyshot.data.transforms import teacher_view

    return teacher_view(dataset.load_images(indices), size).float() / 255.0


def evaluate_student_on_episode(
    student: torch.nn.Module,
    dataset: Any,
    episode: Any,
    query_dataset: Any | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[float, int]:
    """(accuracy, number of queries) of a student trained for `episode`, on all its queries.

    Query images are loaded in batches at the student's input size.
    """
    size = int(getattr(student, "input_size", 84))
    q_idx, q_lab = episode_query_indices(episode, dataset, query_dataset)
    qds = query_dataset or dataset
    correct = 0
    for j in range(0, len(q_idx), batch_size):
        x = _load_tensor(qds, q_idx[j : j + batch_size], size)
        pred = predict_student(student, x, batch_size, device)
        correct += int((pred == torch.from_numpy(q_lab[j : j + batch_size])).sum())
    if len(q_idx) == 0:
        raise DataError("episode has no query images")
    return correct / len(q_idx), len(q_idx)


def evaluate_teacher_on_episodes(
    teacher: Any,
    dataset: Any,
    episodes: Sequence[Any],
    out_path: str | Path | None = None,
    *,
    query_dataset: Any | None = None,
    method: str = "teacher",
    image_size: int | None = None,
    batch_size: int = 64,
    results: EpisodeResults | None = None,
    meta: dict[str, Any] | None = None,
    check_meta: dict[str, Any] | None = None,
) -> EpisodeResults:
    """ProtoNet accuracy of `teacher` on every episode; resumable through `out_path`.

    Images reach the teacher as in the pipeline (`data.transforms.teacher_view`: originals up
    to the teacher's input size, which its backbone resizes itself), so an episode file scores
    the benchmark's teacher figure; `image_size` resizes every image to that size instead.
    Queries in batches.
    """
    size = int(image_size or getattr(teacher, "input_size", 84))
    load = _load_tensor if image_size else load_teacher_view
    if results is None:
        if out_path is not None and Path(out_path).is_file():
            results = EpisodeResults.load(out_path)
            check_meta = meta if check_meta is None else check_meta
            if check_meta and any(results.meta.get(k) != v for k, v in check_meta.items()):
                raise DataError(
                    f"{out_path}: results are for other episodes or another teacher "
                    f"({results.meta}); choose another output file"
                )
            log.info("%s: resuming, %d episodes done", out_path, len(results.accuracies(method)))
        else:
            results = EpisodeResults(meta)
    for i, ep in enumerate(progress(episodes, desc=f"evaluate {method}", total=len(episodes))):
        if results.has(method, i):
            continue
        s_idx, s_lab = ep.support_indices(dataset)
        q_idx, q_lab = episode_query_indices(ep, dataset, query_dataset)
        qds = query_dataset or dataset
        support = load(dataset, s_idx, size)
        batches = (
            load(qds, q_idx[j : j + batch_size], size) for j in range(0, len(q_idx), batch_size)
        )
        acc = evaluate_teacher_episode(
            teacher, support, torch.from_numpy(s_lab), batches, torch.from_numpy(q_lab), batch_size
        )
        results.add(method, i, acc, n_query=len(q_idx))
        log.debug("episode %d: %s accuracy %.4f on %d queries", i, method, acc, len(q_idx))
        if out_path is not None:
            results.write(out_path)
    return results


def file_digest(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def evaluate_teacher_on_episode_file(
    teacher: Any,
    episodes_path: str | Path,
    out_path: str | Path | None = None,
    *,
    root: str | Path | None = None,
    teacher_name: str = "teacher",
    method: str = "teacher",
    image_size: int | None = None,
    batch_size: int = 64,
    limit: int | None = None,
) -> EpisodeResults:
    """Evaluate a ProtoNet teacher on every episode of an episode file (datasets named in it).

    Results record the episode file's sha256 and the teacher, so resuming into a results file
    made for other episodes or another teacher is refused instead of mixing numbers.
    """
    from tinyshot.data.episode_io import check_episodes, episode_datasets, read_episodes

    episodes, meta = read_episodes(episodes_path)
    if limit is not None:
        episodes = episodes[:limit]
    support_ds, query_ds = episode_datasets(meta, root)
    check_episodes(episodes, support_ds, query_ds)
    run_meta = {
        "episodes_file": str(episodes_path),
        "episodes_sha256": file_digest(episodes_path),
        "dataset": meta.get("dataset"),
        "ways": meta.get("ways"),
        "shots": meta.get("shots"),
        "teacher": teacher_name,
    }
    check = {k: run_meta[k] for k in ("episodes_sha256", "teacher")}
    return evaluate_teacher_on_episodes(
        teacher,
        support_ds,
        episodes,
        out_path,
        query_dataset=query_ds if query_ds is not support_ds else None,
        method=method,
        image_size=image_size,
        batch_size=batch_size,
        meta=run_meta,
        check_meta=check,
    )
