"""Distillation of a few-shot teacher into a tiny student (paper Sec. 3.2 and App. B.4).

Each batch holds equal parts of the enabled sources: labelled support images (cross-entropy),
base-class images and synthetic images with the teacher's soft labels (KL divergence at a
temperature), or synthetic images with the generator's hard labels (cross-entropy) for the
no-teacher ablation. SGD with momentum, weight decay and step decays of the learning rate.

Runs are resumable and bit-exact: the checkpoint holds the model, optimizer, scheduler, the
data-sampling and augmentation generators, the epoch samplers' positions and the training
curve, so an interrupted run continued from its last checkpoint ends with the same weights
as an uninterrupted one. A non-finite loss stops the run before the bad update; the last
good checkpoint stays on disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tinyshot.data.augment import augment_batch
from tinyshot.distill.config import DistillConfig
from tinyshot.distill.image_cache import ImageSubset
from tinyshot.errors import ConfigError, DataError, ModelError, TrainingError
from tinyshot.evaluation.episodic import evaluate_student
from tinyshot.utils.checkpoint import load_checkpoint, restore, save_checkpoint
from tinyshot.utils.device import resolve_device
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger, log_to, progress
from tinyshot.utils.seed import derive_seed, seed_everything, torch_generator

log = get_logger("distill")

CHECKPOINT = "checkpoint.pt"
Labelled = tuple[torch.Tensor, torch.Tensor]


@dataclass
class DistillResult:
    final_val_acc: float | None
    steps: int
    finished: bool
    checkpoint: Path
    history: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "final_val_acc": self.final_val_acc,
            "steps": self.steps,
            "finished": self.finished,
            "checkpoint": str(self.checkpoint),
        }


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0):
    """T^2 * KL(teacher || student), both softened at temperature T, averaged over the batch.

    The cached soft labels are the teacher's probabilities at T=1; softening them again is
    softmax(log p / T), which equals softmax(z / T) for the teacher's logits z.
    """
    t = float(temperature)
    if t != 1.0:
        teacher_probs = torch.softmax(torch.log(teacher_probs.clamp_min(1e-30)) / t, dim=1)
    log_ps = F.log_softmax(student_logits / t, dim=1)
    return F.kl_div(log_ps, teacher_probs, reduction="batchmean") * (t * t)


class EpochSampler:
    """Every item once per epoch in a fresh random order; its state goes into checkpoints."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n = n
        self.generator = generator
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def draw(self, k: int) -> torch.Tensor:
        out, need = [], k
        while need > 0:
            if self.perm is None or self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.generator)
                self.pos = 0
            take = min(need, self.n - self.pos)
            out.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm, "pos": self.pos}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.perm, self.pos = s["perm"], int(s["pos"])


@dataclass
class _Source:
    name: str
    images: torch.Tensor | ImageSubset  # uint8 (M,3,S,S), possibly memory-mapped
    targets: torch.Tensor  # int64 (M,) hard labels or float32 (M,N) probabilities
    soft: bool
    sampler: EpochSampler | None = None

    def summary(self) -> dict[str, Any]:
        """Identifies the data, so a resume on other images or labels is refused."""
        from tinyshot.distill.pseudo_label import tensor_digest

        images = (
            self.images.digest()
            if isinstance(self.images, ImageSubset)
            else tensor_digest(self.images)
        )
        return {
            "count": int(self.images.shape[0]),
            "labels": "soft" if self.soft else "hard",
            "target_shape": list(self.targets.shape),
            "sha256": images[:16] + tensor_digest(self.targets)[:16],
        }


def to_uint8_images(images: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """(M,3|1,H,W) uint8 or float [0,1] -> uint8 (M,3,size,size); resized (bilinear) if needed.
    Images already uint8 at that size (a memory-mapped cache, an ImageSubset) are not copied."""
    if isinstance(images, ImageSubset):
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size):
            raise DataError(
                f"{what}: an image subset must be uint8 (M,3,{size},{size}), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) == 0:
            raise DataError(f"{what}: no images")
        return images
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{what} images must be a (M,3,H,W) tensor, got {shape}")
    if images.shape[0] == 0:
        raise DataError(f"{what}: no images")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise DataError(f"{what} images must be uint8 or float in [0,1], got {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3 or lo != lo:
            raise DataError(f"{what} images must be in [0,1], got values in [{lo:.3g}, {hi:.3g}]")
    if images.dtype == torch.uint8 and images.shape[-2:] == (size, size):
        return images.contiguous()
    out = []
    for i in range(0, images.shape[0], 512):
        x = images[i : i + 512]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out)


def _prepare_sources(
    config: DistillConfig,
    num_classes: int,
    size: int,
    support: Labelled,
    base: Labelled | None,
    synthetic: Labelled | None,
) -> list[_Source]:
    given = {"support": support, "base": base, "synthetic": synthetic}
    sources: list[_Source] = []
    for name in config.sources:
        data = given[name]
        if data is None:
            raise ConfigError(
                f"source {name!r} is enabled (sources={list(config.sources)}) but no {name} "
                "images were given"
            )
        images, targets = data
        if not isinstance(targets, torch.Tensor):
            targets = torch.as_tensor(targets)
        imgs = to_uint8_images(images, size, name)
        if targets.shape[0] != imgs.shape[0]:
            raise DataError(f"{name}: {imgs.shape[0]} images but {targets.shape[0]} labels")
        want_soft = name == "base" or (name == "synthetic" and config.synthetic_labels == "teacher")
        if name == "support":
            want_soft = False
        is_soft = targets.ndim == 2
        if want_soft and not is_soft:
            hint = (
                " (or set synthetic_labels='generator' to train on the generator's labels)"
                if name == "synthetic"
                else ""
            )
            raise ConfigError(
                f"{name} images need the teacher's soft labels, shape (M, {num_classes}); "
                f"got shape {tuple(targets.shape)}{hint}"
            )
        if not want_soft and is_soft:
            raise ConfigError(
                f"{name} images need hard integer labels for synthetic_labels="
                f"{config.synthetic_labels!r}; got soft labels of shape {tuple(targets.shape)}"
            )
        if is_soft:
            if targets.shape[1] != num_classes:
                raise ConfigError(
                    f"class-count mismatch: {name} soft labels have {targets.shape[1]} classes "
                    f"but the student has {num_classes} outputs"
                )
            targets = targets.float()
            if not torch.isfinite(targets).all() or (targets < 0).any():
                raise DataError(f"{name} soft labels contain NaN, infinity or negative values")
            sums = targets.sum(dim=1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise DataError(
                    f"{name} soft labels are not probabilities (row sums range "
                    f"{float(sums.min()):.4g}..{float(sums.max()):.4g})"
                )
        else:
            if targets.ndim != 1 or targets.is_floating_point():
                raise DataError(
                    f"{name} labels must be integers (M,), got {targets.dtype} {tuple(targets.shape)}"
                )
            targets = targets.long()
            lo, hi = int(targets.min()), int(targets.max())
            if lo < 0 or hi >= num_classes:
                raise ConfigError(
                    f"class-count mismatch: {name} labels range {lo}..{hi} but the student has "
                    f"{num_classes} outputs"
                )
            if name == "support":
                present = sorted(set(targets.tolist()))
                if len(present) != num_classes:
                    raise ConfigError(
                        f"class-count mismatch: support images cover {len(present)} classes "
                        f"{present} but the student has {num_classes} outputs"
                    )
        sources.append(_Source(name, imgs, targets, is_soft))
    for name, data in given.items():
        if data is not None and name not in config.sources:
            log.info("%s images given but not in sources=%s; not used", name, list(config.sources))
    return sources


def _student_meta(student: torch.nn.Module, config: DistillConfig) -> dict[str, Any]:
    extra = {"stage": "distill", "config": config.to_dict()}
    if hasattr(student, "meta") and callable(student.meta):
        return student.meta(**extra)
    return {
        "kind": "student",
        "arch": getattr(student, "arch", type(student).__name__),
        "num_classes": int(student.num_classes),
        "input_size": int(getattr(student, "input_size", config.input_size)),
        **extra,
    }


def distill(
    student: torch.nn.Module,
    *,
    support: Labelled,
    base: Labelled | None = None,
    synthetic: Labelled | None = None,
    config: DistillConfig,
    run_dir: str | Path,
    val: Labelled | None = None,
    device: str | torch.device | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int], None] | None = None,
    val_name: str = "accuracy on held-out images",
) -> DistillResult:
    """Train `student` in place on the enabled sources; returns the final validation accuracy.

    support: (images, int labels); base/synthetic: (images, soft labels (M,N)) or, for
    synthetic with synthetic_labels="generator", (images, int labels). Images are uint8 or
    float in [0,1]; they are kept as uint8 at the student's input size. `val` is a held-out
    query subset evaluated every `eval_every` iterations (the accuracy curve).
    `stop_after` ends the run early (after a checkpoint) at that iteration; `on_step(step)`
    is called after every iteration (tests use it to simulate a kill). `val_name` says what
    `val` measures, in the log's words (e.g. "agreement with the teacher on held-out synthetic
    images" when its labels are the teacher's).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Channels-last convolutions: a Conv4 step at 32 px (batch 150, 2 CPU threads) takes 0.33 s
    # instead of 0.40 s (docs/pipeline.md); the student goes back to the default layout after.
    student.to(memory_format=torch.channels_last)
    try:
        with log_to(run_dir):
            return _distill(
                student,
                support,
                base,
                synthetic,
                config,
                run_dir,
                val,
                device,
                resume,
                stop_after,
                on_step,
                val_name,
            )
    finally:
        student.to(memory_format=torch.contiguous_format)


def _distill(
    student: torch.nn.Module,
    support: Labelled,
    base: Labelled | None,
    synthetic: Labelled | None,
    config: DistillConfig,
    run_dir: Path,
    val: Labelled | None,
    device: str | torch.device | None,
    resume: bool,
    stop_after: int | None,
    on_step: Callable[[int], None] | None,
    val_name: str = "accuracy on held-out images",
) -> DistillResult:
    num_classes = int(getattr(student, "num_classes", 0))
    if num_classes < 1:
        raise ConfigError("the student must have num_classes (its head's output count)")
    size = int(getattr(student, "input_size", config.input_size))
    if size != config.input_size:
        log.info("student input size %d overrides config.input_size %d", size, config.input_size)
    arch = getattr(student, "arch", type(student).__name__)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device

    sources = _prepare_sources(config, num_classes, size, support, base, synthetic)
    val_data = None
    if val is not None:
        vx, vy = val
        vy = torch.as_tensor(vy).long()
        val_data = (to_uint8_images(vx, size, "val"), vy)
        if int(vy.max()) >= num_classes or int(vy.min()) < 0:
            raise ConfigError(
                f"class-count mismatch: val labels range {int(vy.min())}..{int(vy.max())} "
                f"but the student has {num_classes} outputs"
            )
    per = config.per_source
    if per * len(sources) != config.batch_size:
        log.info(
            "batch_size %d is not divisible by %d sources; using %d per source",
            config.batch_size,
            len(sources),
            per,
        )
    data_summary = {s.name: s.summary() for s in sources}

    student.to(dev)
    g_sample = torch_generator(derive_seed(config.seed, "distill-sample"))
    g_aug = torch_generator(derive_seed(config.seed, "distill-augment"))
    for s in sources:
        s.sampler = EpochSampler(s.images.shape[0], g_sample)
    opt = torch.optim.SGD(
        student.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=config.milestone_steps, gamma=config.lr_gamma
    )
    history: dict[str, Any] = {"config": config.to_dict(), "data": data_summary, "curve": []}
    acc = _fresh_acc(sources)
    ckpt_path = run_dir / CHECKPOINT
    start = 0
    last_ckpt_step: int | None = None

    if resume and ckpt_path.is_file():
        try:
            state = load_checkpoint(ckpt_path, expect={"arch": arch, "num_classes": num_classes})
        except ModelError as e:
            raise ModelError(f"{e}; use another run folder for this student") from e
        extra = state.get("extra", {})
        if not {"config", "samplers", "history", "acc"} <= set(extra):
            raise ModelError(
                f"{ckpt_path}: not a distillation checkpoint (another stage wrote it); "
                "use another run folder"
            )
        old = DistillConfig.from_dict(extra.get("config", {})).resume_key()
        diff = sorted(k for k in old if old[k] != config.resume_key().get(k))
        if diff:
            raise ConfigError(
                f"{ckpt_path}: checkpoint was trained with other options ({', '.join(diff)}); "
                "use a new run folder or pass resume=False / --no-resume"
            )
        if extra.get("data") != data_summary:
            raise ConfigError(
                f"{ckpt_path}: checkpoint was trained on other data (images or labels "
                "differ); use a new run folder or pass resume=False / --no-resume"
            )
        start = restore(
            state,
            model=student,
            optimizer=opt,
            scheduler=sched,
            generators={"sample": g_sample, "augment": g_aug},
        )
        for s in sources:
            s.sampler.load_state_dict(extra["samplers"][s.name])
        history, acc = extra["history"], extra["acc"]
        last_ckpt_step = start
        log.info("resumed %s from step %d of %d", ckpt_path, start, config.iterations)
    else:
        seed_everything(config.seed)

    def save(step: int) -> None:
        nonlocal last_ckpt_step
        save_checkpoint(
            ckpt_path,
            model=student,
            step=step,
            meta=_student_meta(student, config),
            optimizer=opt,
            scheduler=sched,
            generators={"sample": g_sample, "augment": g_aug},
            extra={
                "config": config.to_dict(),
                "data": data_summary,
                "samplers": {s.name: s.sampler.state_dict() for s in sources},
                "history": history,
                "acc": acc,
            },
        )
        last_ckpt_step = step

    def record(step: int) -> None:
        nonlocal acc
        entry: dict[str, Any] = {"step": step, "lr": opt.param_groups[0]["lr"]}
        if acc["n"]:
            entry["loss"] = acc["total"] / acc["n"]
            for s in sources:
                entry[f"loss_{s.name}"] = acc[s.name] / acc["n"]
        if val_data is not None:
            entry["val_acc"] = evaluate_student(
                student, *val_data, batch_size=config.eval_batch_size, device=dev
            )
        history["curve"].append(entry)
        acc = _fresh_acc(sources)
        write_json(run_dir / "history.json", history)
        said = [f"step {step}/{config.iterations}"]
        if "loss" in entry:
            said.append(f"training loss {entry['loss']:.4f}")
        if "val_acc" in entry:
            said.append(f"{val_name} {100 * entry['val_acc']:.1f}%")
        log.info("student distillation: %s", ", ".join(said))

    t0 = time.time()
    if start == 0 and not history["curve"]:
        record(0)
    student.train()
    for step in progress(
        range(start, config.iterations),
        desc="student distillation",
        total=config.iterations,
        initial=start,
        logger=log,
    ):
        xs, targets = [], []
        for s in sources:
            idx = s.sampler.draw(per)
            xs.append(s.images[idx])
            targets.append(s.targets[idx].to(dev))
        x = torch.cat(xs).to(dev).float().div_(255.0)
        if config.augment:
            x = augment_batch(x, g_aug, color_jitter=config.color_jitter)
        x = x.contiguous(memory_format=torch.channels_last)
        logits = student(x).split(per)
        parts = []
        for s, z, y in zip(sources, logits, targets):
            parts.append(kd_loss(z, y, config.kd_temperature) if s.soft else F.cross_entropy(z, y))
        stacked = torch.stack(parts)
        loss = stacked.sum()
        # One device sync per iteration for the NaN check and the logged per-source losses.
        loss_val, *part_vals = torch.cat([loss.detach()[None], stacked.detach()]).cpu().tolist()
        if not math.isfinite(loss_val):
            write_json(run_dir / "history.json", history)
            where = (
                f"last good checkpoint {ckpt_path} (step {last_ckpt_step}) is kept"
                if last_ckpt_step is not None
                else "no checkpoint had been written yet"
            )
            detail = ", ".join(f"{s.name}={v:.4g}" for s, v in zip(sources, part_vals))
            raise TrainingError(
                f"distillation stopped: non-finite loss at iteration {step + 1} ({detail}); "
                f"{where}. Try a lower lr (now {opt.param_groups[0]['lr']:g}) or check the inputs"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc["n"] += 1
        acc["total"] += loss_val
        for s, v in zip(sources, part_vals):
            acc[s.name] += v
        done = step + 1
        if done % config.eval_every == 0 or done == config.iterations:
            record(done)
            student.train()
        if done % config.checkpoint_every == 0 or done == config.iterations or done == stop_after:
            save(done)
        if on_step is not None:
            on_step(done)
        if stop_after is not None and done >= stop_after and done < config.iterations:
            log.info("stopping after %d iterations as asked; rerun to resume", done)
            return DistillResult(None, done, False, ckpt_path, history)
    steps = config.iterations
    curve = history["curve"]
    final_acc = curve[-1].get("val_acc") if curve else None
    result = DistillResult(final_acc, steps, True, ckpt_path, history)
    write_json(run_dir / "history.json", history)
    write_json(
        run_dir / "result.json",
        {
            **result.to_dict(),
            "arch": arch,
            "num_classes": num_classes,
            "input_size": size,
            "config": config.to_dict(),
            "data": data_summary,
            "elapsed_s": round(time.time() - t0, 3),
        },
    )
    return result


def _fresh_acc(sources: list[_Source]) -> dict[str, float]:
    return {"n": 0, "total": 0.0, **{s.name: 0.0 for s in sources}}


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """The result.json of a finished distillation run."""
    return read_json(Path(run_dir) / "result.json")
