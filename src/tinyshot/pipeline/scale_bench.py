"""`tinyshot bench scale`: memory, disk and seconds of every stage of `fit` that reads the
synthetic images, at the image counts users run (the paper: 4,000 per class, 20,000 for 5
classes, generated at 512 px).

It writes N images in the store's own format (diffusion.store, through ImageStore.write, so
they are kept at the store size the pipeline would choose), then runs `pipeline.fit.finish_fit`
on them: the very code of `fit` after generation (teacher labels, the student's image file,
health checks, distillation, export, report), with the paper preset's sizes. The teacher is a
random-weight DINO ViT-B/16 at reduced width with DINO's real input (224 px, 16 px patches),
the student the preset's ResNet12 at 84 px. Image content does not matter here, only volume:
each image is smooth random structure plus noise (RandomImages), which PNG compresses about
as much as photographs (pure noise would overstate the disk figure by 2-3x).

Peak resident memory is read with getrusage at the end of every stage (utils.timing); each
run is one process, so N = 1,000 and N = 20,000 are measured alike.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tinyshot.utils.io import write_json
from tinyshot.utils.logging import get_logger, progress
from tinyshot.utils.timing import StageTimes, peak_rss_mib

log = get_logger("pipeline.scale_bench")

CLASSES = ("class_a", "class_b", "class_c", "class_d", "class_e")
SHOTS = 5
WRITE_BATCH = 64
STAGES = ("write_s", "teacher_s", "student_images_s", "health_s", "distill_s", "export_s")
STAGES_AFTER = ("report_s",)


class RandomImages:
    """Distinct (size, size, 3) uint8 images, fast: one of 32 smooth random fields (16x16
    random colours upsampled) plus one of 32 noise fields (sd 8), rolled by a random offset."""

    POOL = 32

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.smooth = np.stack(
            [
                np.asarray(
                    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize(
                        (size, size), Image.Resampling.BILINEAR
                    ),
                    dtype=np.int16,
                )
                for _ in range(self.POOL)
            ]
        )
        self.noise = rng.normal(0.0, 8.0, (self.POOL, size, size, 3)).astype(np.int16)

    def take(self, n: int) -> np.ndarray:
        a, b = self.rng.integers(0, self.POOL, (2, n))
        shifts = self.rng.integers(0, self.smooth.shape[1], (n, 2))
        out = [
            np.roll(np.clip(self.smooth[i] + self.noise[j], 0, 255).astype(np.uint8), s, (0, 1))
            for i, j, s in zip(a, b, shifts)
        ]
        return np.stack(out)


def write_store(root: Path, n: int, size: int, store_size: int | None, seed: int = 0):
    """N images at `size`, class after class in the generator's order, in the store format."""
    from tinyshot.diffusion.store import ImageStore, folder_name

    per_class = -(-n // len(CLASSES))
    settings: dict[str, Any] = {
        "method": "tint",
        "bench": "scale",
        "seed": seed,
        "n_per_class": per_class,
        "class_names": list(CLASSES),
        "resolution": size,
    }
    if store_size is not None and store_size < size:
        settings["store_size"] = store_size
    store = ImageStore.create_or_resume(root, settings)
    items = [(c, j) for j in range(per_class) for c in range(len(CLASSES))][:n]
    source = RandomImages(size, np.random.default_rng(seed))
    batches = range(0, n, WRITE_BATCH)
    for start in progress(batches, desc="writing synthetic images", unit="batch", logger=log):
        batch = items[start : start + WRITE_BATCH]
        recs = [
            {
                "class_index": c,
                "index": j,
                "seed": seed,
                "alpha": 1.0,
                "class_name": CLASSES[c],
                "path": f"images/{folder_name(CLASSES[c])}/{j:06d}.png",
            }
            for c, j in batch
        ]
        store.write(recs, list(source.take(len(batch))))
    return ImageStore(root)


def _support_data(config: Any, seed: int) -> Any:
    import torch

    from tinyshot.data.transforms import images_to_uint8, teacher_view
    from tinyshot.pipeline.episode_data import EpisodeData

    source = RandomImages(config.teacher_input_size, np.random.default_rng(seed + 1))
    pil = [[Image.fromarray(a) for a in source.take(SHOTS)] for _ in CLASSES]
    flat = [im for imgs in pil for im in imgs]
    return EpisodeData(
        class_names=list(CLASSES),
        support_pil=pil,
        support=images_to_uint8(flat, config.image_size),
        support_labels=torch.tensor([c for c in range(len(CLASSES)) for _ in range(SHOTS)]),
        teacher_support=teacher_view(flat, config.teacher_input_size),
    )


def _disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def run_scale_bench(
    images: int,
    size: int = 512,
    out_dir: str | Path | None = None,
    iterations: int = 3,
    width_divisor: int = 16,
    student: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `images` synthetic images at `size` px into a fresh folder, run every stage of
    fit that reads them, and return (and write to OUT/bench-scale.json) the figures."""
    import torch

    from tinyshot.diffusion.sd15 import save_dino_folder
    from tinyshot.pipeline.config import PipelineConfig, store_size
    from tinyshot.pipeline.fit import finish_fit
    from tinyshot.presets import PRESETS, merge_config

    out = Path(out_dir or f"runs/bench-scale/{images}-{size}")
    if out.exists():
        shutil.rmtree(out)  # every figure is of a fresh run
    out.mkdir(parents=True)
    teacher = save_dino_folder(
        out / "models" / "dino", width_divisor=width_divisor, full_input=True
    )
    over = {
        "methods": ["tint"],
        "teacher": str(teacher),
        "pretrain_student": False,
        "base_images": 0,
        "distill": {"iterations": iterations, "eval_every": iterations,
                    "checkpoint_every": iterations},
    }  # fmt: skip
    if student:
        over["student"] = student
    config = PipelineConfig.from_dict(merge_config(PRESETS["paper"], over))
    keep = store_size(config)
    times = StageTimes(out)
    data = _support_data(config, seed)
    t0 = time.perf_counter()
    with times.stage("write_s"):
        store = write_store(out / "synthetic" / "tint", images, size, keep, seed)
    finish_fit(data, {"tint": store}, out, config, "tint", seed, times, {}, t_start=t0)
    seconds, rss = times.totals(), times.peak_rss()
    rows = [
        {
            "stage": k.removesuffix("_s"),
            "seconds": round(seconds.get(k, 0.0), 2),
            "ms_per_image": round(1000 * seconds.get(k, 0.0) / images, 3),
            "peak_rss_mib": rss.get(k),
        }
        for k in (*STAGES, *STAGES_AFTER)
    ]
    disk = {
        "synthetic": _disk(out / "synthetic"),
        "student_images": _disk(out / "student_images"),
        "labels": _disk(out / "labels"),
        "student_checkpoints": _disk(out / "student"),
        "model_onnx": _disk(out / "model.onnx"),
        "report_html": _disk(out / "report.html"),
    }
    disk["run_folder"] = _disk(out) - _disk(out / "models")
    result = {
        "format": "tinyshot.bench-scale",
        "images": images,
        "generated_size": size,
        "store_size": store.store_size or size,
        "student": {"arch": config.student, "input_size": config.image_size},
        "teacher": {"arch": f"dino-vitb16 (random, width / {width_divisor})",
                    "input_size": config.teacher_input_size},
        "distill_iterations": iterations,
        "threads": torch.get_num_threads(),
        "stages": rows,
        "disk_bytes": disk,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_json(out / "bench-scale.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The human table; its last line is `peak RSS: X MiB`."""
    n = result["images"]
    lines = [
        f"bench scale: {n} images generated at {result['generated_size']} px, stored at "
        f"{result['store_size']} px; student {result['student']['arch']} at "
        f"{result['student']['input_size']} px; teacher {result['teacher']['arch']} at "
        f"{result['teacher']['input_size']} px; {result['threads']} threads",
        f"{'stage':<16} {'seconds':>9} {'ms/image':>9} {'peak RSS MiB':>13}",
    ]
    for r in result["stages"]:
        rss = "" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(f"{r['stage']:<16} {r['seconds']:>9.1f} {r['ms_per_image']:>9.2f} {rss:>13}")
    lines.append("disk:")
    for k, v in result["disk_bytes"].items():
        lines.append(f"  {k:<20} {v / 2**20:>10.1f} MiB")
    lines.append(f"wall: {result['wall_s']:.1f} s")
    lines.append(f"peak RSS: {result['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)
