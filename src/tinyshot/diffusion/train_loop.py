"""The resumable step loop that textual inversion and LoRA training share.

Each step's loss stays on the device; losses are read (and checked) every LOSS_READ_EVERY
steps, at the log points, before a checkpoint and at the end, so a step never waits for the
device. A checkpoint is written every `every` steps or `seconds` seconds, whichever comes
first, and on an interrupt (Ctrl-C, SIGTERM) between two steps, never in the middle of an
optimizer update: a killed run resumes from the last step whose update was fully applied.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinyshot.errors import TrainingError
from tinyshot.utils.logging import progress

# Losses are read from the device every this many steps (and at log and checkpoint points).
LOSS_READ_EVERY = 10


def checkpoint_interval(total: int, every: int) -> int:
    """Steps between checkpoints: `every`, or 10% of the run when it is 0."""
    return every or max(1, math.ceil(total / 10))


@dataclass
class StepPlan:
    """What a loop runs: `desc` names it in logs and errors ("textual inversion")."""

    desc: str
    total: int
    start: int = 0
    checkpoint_every: int = 1  # steps
    checkpoint_seconds: float = 60.0
    loss_divisor: float = 1.0  # the progress bar shows loss / this (TI: per class)


def run_steps(
    plan: StepPlan,
    backward: Callable[[int], torch.Tensor],
    update: Callable[[int], None],
    save: Callable[[int], None] | None,
    device: torch.device,
    logger,
    show_progress: bool | None = None,
) -> torch.Tensor:
    """Run steps plan.start .. plan.total - 1: `backward(step)` computes the loss and its
    gradients and returns the (detached) loss, `update(step)` applies the optimizer step,
    `save(done)` writes a checkpoint after `done` steps (None: never). Returns the losses of
    the steps run (zeros before plan.start)."""
    total, start = plan.total, plan.start
    log_every = max(1, total // 10)
    saved, saved_at = start, time.monotonic()
    history = torch.zeros(total, device=device)
    read = start  # losses of steps [start, read) have been read and were finite
    recent: collections.deque[float] = collections.deque(maxlen=log_every)
    bar = progress(
        range(start, total),
        desc=plan.desc,
        total=total,
        initial=start,
        disable=None if show_progress is None else not show_progress,
        logger=logger,
    )

    def read_losses(upto: int) -> None:
        """Read the losses of steps [read, upto); a non-finite one ends the run."""
        nonlocal read
        if upto <= read:
            return
        values = history[read:upto].tolist()
        for k, v in enumerate(values):
            if not math.isfinite(v):
                raise TrainingError(f"{plan.desc} diverged at step {read + k} (loss {v})")
        recent.extend(v / plan.loss_divisor for v in values)
        read = upto
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")

    done = start  # steps whose update is fully applied to the parameters and optimizer state
    try:
        for step in bar:
            history[step] = backward(step)
            done = -1  # an interrupt inside the update would leave a half-applied step
            update(step)
            done = step + 1
            due = (
                done - saved >= plan.checkpoint_every
                or time.monotonic() - saved_at >= plan.checkpoint_seconds
            )
            do_save = save is not None and due and done < total
            if do_save or done % LOSS_READ_EVERY == 0 or done % log_every == 0:
                read_losses(done)
            if do_save:
                save(done)
                saved, saved_at = done, time.monotonic()
            if done % log_every == 0:
                logger.debug("%s step %d/%d loss %.5f", plan.desc, done, total, recent[-1])
    except KeyboardInterrupt:
        if save is not None and done > saved and done < total:
            try:
                read_losses(done)
            except TrainingError as e:
                logger.warning("%s: interrupted, nothing kept: %s", plan.desc, e)
                raise KeyboardInterrupt from None
            save(done)
            logger.info("%s: interrupted, step %d/%d kept", plan.desc, done, total)
        raise
    read_losses(total)
    return history
