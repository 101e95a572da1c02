"""Student pretraining on the base classes, before distillation (LabelHalluc follows IER).

Loss = cross-entropy over the base classes on augmented images + `rotation_weight` x
cross-entropy of a 4-way rotation head (0/90/180/270 degrees) on a rotated copy of the batch.
This is the supervised + equivariance (rotation prediction) part of IER (Rizve et al., 2021);
IER's invariance term and its born-again self-distillation generations are left out.
Defaults follow IER/LabelHalluc: SGD momentum 0.9, lr 0.05, weight decay 5e-4, batch 64,
65 epochs with lr x0.1 from epoch 60.

The result is cached per (architecture, dataset, config): a second call with the same inputs
loads the finished checkpoint instead of training again, so every episode reuses one
pretraining. An unfinished checkpoint resumes bit-exactly. Distillation then keeps the
backbone and puts a fresh N-way head on it (`Student.reset_head`, `load_pretrained_backbone`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.data.base import FewShotDataset
from tinyshot.distill.meta_train import check_finite, check_resume_config, dataset_fingerprint
from tinyshot.errors import ConfigError, DataError, ModelError
from tinyshot.models.students import Student, build_student
from tinyshot.utils.logging import get_logger, progress

log = get_logger("pretrain")
_NON_SEMANTIC = {"checkpoint_every", "log_every", "device"}


@dataclass
class PretrainConfig:
    epochs: float = 65.0
    iterations: int | None = None  # overrides epochs when set
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_at: float = 60 / 65  # fraction of training after which lr is multiplied by 0.1
    rotation_weight: float = 1.0  # 0 disables the rotation task
    input_size: int = 84
    in_channels: int = 3
    augment: bool = True
    max_per_class: int | None = None  # cap images per class (memory/time); None = all
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    device: str = "auto"

    def validate(self) -> None:
        if self.batch_size < 2:
            raise ConfigError(f"pretraining: batch_size must be >= 2, got {self.batch_size}")
        if self.iterations is None and self.epochs <= 0:
            raise ConfigError(f"pretraining: epochs must be > 0, got {self.epochs}")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"pretraining: iterations must be >= 1, got {self.iterations}")
        if self.lr <= 0 or self.rotation_weight < 0:
            raise ConfigError("pretraining: lr must be > 0 and rotation_weight >= 0")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("pretraining: checkpoint_every and log_every must be >= 1")

    def total_iterations(self, n_images: int) -> int:
        if self.iterations is not None:
            return int(self.iterations)
        return max(1, math.ceil(self.epochs * math.ceil(n_images / self.batch_size)))

    def semantic(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _NON_SEMANTIC}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown pretraining option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def cache_key(arch: str, ds: FewShotDataset, config: PretrainConfig) -> str:
    blob = json.dumps(
        {"arch": arch, "dataset": dataset_fingerprint(ds), "config": config.semantic()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def checkpoint_path(arch: str, ds: FewShotDataset, config: PretrainConfig, out: str | Path) -> Path:
    """`out` itself when it names a .pt file, else a cache file name inside the folder `out`."""
    out = Path(out)
    if out.suffix == ".pt":
        return out
    fp = dataset_fingerprint(ds)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{fp['name']}-{fp['split']}")
    return out / f"pretrain-{arch}-{tag}-{cache_key(arch, ds, config)}.pt"


def rotate_batch(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i by k[i] * 90 degrees (square images)."""
    out = x.clone()
    for r in range(1, 4):
        m = k == r
        if bool(m.any()):
            out[m] = torch.rot90(x[m], r, dims=(2, 3))
    return out


def preload(ds: FewShotDataset, size: int, max_per_class: int | None = None, seed: int = 0):
    """All (or up to max_per_class per class) images as a uint8 (N,3,S,S) tensor + labels."""
    import numpy as np

    from tinyshot.data.transforms import images_to_tensor

    idx = np.arange(len(ds))
    if max_per_class is not None:
        rng = np.random.default_rng(seed)
        idx = np.sort(
            np.concatenate(
                [rng.permutation(ds.indices_of(c))[:max_per_class] for c in range(ds.num_classes)]
            )
        )
    if len(idx) == 0:
        raise DataError(f"{ds.name}/{ds.split}: no images to pretrain on")
    data = torch.empty(len(idx), 3, size, size, dtype=torch.uint8)
    chunk = 256
    for s in progress(
        range(0, len(idx), chunk), desc="loading images", total=math.ceil(len(idx) / chunk)
    ):
        x = images_to_tensor(ds.load_images(idx[s : s + chunk]), size)
        data[s : s + len(x)] = (x * 255.0).round_().to(torch.uint8)
    return data, torch.from_numpy(ds.labels[idx].astype("int64"))


def _rotation_head(dim: int) -> nn.Module:
    hidden = min(dim, 256)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4))


def resume_state(
    ckpt: Path, student: Student, meta: dict[str, Any], what: str
) -> tuple[dict[str, Any] | None, bool]:
    """(the checkpoint to resume from, or None; whether it is finished, `student` then holding
    its weights). A checkpoint of another architecture, config or dataset is refused."""
    from tinyshot.utils.checkpoint import load_checkpoint

    if not ckpt.is_file():
        return None, False
    state = load_checkpoint(ckpt, expect={"arch": meta["arch"], "num_classes": meta["num_classes"]})
    check_resume_config(state["meta"].get("config", {}), meta["config"], ckpt)
    if state["meta"].get("dataset") != meta["dataset"]:
        raise ModelError(
            f"{ckpt}: trained on {state['meta'].get('dataset')}, not on {meta['dataset']}"
        )
    if not state["extra"].get("done"):
        return state, False
    student.load_state_dict(state["model"])
    log.info("%s: reusing finished checkpoint %s", what, ckpt)
    return state, True


def pretrain_student(
    arch: str,
    base_dataset: FewShotDataset,
    config: PretrainConfig,
    out: str | Path,
    stop_after: int | None = None,
) -> Student:
    """Pretrain (or load the cached result); logs to the checkpoint folder's log.txt."""
    from tinyshot.utils.logging import log_to

    with log_to(checkpoint_path(arch.lower(), base_dataset, config, out).parent):
        return _pretrain_student(arch, base_dataset, config, out, stop_after)


def _pretrain_student(
    arch: str,
    base_dataset: FewShotDataset,
    config: PretrainConfig,
    out: str | Path,
    stop_after: int | None = None,
) -> Student:
    """Pretrain (or load the cached result); returns the student with its base-class head.

    `out` is a folder (the checkpoint gets a name keyed on arch + dataset + config) or a .pt path.
    `stop_after` ends this call after that many iterations with a checkpoint (time-boxed chunks).
    """
    from tinyshot.data.augment import augment_batch
    from tinyshot.utils.checkpoint import restore, save_checkpoint
    from tinyshot.utils.device import resolve_device
    from tinyshot.utils.seed import derive_seed, torch_generator

    config.validate()
    arch = arch.lower()
    ckpt = checkpoint_path(arch, base_dataset, config, out)
    n_cls = base_dataset.num_classes
    with torch.random.fork_rng(devices=[]):  # same seed -> same initial weights
        torch.manual_seed(derive_seed(config.seed, "init", arch) % 2**63)
        student = build_student(arch, n_cls, config.input_size, config.in_channels)
        rot_head = _rotation_head(student.feature_dim)
    meta = student.meta(
        class_names=list(base_dataset.class_names),
        config=config.semantic(),
        dataset=dataset_fingerprint(base_dataset),
        stage="pretrain",
    )
    state, finished = resume_state(ckpt, student, meta, "pretraining")
    if finished:
        return student.eval()

    device = resolve_device(config.device)
    data, labels = preload(base_dataset, config.input_size, config.max_per_class, config.seed)
    total = config.total_iterations(len(data))
    student.to(device).train()
    rot_head.to(device).train()
    params = list(student.parameters()) + list(rot_head.parameters())
    opt = torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )
    decay_at = int(config.lr_decay_at * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.1 if it >= decay_at else 1.0)
    gen = torch_generator(derive_seed(config.seed, "pretrain", arch))
    both = nn.ModuleDict({"student": student, "rot_head": rot_head})
    step, history = 0, []
    if state is not None:
        step = restore(
            state, model=student, optimizer=opt, scheduler=sched, generators={"batch": gen}
        )
        rot_head.load_state_dict(state["extra"]["rot_head"])
        history = list(state["extra"].get("history", []))
        log.info("pretraining: resumed from %s at iteration %d/%d", ckpt, step, total)
    log.info(
        "pretraining %s on %s/%s (%d images, %d classes, %d px): %d iterations, batch %d, rotation weight %g",
        arch,
        base_dataset.name,
        base_dataset.split,
        len(data),
        n_cls,
        config.input_size,
        total,
        config.batch_size,
        config.rotation_weight,
    )
    end = total if stop_after is None else min(total, step + stop_after)
    sums = {"loss": 0.0, "ce": 0.0, "rot": 0.0, "acc": 0.0, "rot_acc": 0.0}
    n_run, t0, b = 0, time.time(), config.batch_size
    start = step
    for step in progress(range(start, end), desc=f"pretrain {arch}", total=end - start):
        idx = torch.randint(len(data), (b,), generator=gen)
        x = data[idx].float().div_(255.0)
        if config.augment:
            x = augment_batch(x, gen)
        y = labels[idx].to(device)
        if config.rotation_weight > 0:
            k = torch.randint(4, (b,), generator=gen)
            x = torch.cat([x, rotate_batch(x, k)])
        feats = student.features(x.to(device))
        logits = student.head(feats[:b])
        ce = F.cross_entropy(logits, y)
        loss = ce
        if config.rotation_weight > 0:
            k = k.to(device)
            rot_logits = rot_head(feats[b:])
            rot = F.cross_entropy(rot_logits, k)
            loss = ce + config.rotation_weight * rot
            sums["rot"] += rot.item()
            sums["rot_acc"] += (rot_logits.argmax(1) == k).float().mean().item()
        check_finite(loss, both, step, ckpt, f"pretraining {arch}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        sums["loss"] += loss.item()
        sums["ce"] += ce.item()
        sums["acc"] += (logits.argmax(1) == y).float().mean().item()
        n_run += 1
        done = step + 1
        if done % config.log_every == 0 or done == end:
            rec = {
                "iteration": done,
                **{k: v / n_run for k, v in sums.items()},
                "lr": sched.get_last_lr()[0],
            }
            history.append(rec)
            log.info(
                "student pretraining on base classes: iteration %d/%d, loss %.4f (class %.4f), "
                "training accuracy %.1f%%, rotation accuracy %.1f%% (%.3f s/iteration)",
                done,
                total,
                rec["loss"],
                rec["ce"],
                100 * rec["acc"],
                100 * rec["rot_acc"],
                (time.time() - t0) / n_run,
            )
            sums = dict.fromkeys(sums, 0.0)
            n_run, t0 = 0, time.time()
        if done % config.checkpoint_every == 0 or done == end:
            check_finite(loss, both, step, ckpt, f"pretraining {arch}")
            save_checkpoint(
                ckpt,
                model=student,
                step=done,
                meta=meta,
                optimizer=opt,
                scheduler=sched,
                generators={"batch": gen},
                extra={
                    "rot_head": rot_head.state_dict(),
                    "history": history,
                    "done": done >= total,
                },
            )
    return student.eval()


def load_pretrained_backbone(student: Student, path: str | Path) -> Student:
    """Copy a pretrained backbone into `student` (its head is left as is); arch must match."""
    from tinyshot.utils.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    meta = state["meta"]
    if meta.get("arch") != student.arch:
        raise ModelError(
            f"{path}: checkpoint holds a {meta.get('arch')!r} network, the student is {student.arch!r}"
        )
    if int(meta.get("in_channels", 3)) != student.in_channels:
        raise ModelError(
            f"{path}: backbone has {meta.get('in_channels')} input channels, the student {student.in_channels}"
        )
    sd = {k[len("backbone.") :]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    try:
        student.backbone.load_state_dict(sd)
    except RuntimeError as e:
        raise ModelError(f"{path}: backbone weights do not fit {student.arch} ({e})") from e
    return student


def pretrained_history(path: str | Path) -> list[dict[str, float]]:
    from tinyshot.utils.checkpoint import load_checkpoint

    return list(load_checkpoint(path)["extra"].get("history", []))
