"""The generator training loop: seeded batches, Min-SNR loss, EMA, atomic checkpoints that resume
bit-exactly, and the model folder at the end.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyshot.diffusion.pretrain.config import PretrainConfig
from tinyshot.diffusion.pretrain.data import CaptionedImages
from tinyshot.diffusion.pretrain.export import export_model_folder, folder_size_mb
from tinyshot.diffusion.pretrain.models import _Models, build_scheduler, tokenize
from tinyshot.errors import ConfigError, DataError, ModelError, TrainingError
from tinyshot.utils.checkpoint import load_checkpoint, restore, save_checkpoint
from tinyshot.utils.device import resolve_device
from tinyshot.utils.io import write_json
from tinyshot.utils.logging import get_logger, progress, setup_logging
from tinyshot.utils.seed import derive_seed, seed_everything, torch_generator

log = get_logger("diffusion.pretrain")


ARCH = "tinyshot-pixel-t2i"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_SUBDIR = "model"


def _ema_decay(cfg: PretrainConfig, step: int) -> float:
    """Warm-up EMA so early steps are not dominated by the random init."""
    return min(cfg.ema_decay, (1.0 + step) / (10.0 + step))


def _lr_lambda(cfg: PretrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress_ = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return f


def training_noise(shape: torch.Size, gen: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """N(0, I), plus `offset` x N(0, 1) per image and channel (offset noise) when offset > 0.

    The offset is drawn only when on, so plain runs keep their exact random stream.
    """
    noise = torch.randn(shape, generator=gen)
    if offset:
        noise += offset * torch.randn(tuple(shape[:2]) + (1,) * (len(shape) - 2), generator=gen)
    return noise


def _batch_indices(step: int, batch_size: int, n: int, seed: int, cache: dict) -> np.ndarray:
    """Indices of a step's batch, a pure function of the step: epochs of seeded permutations."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offs = pos // n, pos % n
    out = np.empty_like(pos)
    for e in np.unique(epochs):
        if e not in cache:
            cache.clear()  # keep at most the epochs in use
            cache[e] = np.random.default_rng(derive_seed(seed, "epoch", int(e))).permutation(n)
        out[epochs == e] = cache[e][offs[epochs == e]]
    return out


def train_generator(
    data: CaptionedImages,
    out_dir: str | Path,
    cfg: PretrainConfig | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train UNet + text encoder on (images, captions); writes out_dir/model (the model folder).

    out_dir also holds checkpoint.pt (every cfg.checkpoint_every steps, atomic) and log.txt; a
    killed run continues bit-exactly with resume=True. `stop_after` ends the run early (as if
    killed) after that many total steps, for tests. `device` defaults to CUDA when available;
    all random draws come from CPU generators, so batches and noise do not depend on it.
    Returns the training summary.
    """
    from tinyshot.diffusion.tokenizer import load_clip_tokenizer

    cfg = cfg or PretrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise ConfigError(
            f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out"
        )
    x_all = data.to_tensor()
    if x_all.shape[-1] != cfg.image_size or x_all.shape[-2] != cfg.image_size:
        raise DataError(
            f"recipe {data.recipe}: images are {tuple(x_all.shape[-2:])}, "
            f"the config says image_size={cfg.image_size}"
        )

    seed_everything(cfg.seed)
    tokenizer = load_clip_tokenizer(model_max_length=cfg.max_length)
    dev = resolve_device(device)
    models = _Models(cfg, tokenizer).to(dev)
    init_train: dict[str, Any] | None = None
    scheduler = build_scheduler(cfg)
    caption_set = sorted(set(data.captions))
    caption_index = {c: i for i, c in enumerate(caption_set)}
    cap_idx = torch.tensor([caption_index[c] for c in data.captions], dtype=torch.long)
    caption_ids = tokenize(tokenizer, caption_set, cfg.max_length)
    empty_ids = tokenize(tokenizer, [""], cfg.max_length)
    optimizer = torch.optim.AdamW(models.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    gen = torch_generator(derive_seed(cfg.seed, "pretrain-noise"))
    meta = {"arch": ARCH, "config": cfg.to_dict(), "recipe": data.recipe, "n_images": len(data)}
    losses: list[float] = []
    step = 0
    elapsed = 0.0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, expect={"arch": ARCH})
        for key in ("config", "recipe", "n_images"):
            old = state["meta"].get(key)
            if key == "config" and isinstance(old, dict):
                # checkpoints from before these keys existed
                old = {"init_from": None, "offset_noise": 0.0, **old}
            if _training_part(old) != _training_part(meta[key]):
                raise ConfigError(
                    f"{ckpt_path}: checkpoint was made with a different {key} "
                    f"({_diff(state['meta'].get(key), meta[key])}); use another --out"
                )
        step = restore(
            state, model=models, optimizer=optimizer, scheduler=lr_sched, generators={"noise": gen}
        )
        losses = list(state["extra"].get("losses", []))
        elapsed = float(state["extra"].get("elapsed_s", 0.0))
        log.info("resuming %s at step %d/%d", out, step, cfg.steps)
    else:
        if cfg.init_from:
            init_train = _warm_start(models, cfg.init_from)
        n_params = sum(p.numel() for p in models.unet.parameters())
        n_text = sum(p.numel() for p in models.text_encoder.parameters())
        log.info(
            "training %s on %d images (%s): UNet %.2fM params, text encoder %.2fM params, "
            "%d steps of batch %d",
            ARCH, len(data), data.recipe, n_params / 1e6, n_text / 1e6, cfg.steps, cfg.batch_size,
        )  # fmt: skip

    def checkpoint(at: int) -> None:
        save_checkpoint(
            ckpt_path,
            model=models,
            step=at,
            meta=meta,
            optimizer=optimizer,
            scheduler=lr_sched,
            generators={"noise": gen},
            extra={"losses": losses, "elapsed_s": elapsed},
        )

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    perm_cache: dict = {}
    alphas = scheduler.alphas_cumprod
    models.train()
    models.ema_unet.eval()
    models.ema_text_encoder.eval()
    t0 = time.perf_counter()
    bar = progress(range(step, end), desc="pretrain-generator", total=end, initial=step)
    for s in bar:
        idx = torch.from_numpy(_batch_indices(s, cfg.batch_size, len(data), cfg.seed, perm_cache))
        x = x_all[idx].to(dev).float().div_(127.5).sub_(1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        ids = caption_ids[cap_idx[idx]]
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        ids = torch.where(drop[:, None], empty_ids, ids)
        # all random draws on the CPU generator: same stream on any device
        noise = training_noise(x.shape, gen, cfg.offset_noise).to(dev)
        t = torch.randint(0, cfg.num_train_timesteps, (len(idx),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1).to(dev)
        t, ids = t.to(dev), ids.to(dev)
        noisy = a.sqrt() * x + (1 - a).sqrt() * noise  # = scheduler.add_noise, in fp32
        enc = models.text_encoder(ids).last_hidden_state
        pred = models.unet(noisy, t, encoder_hidden_states=enc).sample
        per_image = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = per_image.mean()  # the plain epsilon-MSE, what is logged
        if cfg.snr_gamma is not None:
            snr = (a / (1 - a)).view(-1)
            objective = (per_image * snr.clamp(max=cfg.snr_gamma) / snr).mean()
        else:
            objective = loss
        if not torch.isfinite(objective):
            raise TrainingError(
                f"loss is {loss.item()} at step {s}; the last checkpoint in {ckpt_path} is kept "
                "(lower the learning rate)"
            )
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(models.trainable(), cfg.grad_clip)
        optimizer.step()
        lr_sched.step()
        models.ema_update(_ema_decay(cfg, s))
        losses.append(float(loss.item()))
        done = s + 1
        if done % log_every == 0 or done == end:
            recent = float(np.mean(losses[-log_every:]))
            log.info(
                "step %d/%d loss %.4f (mean of last %d) lr %.2e",
                done, cfg.steps, recent, min(log_every, len(losses)), lr_sched.get_last_lr()[0],
            )  # fmt: skip
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{recent:.4f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            elapsed_now = elapsed + (time.perf_counter() - t0)
            elapsed, t0 = elapsed_now, time.perf_counter()
            checkpoint(done)
        step = done
    elapsed += time.perf_counter() - t0

    summary = {
        "command": command,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "steps_done": step,
        "batch_size": cfg.batch_size,
        "train_seconds": round(elapsed, 1),
        "loss_first_100": _mean(losses[:100]),
        "loss_last_100": _mean(losses[-100:]),
        "recipe_info": data.info,
        "config": cfg.to_dict(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if cfg.init_from:
        if init_train is None:  # resumed: the first attempt read it
            init_train = _read_train_record(cfg.init_from)
        summary["init_from_train"] = init_train
        prev = float(init_train.get("train_seconds") or 0.0)
        summary["train_seconds_all_phases"] = round(prev + elapsed, 1)
    if step < cfg.steps:
        log.info("stopped at step %d/%d; rerun with --resume to continue", step, cfg.steps)
        return summary
    model_dir = export_model_folder(models, tokenizer, cfg, data, out / MODEL_SUBDIR, summary)
    write_json(out / "summary.json", summary)
    log.info(
        "done: %d steps in %.0f s, loss %.4f -> %.4f; model folder %s (%.1f MB)",
        step, elapsed, summary["loss_first_100"], summary["loss_last_100"], model_dir,
        folder_size_mb(model_dir),
    )  # fmt: skip
    return summary


# Config keys that only change what is exported or how often it is saved, not the training run.
EXPORT_ONLY_KEYS = ("clip_sample", "checkpoint_every", "save_dtype")


def _training_part(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in EXPORT_ONLY_KEYS}
    return value


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return f"{old!r} -> {new!r}"


def _read_train_record(folder: str | Path) -> dict[str, Any]:
    info = Path(folder) / "tinyshot.json"
    return json.loads(info.read_text()).get("train", {}) if info.is_file() else {}


def _warm_start(models: _Models, folder: str | Path) -> dict[str, Any]:
    """Copy a model folder's UNet and text encoder into the trained and EMA modules; returns
    that folder's training record (kept in this run's summary, so the recipe stays whole)."""
    from tinyshot.diffusion.pretrain.sampling import load_generator

    try:
        unet, text, *_ = load_generator(folder)
        for dst in (models.unet, models.ema_unet):
            dst.load_state_dict(unet.state_dict())
        for dst in (models.text_encoder, models.ema_text_encoder):
            dst.load_state_dict(text.state_dict())
    except (OSError, RuntimeError, ModelError) as e:
        raise ConfigError(f"--init-from {folder}: cannot start from this model ({e})") from e
    log.info("warm start from %s", folder)
    return _read_train_record(folder)
