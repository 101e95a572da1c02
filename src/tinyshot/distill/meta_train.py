"""Episodic meta-training of the ProtoNet teacher on the base classes (P>M>F stage 3).

Each step samples an N-way K-shot episode with Q queries per class from the base classes,
computes prototypes from the support images and minimises cross-entropy of the query logits.
Schedule and episodes are the TINT paper's (App. B.1, after P>M>F): a cosine schedule over 100
epochs of 400 episodes, 5-way 5-shot 15-query, Adam (beta1 0.9), weight decay 1e-6.

Two parameter groups with their own learning rates:
- the ProtoNet head (`scale`, `bias`): `lr`, default 3e-3, the paper's Adam lr;
- the backbone: `backbone_lr`, default 1e-5. The paper gives one lr, 3e-3, without saying
  which parameters it moves; P>M>F's README commands meta-train the whole DINO ViT at 5e-5
  (CIFAR-FS, mini-ImageNet; 5e-4 on Meta-Dataset) for 100 epochs (their code's optimizer is
  reported as SGD with momentum, warm-up and cosine decay; not re-checked here). Adam moves every
  weight by about its lr per step whatever the gradient's size, so 3e-3 rewrites a ViT whose
  weights are ~0.02 within a few episodes (tests/models/test_meta_train.py: after 10
  episodes the features of a small ViT keep a centred cosine similarity of 0.09 to the
  pretrained ones at 3e-3, 0.9998 at 1e-5). 1e-5 is a conservative choice that keeps
  pretrained features, not a tuned value; a random-init backbone wants `backbone_lr=lr`.

Episodes are drawn from a seed derived from (config.seed, step), so they do not depend on
what ran before; together with the RNG, optimizer and scheduler states saved in the checkpoint
this makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.data.base import FewShotDataset
from tinyshot.errors import ConfigError, TrainingError
from tinyshot.models.teacher import ProtoNetTeacher
from tinyshot.utils.logging import get_logger, log_to, progress
from tinyshot.utils.seed import derive_seed

log = get_logger("meta_train")
CHECKPOINT_NAME = "teacher.pt"
# Fields that do not change the result: a resumed run may change them freely.
_NON_SEMANTIC = {"checkpoint_every", "log_every", "device"}
HEAD_LR = 3e-3  # the TINT paper's Adam lr (App. B.1)
BACKBONE_LR = 1e-5  # far below it, so pretrained (DINO) features survive; see the module doc


@dataclass
class MetaTrainConfig:
    episodes_per_epoch: int = 400
    epochs: int = 100
    ways: int = 5
    shots: int = 5
    queries: int = 15
    lr: float = HEAD_LR  # the ProtoNet head (scale, bias)
    backbone_lr: float = BACKBONE_LR  # the backbone (0 freezes it); see the module doc
    weight_decay: float = 1e-6  # the TINT paper (appendix B.1)
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    schedule: str = "cosine"  # "cosine" (per episode, to 0) or "constant"
    # Keep a pretrained backbone in eval mode while its weights train: BatchNorm uses its
    # pretrained statistics and dropout/drop-connect are off. None = yes for pretrained
    # backbones, no for random-init ones. (A ViT has no BatchNorm and no dropout by default,
    # so for the paper's DINO backbone this changes nothing.)
    freeze_backbone_stats: bool | None = None
    seed: int = 0
    checkpoint_every: int = 100  # episodes
    log_every: int = 20
    device: str = "auto"

    @property
    def total_episodes(self) -> int:
        return self.episodes_per_epoch * self.epochs

    def validate(self) -> None:
        for name in (
            "episodes_per_epoch",
            "epochs",
            "ways",
            "shots",
            "queries",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"meta-training: {name} must be >= 1, got {getattr(self, name)}")
        if self.ways < 2:
            raise ConfigError(f"meta-training: ways must be >= 2, got {self.ways}")
        if self.backbone_lr is None:  # configs written before the two groups had defaults
            raise ConfigError(
                f"meta-training: backbone_lr must be a number (default {BACKBONE_LR:g}; "
                "the head's lr is `lr`)"
            )
        if self.lr <= 0 or self.backbone_lr < 0:
            raise ConfigError(
                "meta-training: lr must be positive and backbone_lr non-negative, got "
                f"{self.lr:g} and {self.backbone_lr:g}"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"meta-training: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(
                f"meta-training: schedule must be 'cosine' or 'constant', got {self.schedule!r}"
            )

    def semantic(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _NON_SEMANTIC}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown meta-training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# ---------------------------------------------------------------- shared training helpers


def lr_lambda(schedule: str, total: int):
    """Multiplier on the base lr at a given step (a picklable-free closure is fine: state is the step)."""
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return lambda step: 1.0


def check_finite(loss: torch.Tensor, model: nn.Module, step: int, ckpt: Path, what: str) -> None:
    """Stop with a clear message on NaN/inf; the checkpoint on disk (the last good one) is untouched."""
    bad = not bool(torch.isfinite(loss).all())
    if not bad:
        bad = any(not bool(torch.isfinite(p).all()) for p in model.parameters())
    if bad:
        kept = (
            f"the last good checkpoint {ckpt} is kept"
            if ckpt.is_file()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"{what}: loss or weights became NaN/inf at step {step} (loss={loss.item():.4g}); "
            f"{kept}. Lower the learning rate or check the data."
        )


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], ckpt: Path) -> None:
    diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"{ckpt}: this run folder was started with a different config ({changes}); "
            "use a new run folder or the original options"
        )


def dataset_fingerprint(ds: FewShotDataset) -> dict[str, Any]:
    return {
        "name": getattr(ds, "name", type(ds).__name__),
        "split": getattr(ds, "split", ""),
        "size": len(ds),
        "num_classes": ds.num_classes,
    }


# ---------------------------------------------------------------- episodes


def episode_indices(
    ds: FewShotDataset, ways: int, shots: int, queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(support idx, support labels, query idx, query labels) of one seeded episode."""
    from tinyshot.data.sampler import sample_episode

    ep = sample_episode(ds, ways, shots, queries, seed)
    s_idx, s_lab = ep.support_indices(ds)
    q_idx, q_lab = ep.query_indices(ds)
    return s_idx, s_lab, q_idx, q_lab


def _load(ds: FewShotDataset, idx: np.ndarray, size: int) -> torch.Tensor:
    from tinyshot.data.transforms import images_to_tensor

    return images_to_tensor(ds.load_images(idx), size)


# ---------------------------------------------------------------- training


def build_optimizer(teacher: ProtoNetTeacher, config: MetaTrainConfig) -> torch.optim.Optimizer:
    """The optimizer with two groups: "head" (scale, bias) at `lr`, "backbone" at `backbone_lr`
    (left out when the backbone has no trainable parameters)."""
    head = [teacher.scale, teacher.bias]
    body = [
        p for n, p in teacher.named_parameters() if n not in ("scale", "bias") and p.requires_grad
    ]
    groups: list[dict[str, Any]] = [{"name": "head", "params": head, "lr": config.lr}]
    if body:
        groups.append({"name": "backbone", "params": body, "lr": config.backbone_lr})
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=config.weight_decay)


def meta_train_teacher(
    teacher: ProtoNetTeacher,
    base_dataset: FewShotDataset,
    config: MetaTrainConfig,
    run_dir: str | Path,
    stop_after: int | None = None,
) -> ProtoNetTeacher:
    """Meta-train in place; resumes from run_dir/teacher.pt. `stop_after` ends this call early
    after that many episodes (the checkpoint is written), e.g. to work in time-boxed chunks."""
    with log_to(run_dir):
        return _meta_train_teacher(teacher, base_dataset, config, run_dir, stop_after)


def _meta_train_teacher(
    teacher: ProtoNetTeacher,
    base_dataset: FewShotDataset,
    config: MetaTrainConfig,
    run_dir: str | Path,
    stop_after: int | None = None,
) -> ProtoNetTeacher:
    from tinyshot.utils.checkpoint import load_checkpoint, restore, save_checkpoint
    from tinyshot.utils.device import resolve_device
    from tinyshot.utils.io import write_json

    config.validate()
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT_NAME
    # Fails early, with the sampler's clear message, when the base classes are too small.
    episode_indices(base_dataset, config.ways, config.shots, config.queries, config.seed)
    device = resolve_device(config.device)
    teacher.to(device).train()
    opt = build_optimizer(teacher, config)
    total = config.total_episodes
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config.schedule, total))
    meta = teacher.meta(config=config.semantic(), dataset=dataset_fingerprint(base_dataset))

    step, history = 0, []
    if ckpt.is_file():
        state = load_checkpoint(ckpt, expect={"kind": "teacher", "arch": meta["arch"]})
        check_resume_config(state["meta"].get("config", {}), config.semantic(), ckpt)
        step = restore(state, model=teacher, optimizer=opt, scheduler=sched)
        history = list(state["extra"].get("history", []))
        log.info("meta-training: resumed from %s at episode %d/%d", ckpt, step, total)
        if step >= total:
            return teacher.eval()
    log.info(
        "meta-training %s teacher: %d episodes (%d-way %d-shot %d-query), %s, lr %g (head) "
        "%g (backbone), %s on %s",
        teacher.backbone.name,
        total,
        config.ways,
        config.shots,
        config.queries,
        config.optimizer,
        config.lr,
        config.backbone_lr,
        config.schedule,
        device,
    )
    end = total if stop_after is None else min(total, step + stop_after)
    size = teacher.input_size
    freeze = config.freeze_backbone_stats
    if freeze is None:
        freeze = bool(getattr(teacher.backbone, "pretrained", True))
    if freeze:
        teacher.backbone.eval()
    run_loss, run_acc, n_run, t0 = 0.0, 0.0, 0, time.time()
    start = step
    for step in progress(range(start, end), desc="meta-train", total=end - start):
        s_idx, s_lab, q_idx, q_lab = episode_indices(
            base_dataset,
            config.ways,
            config.shots,
            config.queries,
            derive_seed(config.seed, "episode", step),
        )
        support = _load(base_dataset, s_idx, size).to(device)
        query = _load(base_dataset, q_idx, size).to(device)
        qy = torch.from_numpy(q_lab).to(device)
        logits = teacher.logits_episode(support, torch.from_numpy(s_lab).to(device), query)
        loss = F.cross_entropy(logits, qy)
        check_finite(loss, teacher, step, ckpt, "meta-training")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += loss.item()
        run_acc += float((logits.argmax(1) == qy).float().mean())
        n_run += 1
        done = step + 1
        if done % config.log_every == 0 or done == end:
            rec = {
                "episode": done,
                "loss": run_loss / n_run,
                "acc": run_acc / n_run,
                "lr": sched.get_last_lr()[0],
                "backbone_lr": sched.get_last_lr()[-1],
            }
            history.append(rec)
            log.info(
                "episode %d/%d  loss %.4f  acc %.3f  lr %.2e  (%.2f s/episode)",
                done,
                total,
                rec["loss"],
                rec["acc"],
                rec["lr"],
                (time.time() - t0) / n_run,
            )
            run_loss, run_acc, n_run, t0 = 0.0, 0.0, 0, time.time()
        if done % config.checkpoint_every == 0 or done == end:
            check_finite(loss, teacher, step, ckpt, "meta-training")
            save_checkpoint(
                ckpt,
                model=teacher,
                step=done,
                meta=meta,
                optimizer=opt,
                scheduler=sched,
                extra={"history": history},
            )
    if end >= total:
        write_json(run_dir / "meta_train.json", {**meta, "episodes": total, "history": history})
    return teacher.eval()
