"""Self-supervised (SimCLR) pretraining of a small backbone on unlabelled images.

Why: P>M>F's teacher starts from DINO, a backbone self-supervised on ImageNet, whose images
include the few-shot novel classes without their labels. The offline world's analogue is a
backbone trained without labels on the images a world's generator saw (for Fashion-MNIST: the
train split minus the held-out novel pool). It knows footwear at 28 px, which the ImageNet
members and the base-class student do not, and joins the teacher as a frozen member
(`student:<checkpoint>`: the checkpoint is a Student with a dummy one-class head).

Loss: NT-Xent (Chen et al., 2020) on two augmented views per image through a 2-layer
projection head, which is thrown away; the backbone's features are the member's. Adam with a
cosine schedule. The checkpoint is written every `checkpoint_every` iterations with optimizer,
scheduler, head and RNG states; a rerun resumes bit-exactly and a finished one is loaded.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinyshot.data.base import FewShotDataset
from tinyshot.distill.meta_train import check_finite, dataset_fingerprint
from tinyshot.errors import ConfigError
from tinyshot.models.students import Student, build_student
from tinyshot.utils.logging import get_logger, progress

log = get_logger("ssl")
_NON_SEMANTIC = {"checkpoint_every", "log_every"}


@dataclass
class SSLConfig:
    iterations: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.2
    projection_dim: int = 128
    input_size: int = 32
    min_scale: float = 0.35  # random-resized-crop area range [min_scale, 1]
    jitter: float = 0.4  # brightness and contrast factors in [1 - jitter, 1 + jitter]
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 50

    def validate(self) -> None:
        for name in ("iterations", "batch_size", "projection_dim", "input_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ssl pretraining: {name} must be >= 1")
        if self.batch_size < 2:
            raise ConfigError("ssl pretraining: batch_size must be >= 2 (negatives)")
        if not 0.0 < self.min_scale <= 1.0:
            raise ConfigError("ssl pretraining: min_scale must be in (0, 1]")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("ssl pretraining: temperature and lr must be > 0")

    def semantic(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _NON_SEMANTIC}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSLConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def two_views(x: torch.Tensor, gen: torch.Generator, config: SSLConfig) -> torch.Tensor:
    """(2B,3,H,W): two random-resized-crop + flip + brightness/contrast views of each image."""
    b = len(x)
    xx = torch.cat([x, x])
    n = 2 * b

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    area = u(config.min_scale, 1.0)
    log_ratio = u(math.log(3 / 4), math.log(4 / 3))
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx = (2 * torch.rand(n, generator=gen) - 1) * (1 - sx)
    ty = (2 * torch.rand(n, generator=gen) - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(xx.shape), align_corners=False)
    out = F.grid_sample(xx, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    bright = u(1 - config.jitter, 1 + config.jitter)[:, None, None, None]
    contrast = u(1 - config.jitter, 1 + config.jitter)[:, None, None, None]
    out = out * bright
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean).clamp(0, 1)


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for z = (2B, d): rows i and i + B are the positive pair."""
    z = F.normalize(z, dim=1)
    n = len(z)
    b = n // 2
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(b, n), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


def _projection_head(dim: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


def ssl_pretrain(
    arch: str,
    dataset: FewShotDataset,
    config: SSLConfig,
    out: str | Path,
    stop_after: int | None = None,
) -> Student:
    """Train (or resume, or load finished) a backbone on `dataset`'s images, labels unused.

    `out` is the checkpoint path; `stop_after` ends this call after that many iterations with
    a checkpoint (time-boxed chunks).
    """
    from tinyshot.distill.pretrain_student import preload, resume_state
    from tinyshot.utils.checkpoint import restore, save_checkpoint
    from tinyshot.utils.seed import derive_seed, torch_generator

    config.validate()
    arch = arch.lower()
    ckpt = Path(out)
    with torch.random.fork_rng(devices=[]):  # same seed -> same initial weights
        torch.manual_seed(derive_seed(config.seed, "ssl-init", arch) % 2**63)
        student = build_student(arch, 1, config.input_size)
        head = _projection_head(student.feature_dim, config.projection_dim)
    meta = student.meta(
        config=config.semantic(), dataset=dataset_fingerprint(dataset), stage="ssl-pretrain"
    )
    state, finished = resume_state(ckpt, student, meta, "ssl pretraining")
    if finished:
        return student.eval()

    data, _ = preload(dataset, config.input_size)
    student.train()
    head.train()
    params = list(student.backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.iterations
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
    )
    gen = torch_generator(derive_seed(config.seed, "ssl", arch))
    both = nn.ModuleDict({"student": student, "head": head})
    step, history = 0, []
    if state is not None:
        step = restore(
            state, model=student, optimizer=opt, scheduler=sched, generators={"batch": gen}
        )
        head.load_state_dict(state["extra"]["head"])
        history = list(state["extra"].get("history", []))
        log.info("ssl pretraining: resumed from %s at iteration %d/%d", ckpt, step, total)
    log.info(
        "ssl pretraining %s on %s/%s (%d unlabelled images, %d px): %d iterations, batch %d",
        arch, dataset.name, dataset.split, len(data), config.input_size, total, config.batch_size,
    )  # fmt: skip
    end = total if stop_after is None else min(total, step + stop_after)
    run_loss, run_acc, n_run, t0, b = 0.0, 0.0, 0, time.time(), config.batch_size
    start = step
    for step in progress(range(start, end), desc=f"ssl {arch}", total=end - start):
        idx = torch.randint(len(data), (b,), generator=gen)
        views = two_views(data[idx].float().div_(255.0), gen, config)
        z = head(student.features(views))
        loss = nt_xent(z, config.temperature)
        check_finite(loss, both, step, ckpt, f"ssl pretraining {arch}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # how often a view's nearest other view is its own pair
            zn = F.normalize(z.detach(), dim=1)
            sim = (zn @ zn.t()).fill_diagonal_(-2.0)
            pair = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
            run_acc += (sim.argmax(1) == pair).float().mean().item()
        run_loss += loss.item()
        n_run += 1
        done = step + 1
        if done % config.log_every == 0 or done == end:
            rec = {"iteration": done, "loss": run_loss / n_run, "pair_acc": run_acc / n_run}
            history.append(rec)
            log.info(
                "ssl pretraining: iteration %d/%d, NT-Xent %.4f, positive found %.1f%% "
                "(%.3f s/iteration)",
                done, total, rec["loss"], 100 * rec["pair_acc"], (time.time() - t0) / n_run,
            )  # fmt: skip
            run_loss, run_acc, n_run, t0 = 0.0, 0.0, 0, time.time()
        if done % config.checkpoint_every == 0 or done == end:
            save_checkpoint(
                ckpt,
                model=student,
                step=done,
                meta=meta,
                optimizer=opt,
                scheduler=sched,
                generators={"batch": gen},
                extra={"head": head.state_dict(), "history": history, "done": done >= total},
            )
    return student.eval()
