"""The full-size GPU check behind scripts/gpu-check.sh: the SD 1.5 generation bench, the ViT
teachers' forward time (DINO ViT-B/16, DINOv2 ViT-S/14 and ViT-B/14 at 224 px, random weights),
then a miniature `fit` end to end with full-size random-weight SD 1.5 and DINO ViT-B/16 folders.

The point is that every stage runs at full size on the GPU (Real-ESRGAN upscaling to 512 px,
fp16 TI and NTI, batched generation, the DINO teacher at 224 px, distillation, ONNX export),
not accuracy: the weights are random. Everything lands in OUT/gpu-check.json. Tests run the
same function on CPU with reduced widths (`width_divisor`) and a small latent size.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from tinyshot.utils.io import write_json
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.gpu_check")

# Bench and fit budgets sized to finish in about 5 minutes on one H100/H200.
BENCH = {
    "classes": 2,
    "shots": 2,  # NTI is per image; 4 images x 50 x 10 keep the bench near 100 s per dtype
    "ti_steps": 20,
    "steps": 50,
    "nti_inner_steps": 10,
    "images": None,  # two batches
    "batch_size": None,  # by memory
    "reference_images": 2,
    "upscale": "bilinear",
    "support_size": 84,
    "lora_steps": 5,  # LoRA training (rank 16, 8 images per step) at 512 px
}
# The teacher timings: each ViT teacher's backbone on one batch at 224 px, fastest of `repeats`.
TEACHERS = {
    "names": ("dino-vitb16", "dinov2-small", "dinov2-base"),
    "batch_size": 64,
    "input_size": 224,
    "repeats": 5,
}
FIT = {
    "specialize": {
        "ti_steps": 10,
        "ti_lr": 1e-3,
        "ti_batch_size": 1,
        "num_inference_steps": 20,
        "guidance": 7.5,
        "nti_inner_steps": 5,
        "upscale": "sr",  # the paper's chain: bilinear 96 px, Real-ESRGAN x4, bilinear 512 px
    },
    "synthetic_per_class": 16,
    "generation_batch_size": 16,
    "teacher_input_size": 224,
    "student": "resnet12",
    "image_size": 84,
    "pretrain_student": False,
    "distill": {"iterations": 20, "batch_size": 32, "eval_every": 10, "checkpoint_every": 10},
}


def _peak_gb(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) / 2**30


def _reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_teachers(
    dev: torch.device,
    width_divisor: int = 1,
    names: tuple[str, ...] = TEACHERS["names"],
    batch_size: int = TEACHERS["batch_size"],
    input_size: int = TEACHERS["input_size"],
    repeats: int = TEACHERS["repeats"],
) -> dict[str, dict[str, Any]]:
    """Per teacher: parameters, feature size and ms per image of the backbone (fp32; also fp16
    autocast on a GPU), random weights from the published config, on one batch."""
    from tinyshot.models.backbones import random_weight_backbone

    out: dict[str, dict[str, Any]] = {}
    x = torch.rand(batch_size, 3, input_size, input_size, device=dev)
    precisions = [("fp32", None)] + ([("fp16", torch.float16)] if dev.type == "cuda" else [])
    for name in names:
        _reset(dev)
        with dev:  # initialised on the GPU itself when there is one: seconds, not a minute
            bb = random_weight_backbone(name, width_divisor, input_size)
        bb = bb.to(dev).eval()
        row: dict[str, Any] = {
            "parameters": sum(p.numel() for p in bb.parameters()),
            "feature_dim": bb.feature_dim,
            "input_size": input_size,
            "batch_size": batch_size,
        }
        for label, dtype in precisions:
            with (
                torch.inference_mode(),
                torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                bb(x)  # warm-up
                _sync(dev)
                times = []
                for _ in range(max(1, repeats)):
                    t0 = time.perf_counter()
                    bb(x)
                    _sync(dev)
                    times.append(time.perf_counter() - t0)
            row[f"{label}_ms_per_image"] = 1000 * min(times) / batch_size
        row["peak_gpu_memory_gb"] = _peak_gb(dev)
        out[name] = row
        del bb
    return out


def write_support_images(folder: Path, classes: int = 2, shots: int = 3, size: int = 84) -> Path:
    """A class-per-folder set of small synthetic images (the fit's DATA_DIR)."""
    from tinyshot.diffusion.bench import synthetic_episode

    images, names = synthetic_episode(classes, shots, size=size, seed=1)
    for name, imgs in zip(names, images):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k, im in enumerate(imgs):
            im.save(folder / name / f"{k}.png")
    return folder


def sr_available() -> str | None:
    """None when Real-ESRGAN (ncnn) loads, else why not (the fit would fall back to bilinear)."""
    from tinyshot.diffusion.upscale import _sr
    from tinyshot.errors import ModelError

    try:
        _sr("x4plus")
    except ModelError as e:
        return str(e)
    return None


def run_gpu_check(
    out_dir: str | Path,
    device: str = "cuda",
    bench: bool = True,
    fit: bool = True,
    width_divisor: int = 1,
    latent_size: int | None = None,
    bench_overrides: dict[str, Any] | None = None,
    fit_overrides: dict[str, Any] | None = None,
    support_size: int = 84,
    teachers: bool = True,
    teacher_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Bench + teacher timings + miniature fit; returns (and writes to OUT/gpu-check.json)
    every timing."""
    import diffusers
    import transformers

    import tinyshot
    from tinyshot.diffusion.bench import run_sd15_bench
    from tinyshot.diffusion.model import save_sd15_folder
    from tinyshot.diffusion.sd15 import save_dino_folder
    from tinyshot.pipeline.config import PipelineConfig
    from tinyshot.pipeline.fit import fit as run_fit
    from tinyshot.presets import merge_config
    from tinyshot.utils.device import resolve_device

    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "format": "tinyshot.gpu-check",
        "device": str(dev),
        "gpu_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "bf16_supported": bool(dev.type == "cuda" and torch.cuda.is_bf16_supported()),
        "width_divisor": width_divisor,
        "versions": {
            "tinyshot": tinyshot.__version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "stages": {},
    }
    path = out / "gpu-check.json"
    t_start = time.perf_counter()

    def save() -> None:
        report["wall_s"] = time.perf_counter() - t_start
        write_json(path, report)

    if bench:
        kw = {**BENCH, **(bench_overrides or {})}
        t0 = time.perf_counter()
        res = run_sd15_bench(str(dev), None, width_divisor, latent_size, **kw)
        for r in res["results"].values():
            r.pop("table", None)
        report["bench"] = res
        report["stages"]["bench_s"] = time.perf_counter() - t0
        save()
    if teachers:
        t0 = time.perf_counter()
        kw = {**TEACHERS, **(teacher_overrides or {})}
        report["teachers"] = time_teachers(dev, width_divisor, **kw)
        report["stages"]["teachers_s"] = time.perf_counter() - t0
        save()
    if not fit:
        save()
        return report

    _reset(dev)
    t0 = time.perf_counter()
    models = out / "models"
    sd = save_sd15_folder(
        models / "sd15", width_divisor=width_divisor, sample_size=latent_size, device=str(dev)
    )
    dino = save_dino_folder(models / "dino-vitb16", width_divisor=width_divisor, device=str(dev))
    report["stages"]["write_model_folders_s"] = time.perf_counter() - t0
    data = write_support_images(out / "data", 2, 3, support_size)
    fit_cfg = merge_config(FIT, fit_overrides or {})
    if fit_cfg["specialize"].get("upscale") == "sr":
        report["sr_unavailable"] = sr_available()
    fit_cfg.update(generator=str(sd), teacher=str(dino), methods=["tint"], device=str(dev))
    _reset(dev)
    t0 = time.perf_counter()
    summary = run_fit(data, out / "fit", PipelineConfig.from_dict(fit_cfg), seed=0)
    report["stages"]["fit_s"] = time.perf_counter() - t0
    report["fit"] = {
        "config": fit_cfg,
        "timings": summary["timings"],
        "wall_s": summary["wall_seconds"],
        "peak_gpu_memory_gb": _peak_gb(dev),
        "onnx": summary["model"],
        "onnx_bytes": Path(summary["model"]).stat().st_size,
        "synthetic_images": len(list((out / "fit" / "synthetic" / "tint").rglob("*.png"))),
    }
    save()
    log.info("gpu check written to %s", path)
    return report


def main(argv: list[str] | None = None) -> int:
    """python -m tinyshot.pipeline.gpu_check OUT [--device cuda] [--no-bench] [--no-fit]
    [--no-teachers]"""
    import argparse

    from tinyshot.utils.logging import setup_logging

    p = argparse.ArgumentParser(prog="python -m tinyshot.pipeline.gpu_check")
    p.add_argument("out", help="output folder (gpu-check.json, models/, fit/)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--no-fit", action="store_true")
    p.add_argument("--no-teachers", action="store_true", help="skip the ViT teacher timings")
    p.add_argument("--width-divisor", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--latent-size", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup_logging(args.out)
    report = run_gpu_check(
        args.out,
        args.device,
        bench=not args.no_bench,
        fit=not args.no_fit,
        teachers=not args.no_teachers,
        width_divisor=args.width_divisor,
        latent_size=args.latent_size,
    )
    _print_summary(report)
    return 0


def _print_summary(report: dict[str, Any]) -> None:
    print(f"device: {report['device']} ({report['gpu_name'] or 'CPU'})")
    for dt, res in (report.get("bench") or {}).get("results", {}).items():
        i = res["info"]
        rows = {r["step"].split(" (")[0]: r for r in res["rows"]}
        ti = rows.get("Textual inversion", {})
        nti = rows.get("Null-text inversion", {})
        lora = rows.get("LoRA training")
        lora_said = "" if lora is None else f"LoRA step {lora['per_unit_s']:.3f} s (8 images), "
        print(
            f"{dt}: TI step {ti.get('per_unit_s', 0):.3f} s ({i['classes']} classes), {lora_said}NTI "
            f"{nti.get('per_unit_s', 0):.2f} s per image, generation {i['speedup']:.1f}x "
            f"faster batched (B={i['batch_size']}) than one at a time fp32; all-in "
            f"{i['all_in_per_image_s']:.3f} s/image (paper, A40: 1.01); peak "
            f"{max((v or 0) for v in i['peak_memory_gb'].values()):.1f} GB"
        )
    for dt, why in (report.get("bench") or {}).get("skipped", {}).items():
        print(f"{dt}: skipped ({why})")
    for name, r in (report.get("teachers") or {}).items():
        fp16 = r.get("fp16_ms_per_image")
        print(
            f"teacher {name}: {r['parameters']:,} parameters, {r['feature_dim']}-d, "
            f"{r['fp32_ms_per_image']:.2f} ms/image fp32"
            + (f", {fp16:.2f} fp16" if fp16 is not None else "")
            + f" at {r['input_size']} px, batch {r['batch_size']}"
        )
    if "fit" in report:
        f = report["fit"]
        t = ", ".join(f"{k} {v:.1f}" for k, v in f["timings"].items())
        print(f"fit: {f['wall_s']:.1f} s ({t}); ONNX {f['onnx_bytes'] / 1e6:.1f} MB")
    print(f"total {report['wall_s']:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
