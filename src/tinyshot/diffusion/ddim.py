"""DDIM with per-sample schedules: sampling, inversion and classifier-free guidance.

The timesteps and alphas come from diffusers' DDIMScheduler (`set_timesteps`). The update
itself is written here, element-wise per sample, because batched generation mixes samples
that start at different steps (DA-Fusion) and NTI differentiates through it. `ddim_move`
performs exactly the arithmetic of `DDIMScheduler.step` (eta = 0) with the model's own
scheduler config (prediction type, clip_sample / clip_sample_range, dynamic thresholding),
and is tested to match it bit for bit. Latents stay fp32 whatever the UNet dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tinyshot.diffusion.model import DiffusionModel, make_ddim_scheduler
from tinyshot.errors import ModelError


@dataclass(frozen=True)
class X0Rule:
    """How a scheduler turns a model output into (x0, eps) and bounds x0: the fields of
    DDIMScheduler's config that step() reads. The default is plain unclipped epsilon."""

    prediction_type: str = "epsilon"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    @classmethod
    def from_config(cls, config: Any) -> X0Rule:
        get = config.get if hasattr(config, "get") else lambda k, d: getattr(config, k, d)
        return cls(
            prediction_type=str(get("prediction_type", "epsilon")),
            clip_sample=bool(get("clip_sample", False)),
            clip_sample_range=float(get("clip_sample_range", 1.0)),
            thresholding=bool(get("thresholding", False)),
            dynamic_thresholding_ratio=float(get("dynamic_thresholding_ratio", 0.995)),
            sample_max_value=float(get("sample_max_value", 1.0)),
        )

    @property
    def bounds_x0(self) -> bool:
        return self.clip_sample or self.thresholding

    def unbounded(self) -> X0Rule:
        """The same prediction type without clipping or thresholding."""
        return replace(self, clip_sample=False, thresholding=False)

    def bound(self, x0: torch.Tensor) -> torch.Tensor:
        """DDIMScheduler.step's step 4: dynamic thresholding, else clipping, else nothing."""
        if self.thresholding:
            return _threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0


def _threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding exactly as diffusers' `_threshold_sample` computes it."""
    b, c, *rest = x0.shape
    flat = x0.reshape(b, c * int(torch.tensor(rest).prod()))
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(b, c, *rest)


@dataclass(frozen=True)
class DDIMSchedule:
    """Step i moves a latent from timestep `timesteps[i]` (alpha[i]) to alpha_prev[i];
    `rule` is the model's own x0 rule (prediction type, clipping), used by every sampler."""

    timesteps: torch.Tensor
    alpha: torch.Tensor
    alpha_prev: torch.Tensor
    rule: X0Rule = field(default_factory=X0Rule)

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])


def resolve_spacing(model: DiffusionModel | Any, spacing: str | None) -> str:
    """None -> "trailing", or "leading" where alpha_bar(T) ~ 0 makes t = T unusable.

    `model` is a DiffusionModel or a diffusers scheduler: the generator's own sampler
    (`tinyshot fidelity`) must resolve spacing exactly as the pipeline does."""
    if spacing is not None:
        return spacing
    sched = getattr(model, "scheduler", model)
    last = float(sched.alphas_cumprod[-1])
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
    rule = X0Rule.from_config(sched.config)
    return DDIMSchedule(timesteps=ts, alpha=alpha, alpha_prev=alpha_prev, rule=rule)


def _per_sample(a: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=torch.float32, device=z.device)
    return a.reshape(-1, *([1] * (z.ndim - 1))) if a.ndim else a


def ddim_move(
    z: torch.Tensor,
    eps: torch.Tensor,
    a_from: torch.Tensor | float,
    a_to: torch.Tensor | float,
    rule: X0Rule | None = None,
) -> torch.Tensor:
    """Deterministic DDIM update from noise level a_from to a_to (either direction).

    Sampling: a_from = alpha[i], a_to = alpha_prev[i]. Inversion swaps them. `eps` is the
    model output (noise, v or x0 as `rule.prediction_type` says); `rule` also clips or
    thresholds the predicted x0 as the scheduler config asks (None: plain epsilon).
    """
    rule = rule or _PLAIN
    a = _per_sample(a_from, z)
    ap = _per_sample(a_to, z)
    beta = 1 - a
    if rule.prediction_type == "epsilon":
        x0 = (z - beta ** (0.5) * eps) / a ** (0.5)
        e = eps
    elif rule.prediction_type == "v_prediction":
        x0 = (a**0.5) * z - (beta**0.5) * eps
        e = (a**0.5) * eps + (beta**0.5) * z
    elif rule.prediction_type == "sample":
        x0 = eps
        e = (z - a ** (0.5) * x0) / beta ** (0.5)
    else:
        raise ModelError(
            f"scheduler prediction_type {rule.prediction_type!r} is not supported "
            "(epsilon, v_prediction or sample)"
        )
    x0 = rule.bound(x0)
    return ap ** (0.5) * x0 + (1 - ap) ** (0.5) * e


_PLAIN = X0Rule()


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
    model: DiffusionModel,
    z0: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
    clip: bool = False,
) -> torch.Tensor:
    """Unguided DDIM inversion. Returns the trajectory (S+1, B, ...): [0] = z_T, [S] = z0.

    As in Mokady et al., the noise for step i is predicted at the less noisy latent. The
    model's clipping/thresholding applies only with clip=True: unclipped inversion keeps
    the exact inverse of the unclipped step (docs/generator.md, "Clipping" has the numbers).
    """
    s = schedule.steps
    rule = schedule.rule if clip else schedule.rule.unbounded()
    traj = [z0.float()]
    z = z0.float()
    for i in reversed(range(s)):
        eps = model.eps(z, schedule.timesteps[i], cond)
        z = ddim_move(z, eps, schedule.alpha_prev[i], schedule.alpha[i], rule)
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
    embeddings of step i for the given batch rows; sample b only runs steps >= start[b].
    Each step applies the model's own x0 rule (schedule.rule: prediction type, clipping)."""
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
            z = ddim_move(z, eps, schedule.alpha[i], schedule.alpha_prev[i], schedule.rule)
        else:
            r = rows.to(z.device)
            zr = z[r]
            eps = cfg_eps(model, zr, t, uncond_at(i, rows), cond[r], guidance)
            z[r] = ddim_move(zr, eps, schedule.alpha[i], schedule.alpha_prev[i], schedule.rule)
        if callback is not None:
            callback(i)
    return z
