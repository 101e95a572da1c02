"""Specialize a diffusion model on an episode: TI for all N classes in one run, then DDIM +
null-text (or negative-prompt) inversion of every support image, batched.

Resumable: the TI checkpoint (ti_state.pt) and the finished tokens (tokens.safetensors) are
kept, and classes whose artifacts exist are not inverted again. specialize.json fingerprints
the settings and inputs so a resume never mixes two different runs.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tinyshot.data.transforms import prepare_for_generator
from tinyshot.diffusion.artifacts import ClassArtifact, artifact_done, load_artifacts
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.ddim import make_schedule, resolve_spacing
from tinyshot.diffusion.inversion import negative_prompt_inversion, null_text_inversion
from tinyshot.diffusion.model import DiffusionModel
from tinyshot.diffusion.textual_inversion import (
    encode_token_prompts,
    placeholder_tokens,
    support_loss,
    train_tokens,
)
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import atomic_write, read_json, write_json
from tinyshot.utils.logging import get_logger

log = get_logger("diffusion.specialize")

__all__ = ["ClassArtifact", "load_artifacts", "prepare_support_latents", "specialize"]

EVAL_TIMESTEPS = [300, 500, 700, 900]


def _template(model: DiffusionModel, cfg: SpecializeConfig) -> str:
    return cfg.prompt_template or model.caption_template


def prepare_support_latents(
    model: DiffusionModel, images_per_class: list[list[Image.Image]], cfg: SpecializeConfig
) -> tuple[list[torch.Tensor], str]:
    """Prepare each class's images as the generator's training images were (pad or resize,
    see model.image_prep) and encode them once; returns latents and a digest."""
    h = hashlib.sha256()
    latents = []
    prep = model.image_prep
    for imgs in images_per_class:
        x = prepare_for_generator(imgs, prep, cfg.upscale, cfg.sr_model, cfg.sr_input_size)
        h.update(x.numpy().tobytes())
        latents.append(model.encode(x))
    return latents, h.hexdigest()


def _check_inputs(images_per_class: list[list[Image.Image]], class_names: list[str]) -> None:
    if len(images_per_class) != len(class_names):
        raise DataError(f"{len(images_per_class)} image lists but {len(class_names)} class names")
    if not class_names:
        raise DataError("no classes to specialize on")
    if len(set(class_names)) != len(class_names):
        raise DataError(f"duplicate class names: {class_names}")
    for name, imgs in zip(class_names, images_per_class):
        if len(imgs) == 0:
            raise DataError(f"class {name!r} has no images")


def _fingerprint(
    model: DiffusionModel,
    cfg: SpecializeConfig,
    class_names: list[str],
    counts: list[int],
    digest: str,
) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "class_names": list(class_names),
        "num_images": counts,
        "images_sha256": digest,
        "model_id": model.model_id,
        "latent_shape": list(model.latent_shape),
    }


def _claim(out_dir: Path, fp: dict[str, Any]) -> None:
    path = out_dir / "specialize.json"
    if path.is_file():
        old = read_json(path)
        diff = sorted(k for k in fp if old.get(k) != fp[k])
        if diff:
            detail = diff
            if "config" in diff:
                keys = fp["config"].keys() | old.get("config", {}).keys()
                detail = [
                    f"config.{k}"
                    for k in sorted(keys)
                    if old.get("config", {}).get(k) != fp["config"].get(k)
                ]
                detail += [d for d in diff if d != "config"]
            raise ConfigError(
                f"{out_dir}: holds a specialization with different {', '.join(detail)}; "
                "use another --out folder or delete this one"
            )
    else:
        write_json(path, fp)


def specialize(
    model: DiffusionModel,
    images_per_class: list[list[Image.Image]],
    class_names: list[str],
    config: SpecializeConfig | None = None,
    out_dir: str | Path = "specialized",
    show_progress: bool | None = None,
) -> list[ClassArtifact]:
    """TI on all classes jointly, then inversion of every support image; one artifact per class.

    The model is modified only by adding the placeholder tokens <tinyshot-i> (their rows hold
    the learned vectors afterwards); every other weight is untouched.
    """
    cfg = (config or SpecializeConfig()).validate()
    _check_inputs(images_per_class, class_names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(class_names)
    t0 = time.perf_counter()
    latents, digest = prepare_support_latents(model, images_per_class, cfg)
    _claim(out, _fingerprint(model, cfg, class_names, [len(x) for x in images_per_class], digest))
    if all(artifact_done(out, c) for c in range(n)):
        log.info("%s: all %d classes already specialized", out, n)
        return load_artifacts(out)

    template = _template(model, cfg)
    tokens = placeholder_tokens(n)
    timing: dict[str, float] = {"prepare_s": time.perf_counter() - t0}
    tok_file = out / "tokens.safetensors"
    model.ensure_tokens(tokens, cfg.init_token)
    init = model.token_init_vector(cfg.init_token).to(model.device).repeat(n, 1)
    t1 = time.perf_counter()
    if tok_file.is_file():
        from safetensors.torch import load_file

        vectors = load_file(tok_file)["vectors"].to(model.device)
        log.info("textual inversion already done (%s)", tok_file)
    else:
        log.info("textual inversion: %d classes, %d steps", n, cfg.ti_steps)
        vectors = train_tokens(
            model,
            latents,
            template,
            cfg,
            state_path=out / "ti_state.pt",
            show_progress=show_progress,
        )
        from safetensors.torch import save_file

        atomic_write(tok_file, lambda p: save_file({"vectors": vectors.cpu().contiguous()}, p))
        (out / "ti_state.pt").unlink(missing_ok=True)
    timing["ti_s"] = time.perf_counter() - t1
    model.set_token_embeddings(tokens, vectors)
    before = support_loss(model, latents, template, init, EVAL_TIMESTEPS, cfg.seed)
    after = support_loss(model, latents, template, vectors, EVAL_TIMESTEPS, cfg.seed)
    log.info(
        "TI support loss (fixed t, noise): %.5f -> %.5f", before.mean().item(), after.mean().item()
    )

    with torch.no_grad():
        cond = encode_token_prompts(model, template, tokens, vectors)
    spacing = resolve_spacing(model, cfg.timestep_spacing)
    schedule = make_schedule(model, cfg.num_inference_steps, spacing)
    todo = [c for c in range(n) if not artifact_done(out, c)]
    results: list[ClassArtifact | None] = [None] * n
    for group in _groups(todo, [len(latents[c]) for c in range(n)], cfg.inversion_batch_size):
        t2 = time.perf_counter()
        z0 = torch.cat([latents[c] for c in group])
        owner = torch.cat([torch.full((len(latents[c]),), c) for c in group])
        c_batch = cond[owner.to(cond.device)]
        if cfg.inversion == "nti":
            res = null_text_inversion(
                model,
                z0,
                c_batch,
                schedule,
                cfg.guidance,
                cfg.nti_inner_steps,
                cfg.nti_lr,
                cfg.nti_lr_decay,
                cfg.nti_early_stop,
                show_progress,
            )
        else:
            res = negative_prompt_inversion(model, z0, c_batch, schedule, cfg.guidance)
        inv_s = time.perf_counter() - t2
        log.info(
            "%s inversion of %d images: %.1f s, latent reconstruction MSE %.2e (max %.2e)",
            cfg.inversion.upper(),
            len(z0),
            inv_s,
            res.recon_error.mean(),
            res.recon_error.max(),
        )
        for c in group:
            rows = (owner == c).nonzero().flatten()
            art = ClassArtifact(
                class_index=c,
                class_name=class_names[c],
                token=tokens[c],
                prompt_template=template,
                token_embedding=vectors[c].detach().float().cpu().clone(),
                z_T=res.z_T[rows.to(res.z_T.device)].float().cpu().clone(),
                null_embeddings=res.null_embeddings[rows.to(res.z_T.device)].float().cpu().clone(),
                support_latents=latents[c].float().cpu().clone(),
                timesteps=schedule.timesteps.clone(),
                meta=_meta(
                    model, cfg, spacing, c, before, after, res, rows, timing, inv_s, len(z0)
                ),
            )
            art.save(out)
            results[c] = art
    log.info("specialization finished in %.1f s -> %s", time.perf_counter() - t0, out)
    return [
        r if r is not None else ClassArtifact.load(out / f"{c}.json") for c, r in enumerate(results)
    ]


def _groups(todo: list[int], sizes: list[int], batch: int) -> list[list[int]]:
    """Whole classes per inversion batch (so each batch ends with finished artifacts)."""
    if batch <= 0:
        return [todo] if todo else []
    groups: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for c in todo:
        if cur and total + sizes[c] > batch:
            groups.append(cur)
            cur, total = [], 0
        cur.append(c)
        total += sizes[c]
    if cur:
        groups.append(cur)
    return groups


def _meta(
    model: DiffusionModel,
    cfg: SpecializeConfig,
    spacing: str,
    c: int,
    before: torch.Tensor,
    after: torch.Tensor,
    res: Any,
    rows: torch.Tensor,
    timing: dict[str, float],
    inv_s: float,
    batch_images: int,
) -> dict[str, Any]:
    import tinyshot

    desc = model.describe()
    return {
        "model_id": model.model_id,
        "model": {k: v for k, v in desc.items() if k != "versions"},
        "versions": {**desc["versions"], "tinyshot": tinyshot.__version__},
        "scheduler": "DDIMScheduler",
        "guidance": cfg.guidance,
        "num_inference_steps": cfg.num_inference_steps,
        "timestep_spacing": spacing,
        "inversion": cfg.inversion,
        "seeds": {"seed": cfg.seed, "ti": "derive_seed(seed, 'ti', step, class)"},
        "config": cfg.to_dict(),
        "stats": {
            "ti_loss_init": float(before[c]),
            "ti_loss_final": float(after[c]),
            "ti_eval_timesteps": EVAL_TIMESTEPS,
            "inversion_recon_mse": [float(v) for v in res.recon_error[rows]],
            "nti_inner_steps": [int(v) for v in res.inner_steps[rows]],
        },
        "timing": {**timing, "inversion_s": inv_s, "inversion_batch_images": batch_images},
    }
