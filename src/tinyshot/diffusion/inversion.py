"""Null-text inversion (Mokady et al.) and negative-prompt inversion, batched over images.

NTI optimizes one unconditional embedding per timestep so that guided DDIM sampling retraces
the unguided inversion trajectory. All support images of an episode go through the UNet
together; each has its own loss, early stop and (frozen once stopped) embedding, so the
result per image equals a separate run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinyshot.diffusion.ddim import (
    DDIMSchedule,
    X0Rule,
    cfg_eps,
    ddim_invert,
    ddim_move,
    ddim_sample,
)
from tinyshot.diffusion.model import DiffusionModel
from tinyshot.diffusion.textual_inversion import LossScaler
from tinyshot.utils.device import to_device
from tinyshot.utils.logging import get_logger, progress

log = get_logger("diffusion.nti")


# Mokady et al.'s stop threshold grows by this much per timestep (`epsilon + i * 2e-5`).
EARLY_STOP_GROWTH = 2e-5


@dataclass
class InversionResult:
    z_T: torch.Tensor  # (B, C, h, w)
    null_embeddings: torch.Tensor  # (B, S, 77, D) for NTI, (B, 1, 77, D) for NPI
    recon_error: torch.Tensor  # (B,) MSE of the guided reconstruction vs z0, in latent space
    inner_steps: torch.Tensor  # (B,) optimizer steps taken (NTI), 0 for NPI
    reconstruction: torch.Tensor | None = None  # (B, C, h, w) the guided reconstruction of z0
    psnr_db: torch.Tensor | None = None  # (B,) image PSNR of `reconstruction` vs the support
    cfg_psnr_db: torch.Tensor | None = None  # (B,) the same for plain CFG from z_T (no NTI)


def _rule(schedule: DDIMSchedule, clip: bool) -> X0Rule:
    return schedule.rule if clip else schedule.rule.unbounded()


def null_text_inversion(
    model: DiffusionModel,
    z0: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    guidance: float = 7.5,
    inner_steps: int = 10,
    lr: float = 1e-2,
    lr_decay: bool = True,
    early_stop: float = 1e-5,
    show_progress: bool | None = None,
    clip_inversion: bool = False,
    clip_guided: bool = True,
) -> InversionResult:
    """cond: (B,77,D) per-image conditional embedding (its class token prompt).

    lr_decay follows Mokady et al.: lr * (1 - i / (2 S)) at step i of S (1e-2 -> 5e-3 for
    S=50), the schedule the paper cites. The inner loop is theirs too: loss, backward,
    optimizer step, then stop once an image's loss (before that step) is below
    early_stop + i * 2e-5, so every timestep gets at least one step. The guided steps apply
    the model's own x0 clipping (clip_guided) as the sampler does, so alpha = 0 generation
    retraces them; the unguided inversion does not (clip_inversion); docs/generator.md
    ("Clipping") has the measurements behind both defaults.
    """
    traj = ddim_invert(model, z0, cond, schedule, clip=clip_inversion)
    rule = _rule(schedule, clip_guided)
    b, s = z0.shape[0], schedule.steps
    u = model.empty_embedding().expand(b, -1, -1).clone()
    x = traj[0].clone()
    nulls = []
    taken = torch.zeros(b, dtype=torch.long)
    scaler = LossScaler.for_model(model)
    # The schedule on the device once: a scalar copied per use would wait for the device.
    dev = x.device
    steps_t = to_device(schedule.timesteps, dev)
    alpha, alpha_prev = to_device(schedule.alpha, dev), to_device(schedule.alpha_prev, dev)
    for i in progress(
        range(s),
        desc="null-text inversion",
        total=s,
        disable=None if show_progress is None else not show_progress,
    ):
        t = steps_t[i]
        target = traj[i + 1]
        with torch.no_grad():
            e_c = model.eps(x, t, cond)
        u = u.detach().clone().requires_grad_(True)
        step_lr = lr * (1.0 - i / (2.0 * s)) if lr_decay else lr
        opt = torch.optim.Adam([u], lr=step_lr)
        threshold = early_stop + i * EARLY_STOP_GROWTH
        # The early stop is decided on the host (it picks the images the UNet runs on): one
        # read of the stop mask per inner step, the only wait for the device in this loop
        # besides fp16's skip decision.
        done = torch.zeros(b, dtype=torch.bool)
        for _ in range(inner_steps):
            act = torch.nonzero(~done).flatten()
            if act.numel() == 0:
                break
            act_dev = to_device(act, dev)
            e_u = model.eps(x[act_dev], t, u[act_dev])
            eps = e_u + guidance * (e_c[act_dev] - e_u)
            pred = ddim_move(x[act_dev], eps, alpha[i], alpha_prev[i], rule)
            per = ((pred - target[act_dev]) ** 2).flatten(1).mean(1)
            stops = per.detach() < threshold
            # Images stopped earlier keep their embedding (Adam's momentum would move them).
            kept = u.detach().clone() if bool(done.any()) else None
            scaler.backward(per.sum(), opt)
            scaler.step(opt)
            if kept is not None:
                with torch.no_grad():
                    u.copy_(torch.where(to_device(done, dev)[:, None, None], kept, u))
            taken[act] += 1
            done[act[stops.cpu()]] = True
        u = u.detach()
        nulls.append(u.clone())
        with torch.no_grad():
            x = ddim_move(
                x,
                cfg_eps(model, x, t, u, cond, guidance),
                alpha[i],
                alpha_prev[i],
                rule,
            )
    err = ((x - traj[-1]) ** 2).flatten(1).mean(1)
    return InversionResult(
        z_T=traj[0],
        null_embeddings=torch.stack(nulls, 1),
        recon_error=err.cpu(),
        inner_steps=taken,
        reconstruction=x,
    )


@torch.no_grad()
def negative_prompt_inversion(
    model: DiffusionModel,
    z0: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    guidance: float = 7.5,
) -> InversionResult:
    """Miyake et al.: use the conditional embedding as the null embedding, no optimization.

    With u = v the guided prediction equals the conditional one, so sampling retraces the
    inversion up to the DDIM approximation error; one embedding serves every timestep.
    """
    traj = ddim_invert(model, z0, cond, schedule)
    x = traj[0].clone()
    for i in range(schedule.steps):
        eps = cfg_eps(model, x, schedule.timesteps[i], cond, cond, guidance)
        x = ddim_move(x, eps, schedule.alpha[i], schedule.alpha_prev[i], schedule.rule)
    err = ((x - traj[-1]) ** 2).flatten(1).mean(1)
    return InversionResult(
        z_T=traj[0],
        null_embeddings=cond.detach().float().unsqueeze(1).clone(),
        recon_error=err.cpu(),
        inner_steps=torch.zeros(z0.shape[0], dtype=torch.long),
        reconstruction=x,
    )


def psnr_db(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of images against targets, both (B,3,H,W) in [0, 1]."""
    mse = ((images.float() - targets.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_psnr(
    model: DiffusionModel,
    z0: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    guidance: float,
    result: InversionResult,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inversion PSNR, plain-CFG PSNR), (B,) each, in image space against decode(z0).

    The inversion's figure is its own guided reconstruction (what alpha = 0 generation
    gives); the plain-CFG one is a single guided pass from the same z_T with the empty-prompt
    null embedding, what generation would give without NTI. Their difference is what NTI
    buys; it costs S guided UNet calls, a fraction of NTI's.
    """
    if result.reconstruction is None:
        raise ValueError("the inversion result holds no reconstruction")
    empty = model.empty_embedding()
    plain = ddim_sample(
        model,
        result.z_T.to(model.device),
        cond,
        lambda i, r: empty.expand(len(r), -1, -1),
        schedule,
        guidance,
    )
    target = model.decode(z0)
    inv = psnr_db(model.decode(result.reconstruction), target)
    cfg = psnr_db(model.decode(plain), target)
    return inv.cpu(), cfg.cpu()


def measure_reconstruction(
    model: DiffusionModel,
    z0: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    guidance: float,
    result: InversionResult,
) -> InversionResult:
    """`result` with psnr_db and cfg_psnr_db filled in (see reconstruction_psnr)."""
    result.psnr_db, result.cfg_psnr_db = reconstruction_psnr(
        model, z0, cond, schedule, guidance, result
    )
    return result
