"""Specialize a diffusion model on an episode: TI for all N classes in one run, then DDIM +
null-text (or negative-prompt) inversion of every support image, in batches of a few images.

Resumable at the item: the TI checkpoint (ti_state.pt, every 10% of the steps or 60 s and on
interrupt), the finished tokens (tokens.safetensors), each finished inversion batch
(inversion/<batch>.safetensors) and each finished class are kept and not computed again.
specialize.json fingerprints the settings and inputs so a resume never mixes two runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tinyshot.diffusion.artifacts import ClassArtifact, artifact_done, load_artifacts
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.ddim import X0Rule, make_schedule, resolve_spacing
from tinyshot.diffusion.inversion import (
    InversionResult,
    measure_reconstruction,
    negative_prompt_inversion,
    null_text_inversion,
)
from tinyshot.diffusion.model import DiffusionModel
from tinyshot.diffusion.textual_inversion import (
    encode_token_prompts,
    placeholder_tokens,
    support_loss,
    train_tokens,
)
from tinyshot.diffusion.upscale import prepare_for_generator
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import atomic_write, read_json, write_json
from tinyshot.utils.logging import bars_on_terminal, get_logger, progress
from tinyshot.utils.paths import portable_record

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


# How often TI checkpoints: it changes no result (resume is bit-exact), so a resume may change it.
NOT_FINGERPRINTED = ("ti_checkpoint_every", "ti_checkpoint_seconds")


def _fingerprint(
    model: DiffusionModel,
    cfg: SpecializeConfig,
    class_names: list[str],
    counts: list[int],
    digest: str,
) -> dict[str, Any]:
    return {
        "config": {k: v for k, v in cfg.to_dict().items() if k not in NOT_FINGERPRINTED},
        **inputs_fingerprint(model, class_names, counts, digest),
    }


def inputs_fingerprint(
    model: DiffusionModel, class_names: list[str], counts: list[int], digest: str
) -> dict[str, Any]:
    """What a specialization folder was made from besides its settings: the classes, their
    image counts and prepared images (digest), the model and its sampling rule."""
    return {
        "class_names": list(class_names),
        "num_images": counts,
        "images_sha256": digest,
        "model_id": model.model_id,
        "latent_shape": list(model.latent_shape),
        # NTI's guided steps follow the scheduler's x0 rule (clipping etc.): a folder made
        # under another rule (or before the rule was honoured) must not be resumed.
        "x0_rule": dataclasses.asdict(X0Rule.from_config(model.scheduler.config)),
    }


def claim_folder(
    out_dir: Path,
    fp: dict[str, Any],
    name: str = "specialize.json",
    not_fingerprinted: tuple[str, ...] = NOT_FINGERPRINTED,
) -> None:
    """Write the fingerprint `fp` to out_dir/name, or refuse (ConfigError naming the fields
    that differ) when the folder holds one of another run; `fp["config"]` keys listed in
    not_fingerprinted are left out of the comparison."""
    path = out_dir / name
    if path.is_file():
        old = read_json(path)
        if isinstance(old.get("config"), dict):
            old["config"] = {k: v for k, v in old["config"].items() if k not in not_fingerprinted}
        old, fp = portable_record(old), portable_record(fp)
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
    claim_folder(
        out, _fingerprint(model, cfg, class_names, [len(x) for x in images_per_class], digest)
    )
    if all(artifact_done(out, c) for c in range(n)):
        log.info("%s: all %d classes already specialized", out, n)
        _drop_chunks(out, n)
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
    results = invert_in_chunks(
        model, cfg, out, latents, cond, schedule, n, show_progress,
        lambda c, res, inv_s, chunk: ClassArtifact(
            class_index=c,
            class_name=class_names[c],
            token=tokens[c],
            prompt_template=template,
            token_embedding=vectors[c].detach().float().cpu().clone(),
            z_T=res.z_T.float().cpu().clone(),
            null_embeddings=res.null_embeddings.float().cpu().clone(),
            support_latents=latents[c].float().cpu().clone(),
            timesteps=schedule.timesteps.clone(),
            meta=artifact_meta(
                model, cfg, spacing, c, before, after, res, torch.arange(len(res.z_T)),
                timing, inv_s, chunk,
            ),
        ),
        class_names,
    )  # fmt: skip
    log.info("specialization finished in %.1f s -> %s", time.perf_counter() - t0, out)
    return [
        r if r is not None else ClassArtifact.load(out / f"{c}.json") for c, r in enumerate(results)
    ]


CHUNK_DIR = "inversion"  # finished inversion batches of a class not yet saved as an artifact


def _chunks(sizes: list[int], batch: int) -> list[list[tuple[int, int]]]:
    """(class, image) pairs of all support images in order, cut every `batch` images (0 = one
    batch). The cuts depend on the episode and config alone, so a resumed run inverts exactly
    the batches an uninterrupted one would (a batch's numbers depend on its company)."""
    items = [(c, k) for c, size in enumerate(sizes) for k in range(size)]
    step = batch if batch > 0 else max(1, len(items))
    return [items[i : i + step] for i in range(0, len(items), step)]


def _save_chunk(path: Path, res: InversionResult, seconds: float) -> None:
    from safetensors.torch import save_file

    tensors = {
        "z_T": res.z_T.float().cpu().contiguous(),
        "null_embeddings": res.null_embeddings.float().cpu().contiguous(),
        "recon_error": res.recon_error.float().cpu().contiguous(),
        "inner_steps": res.inner_steps.cpu().contiguous(),
        "psnr_db": res.psnr_db.float().cpu().contiguous(),
        "cfg_psnr_db": res.cfg_psnr_db.float().cpu().contiguous(),
    }
    meta = {"seconds": repr(seconds)}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))


def _load_chunk(path: Path) -> tuple[InversionResult, float] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            seconds = float((f.metadata() or {}).get("seconds", "0"))
        res = InversionResult(
            t["z_T"], t["null_embeddings"], t["recon_error"], t["inner_steps"],
            psnr_db=t["psnr_db"], cfg_psnr_db=t["cfg_psnr_db"],
        )  # fmt: skip
    except Exception as e:  # a foreign or damaged file: invert that batch again
        log.warning("%s: unreadable inversion batch (%s); inverting it again", path, e)
        return None
    return res, seconds


def invert_in_chunks(
    model: DiffusionModel,
    cfg: SpecializeConfig,
    out: Path,
    latents: list[torch.Tensor],
    cond: torch.Tensor,
    schedule: Any,
    n: int,
    show_progress: bool | None,
    make_artifact: Any,
    class_names: list[str] | None = None,
) -> list[ClassArtifact | None]:
    """Invert the support images batch by batch; each finished batch is kept in
    out/inversion/<batch>.safetensors, and a class becomes an artifact as soon as all of its
    images are inverted. An interrupted run loses at most the batch in progress."""
    chunks = _chunks([len(z) for z in latents], cfg.inversion_batch_size)
    need = {c for c in range(n) if not artifact_done(out, c)}
    results: list[ClassArtifact | None] = [None] * n
    parts: dict[int, dict[int, tuple[InversionResult, int]]] = {c: {} for c in need}
    seconds: dict[int, float] = dict.fromkeys(need, 0.0)
    chunk_dir = out / CHUNK_DIR
    todo = [i for i, ch in enumerate(chunks) if any(c in need for c, _ in ch)]
    inner_bars = show_progress if show_progress is not None else (bars_on_terminal() or False)
    if todo:
        left = sum(len(chunks[i]) for i in todo)
        log.info(
            "%s inversion: %d images in %d batches of up to %d, each kept when it finishes",
            cfg.inversion.upper(), left, len(todo), len(chunks[0]),
        )  # fmt: skip
    bar = progress(
        todo,
        desc=f"{'null-text' if cfg.inversion == 'nti' else 'negative-prompt'} inversion",
        total=len(chunks),
        initial=len(chunks) - len(todo),
        unit="batch",
        disable=None if show_progress is None else not show_progress,
        logger=log,
    )
    for i in bar:
        chunk = chunks[i]
        path = chunk_dir / f"{i:04d}.safetensors"
        loaded = _load_chunk(path) if path.is_file() else None
        if loaded is not None:
            res, inv_s = loaded
        else:
            t2 = time.perf_counter()
            z0 = torch.stack([latents[c][k] for c, k in chunk])
            owner = torch.tensor([c for c, _ in chunk])
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
                    inner_bars,
                )
            else:
                res = negative_prompt_inversion(model, z0, c_batch, schedule, cfg.guidance)
            inv_s = time.perf_counter() - t2
            res = measure_reconstruction(model, z0, c_batch, schedule, cfg.guidance, res)
            res.reconstruction = None  # not kept: the PSNRs say what it showed
            chunk_dir.mkdir(exist_ok=True)
            _save_chunk(path, res, inv_s)
            log.debug(
                "%s inversion of %d images: %.1f s, latent reconstruction MSE %.2e (max %.2e)",
                cfg.inversion.upper(), len(z0), inv_s,
                res.recon_error.mean(), res.recon_error.max(),
            )  # fmt: skip
        bar.set_postfix(**{"reconstruction MSE": f"{float(res.recon_error.mean()):.2e}"})
        for row, (c, k) in enumerate(chunk):
            if c in need:
                parts[c][k] = (res, row)
        for c in {c for c, _ in chunk if c in need}:
            seconds[c] += inv_s
            if len(parts[c]) == len(latents[c]):
                res_c = _gather(parts.pop(c))
                gain = _recon_gain(res_c, torch.arange(len(res_c.z_T)))
                log.info(
                    "class %s: %s reconstruction %.1f dB vs %.1f dB plain CFG (%+.1f dB)",
                    class_names[c] if class_names else c, cfg.inversion.upper(),
                    gain["nti_psnr_db"], gain["cfg_psnr_db"], gain["nti_gain_db"],
                )  # fmt: skip
                art = make_artifact(c, res_c, seconds[c], len(chunks[0]))
                art.save(out)
                results[c] = art
    errors = [
        float(v) for r in results if r is not None for v in r.meta["stats"]["inversion_recon_mse"]
    ]
    if errors:
        log.info(
            "%s inversion: %d images, latent reconstruction MSE mean %.2e (max %.2e)",
            cfg.inversion.upper(), len(errors), sum(errors) / len(errors), max(errors),
        )  # fmt: skip
    _drop_chunks(out, n)
    return results


def _drop_chunks(out: Path, n: int) -> None:
    """Once every class is saved, the kept inversion batches are no longer needed."""
    chunk_dir = out / CHUNK_DIR
    if chunk_dir.is_dir() and all(artifact_done(out, c) for c in range(n)):
        for f in chunk_dir.glob("*.safetensors"):
            f.unlink()
        with contextlib.suppress(OSError):
            chunk_dir.rmdir()


def _gather(rows: dict[int, tuple[InversionResult, int]]) -> InversionResult:
    """One class's images, in order, from the batches that inverted them."""
    picked = [rows[k] for k in sorted(rows)]

    def cat(name: str) -> torch.Tensor:
        return torch.stack([getattr(res, name)[r].cpu() for res, r in picked])

    return InversionResult(
        cat("z_T"), cat("null_embeddings"), cat("recon_error"), cat("inner_steps"),
        psnr_db=cat("psnr_db"), cfg_psnr_db=cat("cfg_psnr_db"),
    )  # fmt: skip


def _recon_gain(res: Any, rows: torch.Tensor) -> dict[str, Any]:
    """Class means (and per-image lists) of the image-space reconstruction PSNR of the
    inversion (alpha = 0) and of plain CFG from the same z_T; the gain is what NTI buys."""
    inv = res.psnr_db[rows.cpu()].double()
    plain = res.cfg_psnr_db[rows.cpu()].double()
    return {
        "nti_psnr_db": float(inv.mean()),
        "cfg_psnr_db": float(plain.mean()),
        "nti_gain_db": float((inv - plain).mean()),
        "nti_psnr_db_per_image": [round(float(v), 3) for v in inv],
        "cfg_psnr_db_per_image": [round(float(v), 3) for v in plain],
    }


def artifact_meta(
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
            **_recon_gain(res, rows),
        },
        "timing": {**timing, "inversion_s": inv_s, "inversion_batch_images": batch_images},
    }
