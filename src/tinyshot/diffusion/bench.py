"""`tinyshot bench generate`: Table 6 of the paper (seconds per generated image for TI, NTI
and generation) on this machine, plus batched generation against the authors' way of
generating (one image per call, fp32, diffusers' DDIMScheduler.step).

On CUDA every timing is taken after torch.cuda.synchronize, after a warm-up pass, and each
phase reports its peak GPU memory (torch.cuda.max_memory_allocated). `run_sd15_bench` does
this for the full-size SD 1.5 architecture (random weights) in fp16 and, where the GPU
supports it, bf16.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from tinyshot.data.transforms import tensor_to_uint8
from tinyshot.diffusion.artifacts import ClassArtifact
from tinyshot.diffusion.config import SpecializeConfig
from tinyshot.diffusion.generate import blend_noise, generate, item_draws
from tinyshot.diffusion.model import DiffusionModel, make_ddim_scheduler
from tinyshot.diffusion.specialize import specialize
from tinyshot.diffusion.textual_inversion import encode_token_prompts

# Table 6 of the paper (SD 1.5 on one A40, miniImageNet): seconds per generated image, and
# the per-unit figures they come from (TI: 5000 steps per class = 0.33 h; NTI: 5 images per
# class = 0.05 h; generation: 0.66 s per image).
PAPER_TABLE6 = {
    "gpu": "NVIDIA A40 (48 GB)",
    "ti_per_image_s": 0.30,
    "nti_per_image_s": 0.05,
    "generate_per_image_s": 0.66,
    "total_per_image_s": 1.01,
    "ti_step_s": 0.33 * 3600 / 5000,
    "nti_per_support_image_s": 0.05 * 3600 / 5,
}
# DataDream's LoRA budget (Kim et al., ECCV 2024): about 400 steps of 8 images per class.
DATADREAM_STEPS_PER_CLASS = 400
DATADREAM_BATCH = 8


def synthetic_episode(
    classes: int, shots: int, size: int = 32, seed: int = 0
) -> tuple[list[list[Image.Image]], list[str]]:
    """Coloured shapes on dark backgrounds: a stand-in episode that needs no dataset."""
    shapes = ["ellipse", "rectangle", "triangle"]
    out = []
    for c in range(classes):
        rng = np.random.default_rng([seed, c])
        colour = tuple(int(v) for v in rng.integers(90, 256, 3))
        imgs = []
        for _ in range(shots):
            im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 70, 3)))
            d = ImageDraw.Draw(im)
            x0, y0 = (int(v) for v in rng.integers(1, size // 3, 2))
            x1, y1 = (int(v) for v in rng.integers(2 * size // 3, size - 1, 2))
            kind = shapes[c % 3]
            if kind == "triangle":
                d.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
            else:
                getattr(d, kind)((x0, y0, x1, y1), fill=colour)
            imgs.append(im)
        out.append(imgs)
    return out, [f"class{c}" for c in range(classes)]


@torch.no_grad()
def reference_generate_one(
    model: DiffusionModel, art: ClassArtifact, index: int, seed: int, alpha: float
) -> np.ndarray:
    """One TINT image the way the authors' code makes it: batch 1 (CFG as a pair), fp32,
    diffusers' DDIMScheduler.step. Uses the same draws as generate(), for comparison."""
    _, k, noise, _ = item_draws(
        seed, art.class_index, index, art.num_support, tuple(art.z_T.shape[1:])
    )
    sched = make_ddim_scheduler(dict(model.scheduler.config), art.timestep_spacing)
    sched.set_timesteps(art.num_inference_steps)
    cond = encode_token_prompts(model, art.prompt_template, [art.token], art.token_embedding[None])
    z = blend_noise(art.z_T[k : k + 1], noise[None], alpha).to(model.device)
    nulls = art.null_embeddings[k].to(model.device)
    for i, t in enumerate(sched.timesteps):
        u = nulls[i if nulls.shape[0] > 1 else 0][None]
        out = model.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([u, cond])).sample
        e_u, e_c = out.chunk(2)
        eps = e_u + art.guidance * (e_c - e_u)
        z = sched.step(eps, t, z).prev_sample
    return tensor_to_uint8(model.decode(z))[0]


def _sync(model: DiffusionModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def _reset_peak(model: DiffusionModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)


def _peak_gb(model: DiffusionModel) -> float | None:
    if model.device.type != "cuda":
        return None
    torch.cuda.synchronize(model.device)
    return torch.cuda.max_memory_allocated(model.device) / 2**30


@contextlib.contextmanager
def as_fp32(model: DiffusionModel) -> Iterator[DiffusionModel]:
    """The model in fp32 for the duration (the authors' generation runs in fp32); fp16/bf16
    weights survive the round trip exactly."""
    old = model.dtype
    if old == torch.float32:
        yield model
        return
    from diffusers.utils import logging as dlog

    def cast(dt: torch.dtype) -> None:
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # diffusers warns on every direct dtype cast
        try:
            for m in (model.unet, model.vae):
                if m is not None:
                    m.to(dtype=dt)
        finally:
            dlog.set_verbosity(level)
        model.dtype = dt

    cast(torch.float32)
    try:
        yield model
    finally:
        cast(old)
        if model.device.type == "cuda":
            torch.cuda.empty_cache()


def warm_up(model: DiffusionModel, batch: int = 2) -> None:
    """One UNet forward+backward and one decode, so CUDA context, kernel loading and the
    allocator's first growth are not billed to the first timed phase."""
    ctx = model.empty_embedding().expand(batch, -1, -1).clone().requires_grad_(True)
    z = torch.randn(batch, *model.latent_shape, device=model.device)
    t = torch.full((batch,), 500, device=model.device)
    with torch.enable_grad():
        model.eps(z, t, ctx).square().mean().backward()
    model.decode(z[:1])
    _sync(model)


@torch.no_grad()
def choose_batch_size(model: DiffusionModel, cap: int = 64, fraction: float = 0.5) -> int:
    """Generation batch that fits in `fraction` of the free GPU memory, from the measured peak
    of one guided UNet step at 1 and 2 images (CFG doubles the UNet batch) plus a decode of
    16 images (generate() decodes in chunks of 16). On CPU: min(cap, 32)."""
    if model.device.type != "cuda":
        return max(1, min(cap, 32))
    dev = model.device
    ctx = model.empty_embedding()

    def peak(b: int, decode: bool = False) -> int:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        z = torch.randn(2 * b, *model.latent_shape, device=dev)
        if decode:
            model.decode(z[:b])
        else:
            model.eps(z, torch.tensor(500, device=dev), ctx.expand(2 * b, -1, -1))
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - base

    p1, p2 = peak(1), peak(2)
    per_image = max(p2 - p1, 1)
    fixed = max(p1 - per_image, 0) + 8 * peak(2, decode=True)
    free, _ = torch.cuda.mem_get_info(dev)
    fit = int((free * fraction - fixed) // per_image)
    torch.cuda.empty_cache()
    return max(1, min(cap, fit))


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    info: dict[str, Any]

    def table(self) -> str:
        def num(v: float | None, fmt: str) -> str:
            return "" if v is None else format(v, fmt)

        head = (
            f"{'step':<34} {'work':>16} {'total s':>9} {'s/unit':>9} {'paper s/unit':>12} "
            f"{'s/gen. image':>13} {'paper':>6} {'peak GB':>8}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r['step']:<34} {r['work']:>16} {num(r.get('total_s'), '9.2f'):>9} "
                f"{num(r.get('per_unit_s'), '.4f'):>9} {num(r.get('paper_per_unit_s'), '.3f'):>12} "
                f"{num(r.get('per_generated_image_s'), '.4f'):>13} "
                f"{num(r.get('paper_per_generated_image_s'), '.2f'):>6} "
                f"{num(r.get('peak_gb'), '.2f'):>8}"
            )
        i = self.info
        lines.append("")
        lines.append(
            f"batched generation ({i['batch_size']} per batch) vs one image at a time fp32: "
            f"{i['speedup']:.1f}x throughput (max pixel difference {i['max_pixel_diff']}/255)"
        )
        lines.append(
            f"paper-style per-image figures assume {i['paper_ti_steps']} TI steps and "
            f"{i['paper_images_per_class']} images per class; 'paper' = Table 6, SD 1.5 on an "
            f"{PAPER_TABLE6['gpu']} (TI 0.30 s, NTI 0.05 s, generation 0.66 s, all-in 1.01 s)"
        )
        where = i.get("gpu_name") or f"{i['threads']} threads"
        lines.append(f"model: {i['model_id']} ({i['device']}: {where}, {i['dtype']})")
        return "\n".join(lines)


def run_generation_bench(
    model: DiffusionModel,
    classes: int = 2,
    shots: int = 3,
    ti_steps: int = 20,
    steps: int = 20,
    nti_inner_steps: int = 10,
    images: int | None = 64,
    batch_size: int | None = 32,
    reference_images: int = 8,
    paper_ti_steps: int = 5000,
    paper_images_per_class: int = 4000,
    paper_shots: int = 5,
    seed: int = 0,
    workdir: Path | None = None,
    upscale: str = "bilinear",
    support_size: int | None = None,
    lora_steps: int = 5,
) -> BenchResult:
    """batch_size None picks the largest that fits half the free GPU memory (choose_batch_size);
    images None generates two such batches. Support images are drawn at support_size (default
    the model's resolution) and brought to it by `upscale` (not timed). lora_steps: LoRA
    training steps timed (rank 16 on the UNet's attention, DataDream's batch of 8 images
    spread over the classes; 0 skips the row)."""
    if batch_size is None:
        batch_size = choose_batch_size(model)
    if images is None:
        images = 2 * batch_size
    imgs, names = synthetic_episode(
        classes, shots, size=support_size or model.resolution, seed=seed
    )
    cfg = SpecializeConfig(
        ti_steps=ti_steps,
        num_inference_steps=steps,
        nti_inner_steps=nti_inner_steps,
        nti_early_stop=0.0,
        upscale=upscale,
        seed=seed,
    )
    tmp = tempfile.TemporaryDirectory(prefix="tinyshot-bench-") if workdir is None else None
    root = Path(tmp.name) if tmp is not None else Path(workdir)  # type: ignore[union-attr]
    peaks: dict[str, float | None] = {}
    try:
        warm_up(model)
        _reset_peak(model)
        # specialize's TI and NTI timings end on a device-to-host copy, so they are synchronized
        arts = specialize(model, imgs, names, cfg, root / "spec", show_progress=False)
        peaks["specialize"] = _peak_gb(model)
        ti_s = float(arts[0].meta["timing"]["ti_s"])
        nti_s = float(arts[0].meta["timing"]["inversion_s"])
        lora = None
        if lora_steps > 0:
            _reset_peak(model)
            lora = time_lora_step(model, imgs, names, cfg, lora_steps, root / "lora", seed)
            peaks["lora"] = _peak_gb(model)
        n_support = classes * shots
        per_class = max(1, images // classes)
        _reset_peak(model)
        t0 = time.perf_counter()
        store = generate(
            model,
            arts,
            "tint",
            per_class,
            root / "gen",
            batch_size=batch_size,
            seed=seed,
            show_progress=False,
        )
        _sync(model)
        gen_s = time.perf_counter() - t0
        peaks["generate"] = _peak_gb(model)
        n_gen = len(store)
        ours = {(it.class_index, int(it.path.stem)): it.path for it in store.items()}
        diffs = []
        ref_dir = root / "ref"
        ref_dir.mkdir(parents=True, exist_ok=True)
        with as_fp32(model):
            warm_up(model, 1)
            _reset_peak(model)
            t0 = time.perf_counter()
            for r in range(reference_images):
                c, j = r % classes, r // classes
                arr = reference_generate_one(model, arts[c], j, seed, 1.0)
                Image.fromarray(arr).save(ref_dir / f"{c}_{j}.png")
                if (c, j) in ours:
                    mine = np.asarray(Image.open(ours[(c, j)]).convert("RGB")).astype(int)
                    diffs.append(int(np.abs(mine - arr.astype(int)).max()))
            _sync(model)
            ref_s = time.perf_counter() - t0
            peaks["reference"] = _peak_gb(model)
    finally:
        if tmp is not None:
            tmp.cleanup()
    n_paper = classes * paper_images_per_class
    ti_step = ti_s / max(1, ti_steps)
    ti_img = ti_step * paper_ti_steps / n_paper
    # NTI's work per support image is the same at any shot count: amortise it as the paper
    # does, 5 support images per class over 4000 generated images of that class.
    nti_img = (nti_s / n_support) * paper_shots / paper_images_per_class
    gen_img = gen_s / n_gen
    ref_img = ref_s / reference_images
    p = PAPER_TABLE6
    rows = [
        {
            "step": f"Textual inversion ({classes} classes)",
            "work": f"{ti_steps} steps",
            "total_s": ti_s,
            "per_unit_s": ti_step,
            "paper_per_unit_s": p["ti_step_s"] * classes,  # one 5000-step run per class
            "per_generated_image_s": ti_img,
            "paper_per_generated_image_s": p["ti_per_image_s"],
            "peak_gb": peaks.get("specialize"),
        },
        {
            "step": f"Null-text inversion ({steps}x{nti_inner_steps})",
            "work": f"{n_support} images",
            "total_s": nti_s,
            "per_unit_s": nti_s / n_support,
            "paper_per_unit_s": p["nti_per_support_image_s"],
            "per_generated_image_s": nti_img,
            "paper_per_generated_image_s": p["nti_per_image_s"],
            "peak_gb": peaks.get("specialize"),
        },
        *(
            []
            if lora is None
            else [
                {
                    "step": f"LoRA training (rank 16, {lora['batch']} images)",
                    "work": f"{lora_steps} steps",
                    "total_s": lora["step_s"] * lora_steps,
                    "per_unit_s": lora["step_s"],
                    "paper_per_unit_s": None,
                    # DataDream's budget per class, amortised over the paper's images per class
                    "per_generated_image_s": lora["step_s"]
                    * DATADREAM_STEPS_PER_CLASS
                    / paper_images_per_class,
                    "paper_per_generated_image_s": None,
                    "peak_gb": peaks.get("lora"),
                }
            ]
        ),
        {
            "step": f"Generate, batched (B={batch_size})",
            "work": f"{n_gen} images",
            "total_s": gen_s,
            "per_unit_s": gen_img,
            "paper_per_unit_s": None,
            "per_generated_image_s": gen_img,
            "paper_per_generated_image_s": None,
            "peak_gb": peaks.get("generate"),
        },
        {
            "step": "Generate, one at a time fp32",
            "work": f"{reference_images} images",
            "total_s": ref_s,
            "per_unit_s": ref_img,
            "paper_per_unit_s": p["generate_per_image_s"],
            "per_generated_image_s": ref_img,
            "paper_per_generated_image_s": p["generate_per_image_s"],
            "peak_gb": peaks.get("reference"),
        },
        {
            "step": "All-in per image (batched)",
            "work": f"{paper_images_per_class}/class",
            "total_s": None,
            "per_unit_s": None,
            "paper_per_unit_s": None,
            "per_generated_image_s": ti_img + nti_img + gen_img,
            "paper_per_generated_image_s": p["total_per_image_s"],
            "peak_gb": max((v for v in peaks.values() if v is not None), default=None),
        },
    ]
    info = {
        "speedup": ref_img / gen_img,
        "all_in_per_image_s": ti_img + nti_img + gen_img,
        "all_in_one_at_a_time_per_image_s": ti_img + nti_img + ref_img,
        "paper": dict(PAPER_TABLE6),
        "peak_memory_gb": peaks,
        "gpu_name": (
            torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None
        ),
        "resolution": model.resolution,
        "max_pixel_diff": max(diffs) if diffs else None,
        "batch_size": batch_size,
        "paper_ti_steps": paper_ti_steps,
        "paper_images_per_class": paper_images_per_class,
        "paper_shots": paper_shots,
        "model_id": model.model_id,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "classes": classes,
        "shots": shots,
        "ddim_steps": steps,
        "nti_inner_steps": nti_inner_steps,
        "lora": lora,
    }
    return BenchResult(rows=rows, info=info)


def time_lora_step(
    model: DiffusionModel,
    images: list[list[Image.Image]],
    names: list[str],
    cfg: SpecializeConfig,
    steps: int,
    root: Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds per LoRA training step (rank 16, UNet attention, DATADREAM_BATCH images spread
    over the classes, fp16/bf16 UNet with fp32 adapters on a GPU): the difference between a
    run of steps + 2 and one of 2 steps, so injecting, saving and the first step's allocations
    are not billed to the steps."""
    from tinyshot.diffusion.lora import LoraTrainConfig, train_lora
    from tinyshot.diffusion.specialize import prepare_support_latents

    latents, _ = prepare_support_latents(model, images, cfg)
    per = max(1, DATADREAM_BATCH // len(names))
    times = []
    for n in (2, 2 + steps):
        lcfg = LoraTrainConfig(steps=n, warmup_steps=0, batch_size=per, seed=seed)
        _sync(model)
        t0 = time.perf_counter()
        train_lora(model, latents, names, lcfg, root / f"run{n}", show_progress=False)
        _sync(model)
        times.append(time.perf_counter() - t0)
    return {
        "step_s": max(times[1] - times[0], 1e-9) / steps,
        "steps": steps,
        "batch": per * len(names),
        "rank": LoraTrainConfig().rank,
        "datadream_steps_per_class": DATADREAM_STEPS_PER_CLASS,
    }


def run_sd15_bench(
    device: str | None = None,
    dtypes: list[str] | None = None,
    width_divisor: int = 1,
    sample_size: int | None = None,
    seed: int = 0,
    **bench_kw: Any,
) -> dict[str, Any]:
    """The generation bench on SD 1.5's architecture (random weights, real configs) in each
    dtype: on CUDA fp16 and, where torch.cuda.is_bf16_supported(), bf16; on CPU fp32.

    width_divisor/sample_size shrink the model for CPU tests of the same code path.
    Returns {"results": {dtype: {"rows", "info"}}, "skipped": {dtype: reason}, "params": ...}.
    """
    from tinyshot.diffusion.model import build_sd15_model
    from tinyshot.diffusion.sd15 import count_parameters
    from tinyshot.utils.device import resolve_device

    dev = resolve_device(device)
    skipped: dict[str, str] = {}
    if dtypes is None:
        dtypes = ["fp16", "bf16"] if dev.type == "cuda" else ["fp32"]
    if "bf16" in dtypes and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtypes = [d for d in dtypes if d != "bf16"]
        skipped["bf16"] = f"{torch.cuda.get_device_name(dev)} does not support bf16"
    results: dict[str, Any] = {}
    for dt in dtypes:
        t0 = time.perf_counter()
        model = build_sd15_model(dev, dt, seed, width_divisor, sample_size)
        _sync(model)
        build_s = time.perf_counter() - t0
        res = run_generation_bench(model, seed=seed, **bench_kw)
        res.info["build_s"] = build_s
        results[dt] = {"rows": res.rows, "info": res.info, "table": res.table()}
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "arch": "sd15" if width_divisor == 1 else f"sd15/width{width_divisor}",
        "device": str(dev),
        "gpu_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "torch": torch.__version__,
        "params": count_parameters(width_divisor),
        "results": results,
        "skipped": skipped,
    }
