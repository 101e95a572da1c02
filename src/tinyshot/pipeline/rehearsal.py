"""The paper preset's run, rehearsed on a CPU: `tinyshot fit --preset paper` with every count
that sets a data volume at the paper's value (5 classes x 5 shots, 4,000 images per class
generated at 512 px, the teacher at 224 px, ResNet12 at 84 px) and only the counts that set
compute per item cut (TI steps, DDIM steps, NTI inner iterations, distillation iterations).

The generator is SD 1.5's architecture at the real 512 px with reduced widths and no
self-attention (diffusion.sd15.rehearsal_configs), the teacher DINO ViT-B/16 at reduced width
with its real 224 px input; both random-weight folders loaded by the same code as the real
ones. `fit` runs as a child process; with --kill it is killed (SIGKILL) once inside each named
stage and started again, so the run also proves that every stage resumes. Per stage it keeps
wall time (summed over attempts), the child's peak RSS and the disk the stage's folder takes,
in OUT/rehearsal.json (scripts/scale-rehearsal.sh; docs/pipeline.md, "The paper preset,
rehearsed").
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.rehearsal")

CLASSES = 5
SHOTS = 5
SUPPORT_SIZE = 512
# The paper preset's per-item compute, cut (docs/pipeline.md says by how much).
CUTS: dict[str, Any] = {
    "specialize": {"ti_steps": 20, "num_inference_steps": 2, "nti_inner_steps": 2},
    "distill": {"iterations": 30, "eval_every": 10, "checkpoint_every": 10},
}
STAGE_FOLDERS = {
    "specialize_s": "specialize",
    "generate_tint_s": "synthetic",
    "teacher_s": "labels",
    "student_images_s": "student_images",
    "health_s": "health.json",
    "distill_s": "student",
    "export_s": "model.onnx",
    "report_s": "report.html",
}


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def kill_points(fit_dir: Path, images: int) -> dict[str, Callable[[], bool]]:
    """Stage -> a test that the child is inside that stage with part of its work done."""
    manifest = fit_dir / "synthetic" / "tint" / "manifest.jsonl"
    return {
        "specialize": lambda: (
            any((fit_dir / "specialize").glob("**/*.safetensors")) and not manifest.exists()
        ),
        "generate": lambda: images // 5 <= _count_lines(manifest) < images,
        "labels": lambda: any((fit_dir / "labels").glob("*.parts/part_*")),
        "distill": lambda: (
            (fit_dir / "student" / "checkpoint.pt").is_file()
            and not (fit_dir / "model.onnx").exists()
        ),
    }


def prepare(out: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """The generator and teacher folders and the support images (kept between runs)."""
    import numpy as np
    from PIL import Image

    from tinyshot.diffusion.model import save_sd15_folder
    from tinyshot.diffusion.sd15 import rehearsal_configs, save_dino_folder
    from tinyshot.pipeline.scale_bench import RandomImages

    models = out / "models"
    sd, dino = models / "sd15-rehearsal", models / "dino-rehearsal"
    if not (sd / "model_index.json").is_file():
        save_sd15_folder(sd, seed=seed, configs=rehearsal_configs(), tag="sd15-rehearsal")
    if not (dino / "config.json").is_file():
        save_dino_folder(dino, seed=seed, width_divisor=16, full_input=True)
    data = out / "data"
    if not data.is_dir():
        source = RandomImages(SUPPORT_SIZE, np.random.default_rng(seed))
        for c in range(CLASSES):
            (data / f"class_{c}").mkdir(parents=True)
            for i, arr in enumerate(source.take(SHOTS)):
                Image.fromarray(arr).save(data / f"class_{c}" / f"{i}.png")
    return sd, dino, data


def fit_command(out: Path, sd: Path, dino: Path, data: Path, per_class: int) -> list[str]:
    config = {**CUTS, "synthetic_per_class": per_class}
    write_json(out / "rehearsal-config.json", config)
    return [
        sys.executable, "-m", "tinyshot.cli", "fit", str(data), "--out", str(out / "fit"),
        "--preset", "paper", "--config", str(out / "rehearsal-config.json"),
        "--generator", str(sd), "--teacher", str(dino), "--device", "cpu",
    ]  # fmt: skip


def _disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def run_rehearsal(
    out_dir: str | Path,
    per_class: int = 4000,
    kill: tuple[str, ...] = (),
    seed: int = 0,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """Run (or resume) the rehearsal; returns and writes OUT/rehearsal.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sd, dino, data = prepare(out, seed)
    cmd = fit_command(out, sd, dino, data, per_class)
    fit_dir = out / "fit"
    points = kill_points(fit_dir, CLASSES * per_class)
    pending = [k for k in kill if k in points]
    attempts: list[dict[str, Any]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    while True:
        t_attempt = time.perf_counter()
        with open(out / "fit-stdout.txt", "a") as log_file:
            child = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            killed = None
            while child.poll() is None and killed is None:
                time.sleep(poll_s)
                killed = next((k for k in pending if points[k]()), None)
                if killed is not None:
                    pending.remove(killed)
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    log.info("rehearsal: killed fit inside %s; starting it again", killed)
        attempts.append(
            {
                "killed_in": killed,
                "exit_code": child.returncode,
                "seconds": round(time.perf_counter() - t_attempt, 1),
            }
        )
        if killed is None:
            break
    if child.returncode != 0:
        raise SystemExit(f"rehearsal: fit failed (exit {child.returncode}); see {out}")
    summary = read_json(fit_dir / "fit.json")
    timings = read_json(fit_dir / "timings.json")
    rows = [
        {
            "stage": key.removesuffix("_s"),
            "seconds": round(timings["seconds"].get(key, 0.0), 1),
            "peak_rss_mib_last_attempt": timings.get("peak_rss_mib", {}).get(key),
            "disk_bytes": _disk(fit_dir / folder),
        }
        for key, folder in STAGE_FOLDERS.items()
    ]
    images = len(list((fit_dir / "synthetic" / "tint" / "images").rglob("*.png")))
    result = {
        "format": "tinyshot.scale-rehearsal",
        "command": cmd[1:],
        "counts": {
            "classes": CLASSES,
            "shots": SHOTS,
            "synthetic_per_class": per_class,
            "synthetic_images": images,
            "generated_size": 512,
            "teacher_input_size": summary["inputs"]["teacher"]["input_size"],
            "student": summary["student"],
        },
        "cuts": CUTS,
        "stages": rows,
        "attempts": attempts,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "run_folder_bytes": _disk(fit_dir),
        "wall_s": round(time.perf_counter() - t0, 1),
        "threads": summary.get("torch_threads"),
    }
    write_json(out / "rehearsal.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    n = result["counts"]["synthetic_images"]
    lines = [
        f"rehearsal: {n} synthetic images at 512 px, {result['threads']} threads, "
        f"{len(result['attempts'])} attempts (killed in: "
        f"{', '.join(a['killed_in'] for a in result['attempts'] if a['killed_in']) or 'none'})",
        f"{'stage':<16} {'seconds':>9} {'ms/image':>9} {'peak RSS MiB':>13} {'disk MiB':>9}",
    ]
    for r in result["stages"]:
        rss = r["peak_rss_mib_last_attempt"]
        lines.append(
            f"{r['stage']:<16} {r['seconds']:>9.1f} {1000 * r['seconds'] / max(1, n):>9.2f} "
            f"{'' if rss is None else f'{rss:.0f}':>13} {r['disk_bytes'] / 2**20:>9.1f}"
        )
    lines.append(f"run folder: {result['run_folder_bytes'] / 2**30:.2f} GiB")
    lines.append(f"wall: {result['wall_s']:.0f} s")
    lines.append(f"peak RSS: {result['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """python -m tinyshot.pipeline.rehearsal OUT [--per-class N] [--kill STAGE ...]"""
    import argparse

    from tinyshot.utils.logging import setup_logging

    p = argparse.ArgumentParser(prog="python -m tinyshot.pipeline.rehearsal")
    p.add_argument("out", help="folder (models/, data/, fit/, rehearsal.json); rerun resumes")
    p.add_argument("--per-class", type=int, default=4000, help="synthetic images per class")
    p.add_argument(
        "--kill",
        nargs="*",
        default=[],
        choices=["specialize", "generate", "labels", "distill"],
        help="SIGKILL fit once inside each of these stages, then resume it",
    )
    args = p.parse_args(argv)
    setup_logging(args.out)
    res = run_rehearsal(args.out, args.per_class, tuple(args.kill))
    print(format_table(res))
    print(json.dumps({"rehearsal": str(Path(args.out) / "rehearsal.json")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
