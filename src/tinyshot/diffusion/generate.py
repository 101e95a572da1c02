"""Synthetic images from a specialized generator, batched: every method is a specialization
(none, textual inversion, LoRA) times a way of sampling (fresh noise, img2img, TINT's blend);
docs/generator.md has the table and the paper behind each cell.

- "tint": pick a support image k at random, blend its z_T with noise (Eq. 3-4), sample with
  the class token as condition and image k's per-timestep null embeddings.
- "ti": plain textual inversion: pure noise, class token, the standard empty-prompt null.
- "dafusion": DA-Fusion style: the support latent noised to a random strength, then denoised
  with the class token (img2img).
- "name": the skeptic's baseline, no TI/NTI: pure noise, the prompt "a photo of a {class name}"
  (the model's own training caption for a class it was trained on), the empty-prompt null.
- "lora", "lora-dafusion", "lora-tint": the same three samplers on the LoRA-adapted model
  (diffusion.lora: fresh noise = DataDream; TINT with null embeddings inverted through the
  adapted UNet), conditioned on the LoRA's class token (or class name); `generate` with a
  LoRA folder in place of the artifacts.

Each image's support pick and noise come from derive_seed(seed, class, index) alone, so the
set does not depend on batching order, and a resumed run reproduces an uninterrupted one.
Batches have a fixed composition (items in index-major order, cut every batch_size), so even
float rounding that depends on batch shape is identical after a resume.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tinyshot.data.transforms import tensor_to_uint8
from tinyshot.diffusion.artifacts import ClassArtifact
from tinyshot.diffusion.config import LORA_METHODS, METHOD_PARTS, METHODS
from tinyshot.diffusion.ddim import DDIMSchedule, ddim_sample, make_schedule
from tinyshot.diffusion.model import NAME_TEMPLATE, DiffusionModel, name_prompt  # noqa: F401
from tinyshot.diffusion.store import ImageStore
from tinyshot.diffusion.textual_inversion import encode_token_prompts
from tinyshot.errors import ConfigError, ModelError
from tinyshot.utils.logging import get_logger, progress
from tinyshot.utils.paths import same_model
from tinyshot.utils.seed import derive_seed, torch_generator

if TYPE_CHECKING:
    from tinyshot.diffusion.lora import LoraSpecialization

log = get_logger("diffusion.generate")

# What each method reads from specialization, so checks on it apply only where they matter:
# a learned specialization (TI's token, or the LoRA and its token) whose support loss is
# recorded, and null-text inversion.
USES_TOKEN = frozenset(m for m, (spec, _) in METHOD_PARTS.items() if spec != "none")
USES_NTI = frozenset(m for m, (_, sampling) in METHOD_PARTS.items() if sampling == "tint")
DAFUSION_STRENGTHS = (0.25, 0.5, 0.75, 1.0)


def blend_noise(
    z_T: torch.Tensor, noise: torch.Tensor, alpha: float | torch.Tensor
) -> torch.Tensor:
    """Eq. 3-4: z' = (1-a) z_T + a n, rescaled to the norm (1-a)|z_T| + a|n| (per sample).

    The paper writes L2 norms and the authors' code uses RMS; both give the same result,
    since the rescaling factor is a ratio of two norms of equal-size tensors.
    alpha = 0 returns z_T and alpha = 1 returns the noise exactly.
    """
    a = torch.as_tensor(alpha, dtype=torch.float32)
    if bool(((a < 0) | (a > 1)).any()) or not bool(torch.isfinite(a).all()):
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if a.ndim == 0:
        if float(a) == 0.0:
            return z_T.clone()
        if float(a) == 1.0:
            return noise.clone()
    a = a.to(z_T.device).reshape(-1, *([1] * (z_T.ndim - 1))) if a.ndim else a.to(z_T.device)
    z = (1 - a) * z_T + a * noise

    def norm(v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))

    target = (1 - a) * norm(z_T) + a * norm(noise)
    out = z * (target / norm(z).clamp_min(1e-12))
    if a.ndim:
        out = torch.where(a == 0, z_T, torch.where(a == 1, noise, out))
    return out


@dataclass
class _Context:
    """Everything a batch needs, on the model device."""

    method: str
    schedule: DDIMSchedule
    guidance: float
    alpha: float
    strengths: tuple[float, ...]
    cond: torch.Tensor  # (N, 77, D)
    empty: torch.Tensor  # (1, 77, D)
    null_bank: torch.Tensor | None  # (sum K, S or 1, 77, D)
    zT_bank: torch.Tensor  # (sum K, C, h, w)
    z0_bank: torch.Tensor  # (sum K, C, h, w)
    offsets: list[int]
    num_support: list[int]
    latent_shape: tuple[int, ...]

    @property
    def sampling(self) -> str:
        return METHOD_PARTS[self.method][1]


def _make_context(
    model: DiffusionModel,
    method: str,
    cond: torch.Tensor,
    supports: Sequence[torch.Tensor],
    steps: int,
    spacing: str,
    guidance: float,
    alpha: float = 1.0,
    strengths: tuple[float, ...] = (),
    inverted: Sequence[ClassArtifact] | None = None,
) -> _Context:
    """cond (N,77,D) per class; supports: each class's support latents (img2img starts from
    them; their count is what a support pick draws from); inverted: the classes' artifacts,
    whose z_T and null embeddings TINT samples from."""
    dev = model.device
    offsets, off = [], 0
    for z in supports:
        offsets.append(off)
        off += len(z)
    null_bank = None
    z_T = supports
    if METHOD_PARTS[method][1] == "tint":
        assert inverted is not None
        depth = {a.null_embeddings.shape[1] for a in inverted}
        if len(depth) != 1:
            raise ModelError("artifacts mix NTI and negative-prompt inversion; specialize again")
        null_bank = torch.cat([a.null_embeddings for a in inverted]).to(dev, model.dtype)
        z_T = [a.z_T for a in inverted]
    return _Context(
        method=method,
        schedule=make_schedule(model, steps, spacing),
        guidance=float(guidance),
        alpha=alpha,
        strengths=strengths or DAFUSION_STRENGTHS,
        cond=cond,
        empty=model.empty_embedding(),
        null_bank=null_bank,
        zT_bank=torch.cat(list(z_T)).to(dev, torch.float32),
        z0_bank=torch.cat(list(supports)).to(dev, torch.float32),
        offsets=offsets,
        num_support=[len(z) for z in supports],
        latent_shape=tuple(supports[0].shape[1:]),
    )


def _build_context(
    model: DiffusionModel,
    artifacts: Sequence[ClassArtifact],
    method: str,
    steps: int,
    spacing: str,
    guidance: float,
    alpha: float,
    strengths: tuple[float, ...],
) -> _Context:
    """The context of a TI-specialized method: the class tokens from the artifacts."""
    with torch.no_grad():
        cond = torch.cat(
            [
                encode_token_prompts(model, a.prompt_template, [a.token], a.token_embedding[None])
                for a in artifacts
            ]
        )
    return _make_context(
        model, method, cond, [a.support_latents for a in artifacts], steps, spacing,
        guidance, alpha, strengths, artifacts,
    )  # fmt: skip


def item_draws(
    seed: int,
    class_index: int,
    index: int,
    num_support: int,
    latent_shape: tuple[int, ...],
    num_strengths: int = len(DAFUSION_STRENGTHS),
) -> tuple[int, int, torch.Tensor, int]:
    """(item seed, support index, noise, strength index) of one image, method-independent,
    so TINT, TI and DA-Fusion images with the same index share their noise."""
    s = derive_seed(seed, class_index, index)
    g = torch_generator(s)
    k = int(torch.randint(num_support, (1,), generator=g))
    noise = torch.randn(latent_shape, generator=g)
    si = int(torch.randint(num_strengths, (1,), generator=g))
    return s, k, noise, si


def _run_batch(
    model: DiffusionModel, ctx: _Context, items: list[tuple[int, int]], seed: int
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Sample one batch; returns images (B,3,H,W) in [0,1] and their manifest fields."""
    sched = ctx.schedule
    classes, rows, noises, starts, info = [], [], [], [], []
    for c, j in items:
        s, k, noise, si = item_draws(
            seed, c, j, ctx.num_support[c], ctx.latent_shape, len(ctx.strengths)
        )
        classes.append(c)
        rows.append(ctx.offsets[c] + k)
        noises.append(noise)
        rec: dict[str, Any] = {"class_index": c, "index": j, "seed": s, "method": ctx.method}
        if ctx.sampling == "tint":
            rec.update(support_index=k, alpha=ctx.alpha)
            starts.append(0)
        elif ctx.sampling == "noise":
            rec.update(support_index=None, alpha=None)
            starts.append(0)
        else:
            strength = ctx.strengths[si]
            rec.update(support_index=k, alpha=None, strength=strength)
            starts.append(min(sched.steps - 1, max(0, sched.steps - round(strength * sched.steps))))
        info.append(rec)
    dev = model.device
    noise = torch.stack(noises).to(dev)
    row_t = torch.tensor(rows, device=dev)
    start_t = torch.tensor(starts, dtype=torch.long)
    cond = ctx.cond[torch.tensor(classes, device=dev)]
    if ctx.sampling == "tint":
        z = blend_noise(ctx.zT_bank[row_t], noise, ctx.alpha)
        bank = ctx.null_bank
        assert bank is not None

        def uncond_at(i: int, r: torch.Tensor) -> torch.Tensor:
            return bank[row_t[r.to(dev)], i if bank.shape[1] > 1 else 0]

    else:
        if ctx.sampling == "noise":
            z = noise
        else:
            a = sched.alpha[start_t].to(dev).reshape(-1, 1, 1, 1)
            z = a.sqrt() * ctx.z0_bank[row_t] + (1 - a).sqrt() * noise

        def uncond_at(i: int, r: torch.Tensor) -> torch.Tensor:
            return ctx.empty.expand(len(r), -1, -1)

    x0 = ddim_sample(model, z, cond, uncond_at, sched, ctx.guidance, start=start_t)
    return model.decode(x0), info


def _artifacts_digest(artifacts: Sequence[ClassArtifact]) -> str:
    h = hashlib.sha256()
    for a in artifacts:
        for t in a.tensors().values():
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def warn_untested_steps(model: DiffusionModel, steps: int) -> str | None:
    """Warn when sampling at another DDIM step count than the one the model's own fidelity
    check measured: a small generator can draw its classes at that count and not at others
    (the shipped Fashion-MNIST one: TI images 82% teacher-agreed at 6 steps, 69% at 10)."""
    rec = model.fidelity_record or {}
    measured = rec.get("steps")
    if not isinstance(measured, int) or measured == int(steps):
        return None
    msg = (
        f"sampling at {steps} DDIM steps, but this generator's class fidelity was measured at "
        f"{measured} steps only; its images may not show their classes at {steps} "
        "(docs/generator.md, 'DDIM steps'); check the teacher agreement in the report"
    )
    log.warning(msg)
    return msg


def _check_request(
    method: str, alpha: float, n_per_class: int, batch_size: int, strengths: Sequence[float]
) -> tuple[float, ...]:
    """The checks every generate call makes; returns the DA-Fusion strengths as a tuple."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if not (0.0 <= float(alpha) <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1, got {n_per_class}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    out = tuple(float(s) for s in strengths)
    if not out or any(not (0.0 < s <= 1.0) for s in out):
        raise ConfigError(f"DA-Fusion strengths must be in (0, 1], got {out}")
    return out


def _check_tint_settings(steps: int, guidance: float, a0: ClassArtifact) -> None:
    """TINT samples with the DDIM steps and guidance its null embeddings were fitted for."""
    if steps != a0.num_inference_steps:
        raise ConfigError(
            f"TINT must use the {a0.num_inference_steps} DDIM steps of its null embeddings, "
            f"not {steps}"
        )
    if guidance != a0.guidance:
        raise ConfigError(
            f"TINT must use guidance {a0.guidance} (the null embeddings were fitted for it), "
            f"not {guidance}"
        )


def _check_timesteps(ctx: _Context, a0: ClassArtifact) -> None:
    if not torch.equal(ctx.schedule.timesteps.cpu(), a0.timesteps.cpu()):
        raise ModelError("this model's scheduler gives other timesteps than the artifacts'")


def generate(
    model: DiffusionModel,
    artifacts: Sequence[ClassArtifact] | str | Path | LoraSpecialization,
    method: str = "tint",
    n_per_class: int = 100,
    out_dir: str | Path = "synthetic",
    alpha: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    guidance: float | None = None,
    steps: int | None = None,
    strengths: Sequence[float] = DAFUSION_STRENGTHS,
    show_progress: bool | None = None,
    store_size: int | None = None,
) -> ImageStore:
    """Generate n_per_class images per class into out_dir (PNGs + manifest.jsonl); resumable.

    artifacts: a TI specialization's class artifacts (specialize, load_artifacts); for the
    lora* methods, a LoRA folder (diffusion.lora.specialize_lora) or its LoraSpecialization.
    guidance/steps default to the specialization's; TINT requires them (its null embeddings
    were optimized for that guidance and those timesteps). store_size: images larger than
    that side are kept shrunk to it (diffusion.store); None keeps the generated size.
    """
    strengths = _check_request(method, alpha, n_per_class, batch_size, strengths)

    def fill(ctx: _Context, class_names: list[str], settings: dict[str, Any]) -> ImageStore:
        """The store of `settings` (what the specialization decides) plus the request's."""
        settings = {
            **settings,
            "seed": seed,
            "batch_size": batch_size,
            "n_per_class": n_per_class,
            "class_names": list(class_names),
            "model_id": model.model_id,
            "resolution": model.resolution,
        }
        return _fill_store(
            model, ctx, class_names, settings, out_dir, n_per_class, batch_size, seed,
            show_progress, store_size,
        )  # fmt: skip

    if method in LORA_METHODS:
        return _sample_lora(model, artifacts, method, alpha, guidance, steps, strengths, fill)
    if isinstance(artifacts, (str, Path)) or not artifacts:
        raise ConfigError(f"{method}: needs the class artifacts of a TI specialization")
    a0 = artifacts[0]
    if method == "name":  # only the class names and the sampling settings are used
        return generate_from_names(
            model,
            [a.class_name for a in artifacts],
            n_per_class=n_per_class,
            out_dir=out_dir,
            batch_size=batch_size,
            seed=seed,
            guidance=float(a0.guidance if guidance is None else guidance),
            steps=steps or a0.num_inference_steps,
            timestep_spacing=a0.timestep_spacing,
            show_progress=show_progress,
            store_size=store_size,
        )
    for a in artifacts:
        if a.num_support < 1:
            raise ConfigError(f"class {a.class_name!r}: artifact has no support images")
        if tuple(a.z_T.shape[1:]) != model.latent_shape:
            raise ModelError(
                f"class {a.class_name!r}: artifact latents {tuple(a.z_T.shape[1:])} do not fit "
                f"this model's {model.latent_shape}; generate with the model it was made with"
            )
        if a.token_embedding.shape[-1] != model.embed_dim:
            raise ModelError(
                f"class {a.class_name!r}: token size {a.token_embedding.shape[-1]} "
                f"!= text encoder width {model.embed_dim}"
            )
    if not same_model(a0.meta.get("model_id"), model.model_id):
        log.warning(
            "artifacts were made with %s, generating with %s", a0.meta["model_id"], model.model_id
        )
    steps = steps or a0.num_inference_steps
    guidance = float(a0.guidance if guidance is None else guidance)
    spacing = a0.timestep_spacing
    warn_untested_steps(model, steps)
    if method == "tint":
        _check_tint_settings(steps, guidance, a0)
    ctx = _build_context(
        model, artifacts, method, steps, spacing, guidance, float(alpha), strengths
    )
    if method == "tint":
        _check_timesteps(ctx, a0)
    settings = {
        "method": method,
        "alpha": float(alpha) if method == "tint" else None,
        "strengths": list(strengths) if method == "dafusion" else None,
        "guidance": guidance,
        "steps": steps,
        "timestep_spacing": spacing,
        "artifacts_sha256": _artifacts_digest(artifacts),
    }
    return fill(ctx, [a.class_name for a in artifacts], settings)


def _fill_store(
    model: DiffusionModel,
    ctx: _Context,
    class_names: list[str],
    settings: dict[str, Any],
    out_dir: str | Path,
    n_per_class: int,
    batch_size: int,
    seed: int,
    show_progress: bool | None,
    store_size: int | None = None,
) -> ImageStore:
    """Sample every missing (class, index) item into out_dir's store, batch by batch."""
    method = ctx.method
    if store_size is not None and store_size < model.resolution:
        settings = {**settings, "store_size": int(store_size)}
    store = ImageStore.create_or_resume(out_dir, settings, growable=("n_per_class",))
    n = len(class_names)
    items = [(c, j) for j in range(n_per_class) for c in range(n)]
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    done = store.done_keys()
    folders = store.class_folders(class_names)
    todo = [b for b in batches if not all(it in done for it in b)]
    if len(todo) < len(batches):
        log.info(
            "%s: %d of %d batches already done, resuming",
            out_dir,
            len(batches) - len(todo),
            len(batches),
        )
    t0 = time.perf_counter()
    made = 0
    bar = progress(
        todo,
        desc=f"image generation ({method})",
        unit="batch",
        logger=log,
        total=len(todo),
        disable=None if show_progress is None else not show_progress,
    )
    # PNG encoding of batch k overlaps sampling of batch k+1 (one writer thread keeps the
    # manifest in order); a batch counts as done only once its manifest lines are written.
    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinyshot-png") as writer:
        try:
            for batch in bar:
                with torch.inference_mode():
                    images, info = _run_batch(model, ctx, batch, seed)
                arrs = tensor_to_uint8(images)
                recs, keep = [], []
                for r, arr in zip(info, arrs):
                    key = (r["class_index"], r["index"])
                    if key in done:
                        continue
                    r["class_name"] = class_names[r["class_index"]]
                    r["path"] = f"images/{folders[r['class_index']]}/{r['index']:06d}.png"
                    recs.append(r)
                    keep.append(arr)
                if pending is not None:
                    pending.result()
                pending = writer.submit(store.write, recs, keep)
                done.update((r["class_index"], r["index"]) for r in recs)
                made += len(recs)
            if pending is not None:
                pending.result()
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
    dt = time.perf_counter() - t0
    if made:
        log.info("generated %d images in %.1f s (%.3f s/image) -> %s", made, dt, dt / made, out_dir)
    return ImageStore(out_dir)


def generate_from_names(
    model: DiffusionModel,
    class_names: Sequence[str],
    n_per_class: int = 100,
    out_dir: str | Path = "synthetic",
    batch_size: int = 16,
    seed: int = 0,
    guidance: float = 3.0,
    steps: int = 10,
    timestep_spacing: str | None = None,
    show_progress: bool | None = None,
    store_size: int | None = None,
) -> ImageStore:
    """The `name` baseline: fresh noise, "a photo of a {class name}", the empty-prompt null;
    needs no specialization. Resumable and batch-independent like `generate` (same noise draws
    as TI's images of the same index)."""
    from tinyshot.diffusion.ddim import resolve_spacing

    names = list(class_names)
    if not names:
        raise ConfigError("no class names given")
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate class names: {names}")
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1, got {n_per_class}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    warn_untested_steps(model, steps)
    prompts = [name_prompt(model, c) for c in names]
    spacing = resolve_spacing(model, timestep_spacing)
    zeros = torch.zeros((1, *model.latent_shape))
    with torch.no_grad():
        cond = model.encode_text(prompts)
    ctx = _make_context(model, "name", cond, [zeros] * len(names), steps, spacing, guidance)
    log.info("name prompts: %s", "; ".join(prompts))
    settings = {
        "method": "name",
        "alpha": None,
        "strengths": None,
        "seed": seed,
        "guidance": float(guidance),
        "steps": steps,
        "timestep_spacing": spacing,
        "batch_size": batch_size,
        "n_per_class": n_per_class,
        "class_names": names,
        "prompts": prompts,
        "model_id": model.model_id,
        "resolution": model.resolution,
    }
    return _fill_store(
        model, ctx, names, settings, out_dir, n_per_class, batch_size, seed, show_progress,
        store_size,
    )  # fmt: skip


def _sample_lora(
    model: DiffusionModel,
    lora_dir: str | Path | LoraSpecialization,
    method: str,
    alpha: float,
    guidance: float | None,
    steps: int | None,
    strengths: tuple[float, ...],
    fill: Callable[[_Context, list[str], dict[str, Any]], ImageStore],
) -> ImageStore:
    """The lora* methods: `lora` (fresh noise, the class prompt, the adapted model's
    empty-prompt null: DataDream), `lora-dafusion` (img2img from the supports) or `lora-tint`
    (TINT from the supports inverted through the adapted model; needs
    specialize_lora(..., invert=True)), all sampled from the LoRA-adapted model. Image j of a
    class uses the same noise as TI's and TINT's image j; guidance/steps default to the
    sampling settings the folder was made with."""
    from tinyshot.diffusion.lora import LoraSpecialization, lora_adapter

    lora = (
        lora_dir if isinstance(lora_dir, LoraSpecialization) else LoraSpecialization.load(lora_dir)
    )
    if not same_model(lora.meta.get("model_id"), model.model_id):
        log.warning("LoRA trained on %s, generating with %s", lora.meta["model_id"], model.model_id)
    steps = steps or lora.num_inference_steps
    guidance = float(lora.guidance if guidance is None else guidance)
    warn_untested_steps(model, steps)
    sampling = METHOD_PARTS[method][1]
    inverted = lora.artifacts() if sampling == "tint" else None
    if inverted is not None:
        _check_tint_settings(steps, guidance, inverted[0])
    settings = {
        "method": method,
        "alpha": float(alpha) if sampling == "tint" else None,
        "strengths": list(strengths) if sampling == "img2img" else None,
        "guidance": guidance,
        "steps": steps,
        "timestep_spacing": lora.timestep_spacing,
        "prompts": lora.prompts,
        "lora_sha256": lora.digest(),
    }
    with lora_adapter(model, lora):
        ctx = _make_context(
            model, method, lora.condition(model), lora.support_latents, steps,
            lora.timestep_spacing, guidance, float(alpha), strengths, inverted,
        )  # fmt: skip
        if inverted is not None:
            _check_timesteps(ctx, inverted[0])
        return fill(ctx, lora.class_names, settings)


@torch.inference_mode()
def alpha_sweep(
    model: DiffusionModel,
    artifacts: Sequence[ClassArtifact],
    class_index: int,
    support_index: int,
    alphas: Sequence[float],
    seed: int = 0,
) -> list:
    """TINT images of one support example for several alphas, all with the same noise draw:
    alpha = 0 reconstructs the support image, alpha = 1 is a new sample (paper Fig. 3)."""
    from tinyshot.data.transforms import tensor_to_pil

    a = artifacts[class_index]
    if not 0 <= support_index < a.num_support:
        raise ConfigError(
            f"class {a.class_name!r} has {a.num_support} support images, not {support_index + 1}"
        )
    ctx = _build_context(
        model,
        artifacts,
        "tint",
        a.num_inference_steps,
        a.timestep_spacing,
        a.guidance,
        0.0,
        DAFUSION_STRENGTHS,
    )
    n = len(alphas)
    row = ctx.offsets[class_index] + support_index
    noise = torch.randn(ctx.latent_shape, generator=torch_generator(seed)).to(model.device)
    z_T = ctx.zT_bank[row].expand(n, *ctx.latent_shape)
    z = blend_noise(
        z_T, noise.expand(n, *ctx.latent_shape), torch.tensor([float(x) for x in alphas])
    )
    cond = ctx.cond[class_index].expand(n, -1, -1)
    bank = ctx.null_bank
    assert bank is not None

    def uncond_at(i: int, r: torch.Tensor) -> torch.Tensor:
        return bank[row, i if bank.shape[1] > 1 else 0].expand(len(r), -1, -1)

    x0 = ddim_sample(model, z, cond, uncond_at, ctx.schedule, ctx.guidance)
    return [tensor_to_pil(x) for x in model.decode(x0)]
