"""`tinyshot bench generate`: Table 6 of the paper (seconds per generated image for TI, NTI
and generation) on this machine, plus batched generation against the authors' way of
generating (one image per call, fp32, diffusers' DDIMScheduler.step)."""

from __future__ import annotations

import tempfile
import time
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


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    info: dict[str, Any]

    def table(self) -> str:
        head = f"{'step':<34} {'work':>16} {'total s':>9} {'s/unit':>9} {'s/gen. image':>13}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            per_img = (
                ""
                if r.get("per_generated_image_s") is None
                else f"{r['per_generated_image_s']:.4f}"
            )
            lines.append(
                f"{r['step']:<34} {r['work']:>16} {r['total_s']:>9.2f} {r['per_unit_s']:>9.4f} {per_img:>13}"
            )
        i = self.info
        lines.append("")
        lines.append(
            f"batched generation ({i['batch_size']} per batch) vs one image at a time fp32: "
            f"{i['speedup']:.1f}x throughput (max pixel difference {i['max_pixel_diff']}/255)"
        )
        lines.append(
            f"paper-style per-image figures assume {i['paper_ti_steps']} TI steps and "
            f"{i['paper_images_per_class']} images per class (Table 6: TI 0.30 s, NTI 0.05 s, "
            "generation 0.66 s on an A40 with SD 1.5)"
        )
        lines.append(
            f"model: {i['model_id']} ({i['device']}, {i['dtype']}, {i['threads']} threads)"
        )
        return "\n".join(lines)


def run_generation_bench(
    model: DiffusionModel,
    classes: int = 2,
    shots: int = 3,
    ti_steps: int = 20,
    steps: int = 20,
    nti_inner_steps: int = 10,
    images: int = 64,
    batch_size: int = 32,
    reference_images: int = 8,
    paper_ti_steps: int = 5000,
    paper_images_per_class: int = 4000,
    seed: int = 0,
    workdir: Path | None = None,
) -> BenchResult:
    imgs, names = synthetic_episode(classes, shots, size=model.resolution, seed=seed)
    cfg = SpecializeConfig(
        ti_steps=ti_steps,
        num_inference_steps=steps,
        nti_inner_steps=nti_inner_steps,
        nti_early_stop=0.0,
        upscale="bilinear",
        seed=seed,
    )
    tmp = tempfile.TemporaryDirectory(prefix="tinyshot-bench-") if workdir is None else None
    root = Path(tmp.name) if tmp is not None else Path(workdir)  # type: ignore[union-attr]
    try:
        arts = specialize(model, imgs, names, cfg, root / "spec", show_progress=False)
        ti_s = float(arts[0].meta["timing"]["ti_s"])
        nti_s = float(arts[0].meta["timing"]["inversion_s"])
        n_support = classes * shots
        per_class = max(1, images // classes)
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
        gen_s = time.perf_counter() - t0
        n_gen = len(store)
        ours = {(it.class_index, int(it.path.stem)): it.path for it in store.items()}
        t0 = time.perf_counter()
        diffs = []
        ref_dir = root / "ref"
        ref_dir.mkdir(parents=True, exist_ok=True)
        for r in range(reference_images):
            c, j = r % classes, r // classes
            arr = reference_generate_one(model, arts[c], j, seed, 1.0)
            Image.fromarray(arr).save(ref_dir / f"{c}_{j}.png")
            if (c, j) in ours:
                mine = np.asarray(Image.open(ours[(c, j)]).convert("RGB")).astype(int)
                diffs.append(int(np.abs(mine - arr.astype(int)).max()))
        ref_s = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    n_paper = classes * paper_images_per_class
    ti_step = ti_s / max(1, ti_steps)
    rows = [
        {
            "step": f"Textual inversion ({classes} classes)",
            "work": f"{ti_steps} steps",
            "total_s": ti_s,
            "per_unit_s": ti_step,
            "per_generated_image_s": ti_step * paper_ti_steps / n_paper,
        },
        {
            "step": f"Null-text inversion ({steps} steps)",
            "work": f"{n_support} images",
            "total_s": nti_s,
            "per_unit_s": nti_s / n_support,
            "per_generated_image_s": nti_s / n_paper,
        },
        {
            "step": f"Generate, batched (B={batch_size})",
            "work": f"{n_gen} images",
            "total_s": gen_s,
            "per_unit_s": gen_s / n_gen,
            "per_generated_image_s": gen_s / n_gen,
        },
        {
            "step": "Generate, one at a time fp32",
            "work": f"{reference_images} images",
            "total_s": ref_s,
            "per_unit_s": ref_s / reference_images,
            "per_generated_image_s": ref_s / reference_images,
        },
    ]
    info = {
        "speedup": (ref_s / reference_images) / (gen_s / n_gen),
        "max_pixel_diff": max(diffs) if diffs else None,
        "batch_size": batch_size,
        "paper_ti_steps": paper_ti_steps,
        "paper_images_per_class": paper_images_per_class,
        "model_id": model.model_id,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "classes": classes,
        "shots": shots,
        "ddim_steps": steps,
        "nti_inner_steps": nti_inner_steps,
    }
    return BenchResult(rows=rows, info=info)
