"""`tinyshot pretrain-generator`: train the project's own small text-to-image model offline."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from tinyshot.diffusion.pretrain import RECIPES, PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain-generator",
        help="train the small pixel-space text-to-image model (UNet + CLIP text encoder)",
        description=(
            "Train a small UNet2DConditionModel + CLIPTextModel on captioned images and write a "
            "diffusers-layout model folder to OUT/model. The defaults reproduce the shipped "
            "Fashion-MNIST generator. Kill it any time; rerun with --resume to continue."
        ),
    )
    p.add_argument("--dataset", choices=sorted(RECIPES), default="fashion-mnist",
                   help="captioning recipe (default: fashion-mnist)")  # fmt: skip
    p.add_argument("--out", required=True, help="run folder (checkpoint, log.txt, model/)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per step (default {d.batch_size})")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                   help="start from this model folder's weights (same architecture) with a fresh "
                   "optimizer and LR schedule: a second training phase")  # fmt: skip
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--offset-noise", type=float, default=d.offset_noise,
                   help="offset-noise strength (0.1 is usual): per-image, per-channel noise "
                   "offsets, so samples can reach the data's black backgrounds "
                   f"(default {d.offset_noise})")  # fmt: skip
    p.add_argument("--root", default=None, help="dataset folder (default: the Debian package's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--grid", action="store_true",
                   help="also write OUT/grid.png (class captions + generic caption, 8 samples each)")  # fmt: skip
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from tinyshot.diffusion.pretrain import (
        MODEL_SUBDIR,
        RECIPES,
        PretrainConfig,
        default_grid_captions,
        folder_size_mb,
        sample_grid,
        save_grid,
        train_generator,
    )
    from tinyshot.utils.seed import derive_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        offset_noise=args.offset_noise,
        init_from=str(Path(args.init_from).resolve()) if args.init_from else None,
    )
    data = RECIPES[args.dataset](image_size=cfg.image_size, seed=args.seed, root=args.root)
    command = "tinyshot " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train_generator(
        data, args.out, cfg, resume=args.resume, command=command, device=args.device
    )
    if summary["steps_done"] < cfg.steps:
        return 1

    model_dir = Path(args.out) / MODEL_SUBDIR
    print(
        f"model folder: {model_dir} ({folder_size_mb(model_dir):.1f} MB); "
        f"{summary['steps_done']} steps in {summary['train_seconds']:.0f} s; "
        f"loss {summary['loss_first_100']:.4f} -> {summary['loss_last_100']:.4f}"
    )
    if args.grid:
        grid = sample_grid(model_dir, default_grid_captions(model_dir), 8, 50, 2.0,
                           derive_seed(args.seed, "grid"))  # fmt: skip
        print(f"sample grid: {save_grid(grid, Path(args.out) / 'grid.png')}")
    return 0
