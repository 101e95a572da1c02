"""Textual inversion of N classes at once: one new token per class, trained jointly.

The learned vectors live in their own (N, D) parameter and are injected into the token
embedding output by a forward hook, so the text encoder's weight matrix is never touched
by the optimizer (and AdamW's decay cannot drift other rows). Each class's loss is summed,
not averaged, over classes: token n gets exactly the gradient of a separate run on class n.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.model import DiffusionModel
from tinyshot.diffusion.train_loop import (  # noqa: F401  (LOSS_READ_EVERY: re-exported)
    LOSS_READ_EVERY,
    StepPlan,
    checkpoint_interval,
    run_steps,
)
from tinyshot.errors import TrainingError
from tinyshot.utils.device import to_device
from tinyshot.utils.io import atomic_write
from tinyshot.utils.logging import get_logger
from tinyshot.utils.seed import derive_seed, torch_generator

log = get_logger("diffusion.ti")


def placeholder_tokens(n: int) -> list[str]:
    return [f"<tinyshot-{i}>" for i in range(n)]


@contextlib.contextmanager
def injected_tokens(
    model: DiffusionModel, token_ids: list[int], vectors: torch.Tensor
) -> Iterator[None]:
    """While active, the embedding of token_ids[n] is vectors[n] (differentiably)."""
    emb = model.text_encoder.get_input_embeddings()
    ids = torch.tensor(token_ids, device=emb.weight.device)

    def hook(_module, inputs, output):
        # No early return for prompts without the tokens: testing for that would wait for the
        # device; where() leaves such rows exactly as they were.
        match = inputs[0][..., None] == ids  # (B, L, N)
        rep = match.to(vectors.dtype) @ vectors.to(output.device)
        return torch.where(match.any(-1, keepdim=True), rep.to(output.dtype), output)

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_token_prompts(
    model: DiffusionModel, template: str, tokens: list[str], vectors: torch.Tensor
) -> torch.Tensor:
    """(N,77,D) fp32 prompt embeddings of template.format(token_n) with token_n := vectors[n]."""
    ids = model.ensure_tokens(tokens)
    with injected_tokens(model, ids, vectors):
        return model.encode_text([template.format(t) for t in tokens])


def diffusion_loss(
    model: DiffusionModel,
    latents: torch.Tensor,
    cond: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Per-sample ||eps - eps(z_t; t, v)||^2 (mean over latent dims), Eq. 1; the target is
    the velocity or the clean latent for v_prediction / sample models, as they were trained."""
    zt = model.scheduler.add_noise(latents, noise, timesteps.to(latents.device))
    pred = model.eps(zt, timesteps.to(latents.device), cond)
    kind = model.scheduler.config.prediction_type
    if kind == "v_prediction":
        target = model.scheduler.get_velocity(latents, noise, timesteps.to(latents.device))
    else:
        target = latents if kind == "sample" else noise
    return ((pred - target) ** 2).flatten(1).mean(1)


def _draw(
    latents: list[torch.Tensor], per_class: int, cfg: SpecializeConfig, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support picks, timesteps and noise of one TI step (draw_step with TI's seeds)."""
    return draw_step(latents, per_class, (cfg.seed, "ti", step), cfg.t_min, cfg.t_max)


def draw_step(
    latents: list[torch.Tensor], per_class: int, key: tuple, t_min: int, t_max: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support picks, timesteps in [t_min, t_max) and noise of one step, `per_class` of each
    class, from seeds of (*key, class) alone: a resumed run draws what an uninterrupted one
    would, and a class draws the same whatever the classes after it (joint training equals
    separate runs)."""
    zs, ts, ns = [], [], []
    for c, z in enumerate(latents):
        g = torch_generator(derive_seed(*key, c))
        pick = torch.randint(len(z), (per_class,), generator=g)
        ts.append(torch.randint(t_min, t_max, (per_class,), generator=g))
        ns.append(torch.randn((per_class, *z.shape[1:]), generator=g))
        zs.append(z[to_device(pick, z.device)])
    return torch.cat(zs), torch.cat(ts), torch.cat(ns)


def loss_scale(model: DiffusionModel) -> float:
    """Initial loss scale: fp16 UNets need one so backward does not underflow; 1 otherwise."""
    return INITIAL_FP16_SCALE if model.dtype == torch.float16 else 1.0


# torch.amp.GradScaler's defaults. The gradients that underflow are the fp16 ones inside the
# UNet's backward (the TI vectors and NTI's null embeddings are fp32 leaves): near NTI's early
# stop the gradient reaching the UNet output is of order 1e-6 per element for SD's 4x64x64
# latents, below fp16's smallest normal (6.1e-5); products with small weights and activations
# inside the backward go lower, and at a scale of 1024 below fp16's smallest subnormal (6e-8).
INITIAL_FP16_SCALE = 2.0**16
GROWTH_INTERVAL = 2000


class LossScaler:
    """Dynamic loss scaling for the fp16 UNet's backward pass: torch.amp.GradScaler.

    backward() scales the loss, runs backward and unscales the gradients, so the optimizer sees
    the true ones and Adam's step does not depend on the scale; step() skips the optimizer
    step if a gradient is not finite and then updates the scale (halved after a skipped step,
    doubled after `growth_interval` good ones). Disabled (fp32, bf16: scale 1) it is a plain
    backward and step, unchecked, as before. Nothing here waits for the device except
    GradScaler's own skip decision in an enabled step(); `skipped` and state_dict() read it.
    """

    def __init__(
        self,
        scale: float = 1.0,
        growth_interval: int = GROWTH_INTERVAL,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.enabled = scale != 1.0
        self.grad_scaler = torch.amp.GradScaler(
            self.device.type,
            init_scale=float(scale),
            growth_interval=growth_interval,
            enabled=self.enabled,
        )
        self._skipped = torch.zeros((), dtype=torch.long, device=self.device)

    @classmethod
    def for_model(cls, model: DiffusionModel) -> LossScaler:
        return cls(loss_scale(model), device=model.device)

    @property
    def scale(self) -> float:
        return self.grad_scaler.get_scale() if self.enabled else 1.0

    @property
    def skipped(self) -> int:
        """Steps skipped for non-finite gradients so far (reads the device)."""
        return int(self._skipped.item()) if self.enabled else 0

    def backward(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Zero the gradients, backward(loss * scale), unscale them (true gradients)."""
        opt.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        if self.enabled:
            self.grad_scaler.unscale_(opt)
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                bad = torch.stack([~torch.isfinite(gr).all() for gr in grads]).any()
                self._skipped += bad.to(self._skipped.device)

    def step(self, opt: torch.optim.Optimizer) -> None:
        """opt.step() unless a gradient is not finite, then the scale update."""
        self.grad_scaler.step(opt)
        self.grad_scaler.update()

    def state_dict(self) -> dict[str, float | int]:
        return {**self.grad_scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, d: dict[str, float | int]) -> None:
        if "good_steps" in d:  # written by the scaler that did not unscale
            if float(d["scale"]) != 1.0:
                raise TrainingError(
                    "the TI checkpoint's optimizer state holds loss-scaled fp16 gradients "
                    "(written by an older tinyshot); delete it"
                )
            return
        self._skipped.fill_(int(d.get("skipped", 0)))
        if self.enabled and "scale" in d:
            self.grad_scaler.load_state_dict({k: v for k, v in d.items() if k != "skipped"})


def _optimizer(params: list[torch.Tensor], cfg: SpecializeConfig) -> torch.optim.Optimizer:
    if cfg.ti_optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.ti_lr, weight_decay=cfg.ti_weight_decay)
    return torch.optim.Adam(params, lr=cfg.ti_lr)


def checkpoint_every_steps(cfg: SpecializeConfig) -> int:
    """TI checkpoint interval in steps: cfg.ti_checkpoint_every, or 10% of the run if 0."""
    return checkpoint_interval(cfg.ti_steps, cfg.ti_checkpoint_every)


def train_tokens(
    model: DiffusionModel,
    latents: list[torch.Tensor],
    template: str,
    cfg: SpecializeConfig,
    state_path: Path | None = None,
    show_progress: bool | None = None,
) -> torch.Tensor:
    """Learn one token vector per class from its support latents; returns (N, D) fp32.

    A checkpoint (vectors, optimizer state, step, torch RNG state) is written to state_path
    every checkpoint_every_steps(cfg) steps or cfg.ti_checkpoint_seconds, whichever comes
    first, and when the run is interrupted (Ctrl-C, SIGTERM) between two steps; an existing one
    is resumed bit-exactly (each step's draws come from seeds of (seed, step, class) alone).
    """
    n = len(latents)
    tokens = placeholder_tokens(n)
    ids = model.ensure_tokens(tokens, cfg.init_token)
    init = model.token_init_vector(cfg.init_token)
    vectors = init.to(model.device).repeat(n, 1).requires_grad_(True)
    opt = _optimizer([vectors], cfg)
    scaler = LossScaler.for_model(model)
    start = 0
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location=model.device, weights_only=True)
        if tuple(state["vectors"].shape) != tuple(vectors.shape):
            raise TrainingError(f"{state_path}: TI checkpoint is for another episode; delete it")
        with torch.no_grad():
            vectors.copy_(state["vectors"])
        opt.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            torch.set_rng_state(state["rng"].cpu())
        start = int(state["step"])
        log.info("textual inversion: resuming at step %d/%d", start, cfg.ti_steps)
    prompt_ids = model.tokenize([template.format(t) for t in tokens])
    per = cfg.ti_batch_size

    def backward(step: int) -> torch.Tensor:
        z0, t, noise = _draw(latents, per, cfg, step)
        with injected_tokens(model, ids, vectors):
            cond = model.text_encoder(prompt_ids)[0].float()
        cond = cond.repeat_interleave(per, 0)
        t, noise = to_device(t, model.device), to_device(noise, model.device)
        losses = diffusion_loss(model, z0, cond, t, noise)
        loss = losses.view(n, per).mean(1).sum()
        scaler.backward(loss, opt)
        return loss.detach()

    plan = StepPlan(
        "textual inversion",
        cfg.ti_steps,
        start,
        checkpoint_every_steps(cfg),
        cfg.ti_checkpoint_seconds,
        loss_divisor=n,
    )
    save = None
    if state_path is not None:
        save = lambda done: _save_state(state_path, vectors, opt, done, scaler)  # noqa: E731
    run_steps(plan, backward, lambda _: scaler.step(opt), save, model.device, log, show_progress)
    if scaler.skipped:
        log.info("textual inversion: %d fp16 overflow step(s) skipped", scaler.skipped)
    return vectors.detach().clone()


def _save_state(
    path: Path, vectors: torch.Tensor, opt: torch.optim.Optimizer, step: int, scaler: LossScaler
) -> None:
    state = {
        "vectors": vectors.detach().cpu(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "rng": torch.get_rng_state(),
    }
    atomic_write(path, lambda p: torch.save(state, p))


@torch.no_grad()
def support_loss(
    model: DiffusionModel,
    latents: list[torch.Tensor],
    template: str,
    vectors: torch.Tensor,
    timesteps: list[int],
    seed: int = 0,
) -> torch.Tensor:
    """Mean diffusion loss per class at fixed timesteps and noise (for before/after checks)."""
    tokens = placeholder_tokens(len(latents))
    return conditioned_loss(
        model, latents, encode_token_prompts(model, template, tokens, vectors), timesteps, seed
    )


@torch.no_grad()
def conditioned_loss(
    model: DiffusionModel,
    latents: list[torch.Tensor],
    cond: torch.Tensor,
    timesteps: list[int],
    seed: int = 0,
) -> torch.Tensor:
    """Mean diffusion loss per class c under the condition cond[c] (N,77,D), at fixed
    timesteps and noise drawn from (seed, class): the same draws before and after training."""
    out = []
    for c, z in enumerate(latents):
        g = torch_generator(derive_seed(seed, "ti-eval", c))
        ts = torch.tensor(timesteps).repeat_interleave(len(z))
        zz = z.repeat(len(timesteps), 1, 1, 1)
        noise = torch.randn(zz.shape, generator=g).to(zz.device)
        losses = diffusion_loss(model, zz, cond[c : c + 1].expand(len(zz), -1, -1), ts, noise)
        out.append(losses.mean())
    return torch.stack(out)
