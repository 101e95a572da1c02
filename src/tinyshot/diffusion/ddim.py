"""DDIM with per-sample schedules: sampling, inversion and classifier-free guidance.

The timesteps and alphas come from diffusers' DDIMScheduler (`set_timesteps`). The update
itself is written here, element-wise per sample, because batched generation mixes samples
that start at different steps (DA-Fusion) and NTI differentiates through it. `ddim_move`
performs exactly the arithmetic of `DDIMScheduler.step` (eta = 0), and is tested to match it
bit for bit. Latents stay fp32 whatever the UNet dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinyshot.diffusion.model import DiffusionModel, make_ddim_scheduler


@dataclass(frozen=True)
class DDIMSchedule:
    """Step i moves a latent from timestep `timesteps[i]` (alpha[i]) to alpha_prev[i]."""

    timesteps: torch.Tensor
    alpha: torch.Tensor
    alpha_prev: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])


def resolve_spacing(model: DiffusionModel, spacing: str | None) -> str:
    """None -> "trailing", or "leading" where alpha_bar(T) ~ 0 makes t = T unusable."""
    if spacing is not None:
        return spacing
    last = float(model.scheduler.alphas_cumprod[-1])
    return "trailing" if last >= 1e-4 else "leading"


def make_schedule(
    model: DiffusionModel, num_inference_steps: int, timestep_spacing: str | None = None
) -> DDIMSchedule:
    """Timesteps and alphas exactly as DDIMScheduler.set_timesteps/step would use them."""
    spacing = resolve_spacing(model, timestep_spacing)
    sched = make_ddim_scheduler(dict(model.scheduler.config), spacing)
    sched.set_timesteps(num_inference_steps)
    ts = sched.timesteps.long()
    prev = ts - sched.config.num_train_timesteps // sched.num_inference_steps
    ac = sched.alphas_cumprod.float()
    alpha = ac[ts]
    alpha_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], sched.final_alpha_cumprod.float())
    return DDIMSchedule(timesteps=ts, alpha=alpha, alpha_prev=alpha_prev)


def _per_sample(a: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=torch.float32, device=z.device)
    return a.reshape(-1, *([1] * (z.ndim - 1))) if a.ndim else a


def ddim_move(
    z: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor | float, a_to: torch.Tensor | float
) -> torch.Tensor:
    """Deterministic DDIM update from noise level a_from to a_to (either direction).

    Sampling: a_from = alpha[i], a_to = alpha_prev[i]. Inversion swaps them.
    """
    a = _per_sample(a_from, z)
    ap = _per_sample(a_to, z)
    beta = 1 - a
    x0 = (z - beta ** (0.5) * eps) / a ** (0.5)
    return ap ** (0.5) * x0 + (1 - ap) ** (0.5) * eps


def cfg_eps(
    model: DiffusionModel,
    z: torch.Tensor,
    t: torch.Tensor,
    uncond: torch.Tensor,
    cond: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Eq. 2 with per-sample unconditional embeddings: one UNet call on [uncond; cond]."""
    if guidance == 1.0:
        return model.eps(z, t, cond)
    if t.ndim == 0:
        t = t.expand(z.shape[0])
    out = model.eps(torch.cat([z, z]), torch.cat([t, t]), torch.cat([uncond, cond]))
    e_u, e_c = out.chunk(2)
    return e_u + guidance * (e_c - e_u)


@torch.no_grad()
def ddim_invert(
    model: DiffusionModel, z0: torch.Tensor, cond: torch.Tensor, schedule: DDIMSchedule
) -> torch.Tensor:
    """Unguided DDIM inversion. Returns the trajectory (S+1, B, ...): [0] = z_T, [S] = z0.

    As in Mokady et al., the noise for step i is predicted at the less noisy latent.
    """
    s = schedule.steps
    traj = [z0.float()]
    z = z0.float()
    for i in reversed(range(s)):
        eps = model.eps(z, schedule.timesteps[i], cond)
        z = ddim_move(z, eps, schedule.alpha_prev[i], schedule.alpha[i])
        traj.append(z)
    return torch.stack(traj[::-1])


UncondFn = Callable[[int, torch.Tensor], torch.Tensor]


@torch.no_grad()
def ddim_sample(
    model: DiffusionModel,
    z: torch.Tensor,
    cond: torch.Tensor,
    uncond_at: UncondFn,
    schedule: DDIMSchedule,
    guidance: float,
    start: torch.Tensor | None = None,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Guided DDIM sampling of a batch. uncond_at(i, rows) gives the (len(rows),77,D) null
    embeddings of step i for the given batch rows; sample b only runs steps >= start[b]."""
    z = z.float().clone()
    b = z.shape[0]
    if start is None:
        start = torch.zeros(b, dtype=torch.long)
    start = start.cpu()
    for i in range(int(start.min()), schedule.steps):
        rows = torch.nonzero(start <= i).flatten()
        t = schedule.timesteps[i]
        if rows.numel() == b:
            eps = cfg_eps(model, z, t, uncond_at(i, rows), cond, guidance)
            z = ddim_move(z, eps, schedule.alpha[i], schedule.alpha_prev[i])
        else:
            r = rows.to(z.device)
            zr = z[r]
            eps = cfg_eps(model, zr, t, uncond_at(i, rows), cond[r], guidance)
            z[r] = ddim_move(zr, eps, schedule.alpha[i], schedule.alpha_prev[i])
        if callback is not None:
            callback(i)
    return z
