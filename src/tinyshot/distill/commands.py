"""CLI: `tinyshot train-teacher` (meta-training), `tinyshot pretrain-student` (base classes),
`tinyshot evaluate` (a ProtoNet teacher over an episode file) and `tinyshot fd` (Frechet
distances between two image folders: FD-EffNetLite0 offline, FID-64 with weights)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-teacher", help="meta-train the ProtoNet teacher on base classes")
    _dataset_args(p)
    p.add_argument(
        "--backbone",
        default="efficientnet-lite0",
        help="efficientnet-lite0 (offline default), dino-vitb16, a ViT folder or hub id",
    )
    p.add_argument(
        "--input-size", type=int, default=None, help="backbone input size (default: its own, 224)"
    )
    p.add_argument("--run-dir", required=True, help="checkpoint + log folder; rerun to resume")
    p.add_argument("--episodes-per-epoch", type=int, default=400)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--backbone-lr", type=float, default=None, help="backbone lr (default: --lr)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_train_teacher)

    p = sub.add_parser(
        "pretrain-student", help="pretrain a student backbone on base classes (CE + rotation)"
    )
    _dataset_args(p)
    p.add_argument("--arch", choices=["conv4", "resnet12"], default="conv4")
    p.add_argument(
        "--out", required=True, help="cache folder (or a .pt path); reused when it exists"
    )
    p.add_argument("--input-size", type=int, default=84)
    p.add_argument("--epochs", type=float, default=65.0)
    p.add_argument("--iterations", type=int, default=None, help="overrides --epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--rotation-weight", type=float, default=1.0, help="0 disables rotation prediction"
    )
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_pretrain_student)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a ProtoNet teacher on every episode of an episode file (95%% t-CI)",
        description="ProtoNet accuracy of a teacher on each episode of an episode file, using "
        "all the queries the file lists. Writes per-episode accuracies and the mean with a "
        "Student-t confidence interval as JSON (resumable), and prints a table.",
    )
    p.add_argument("--episodes", required=True, type=Path, help="episode file (tinyshot episodes)")
    p.add_argument(
        "--teacher",
        default="efficientnet-lite0",
        help="teacher backbone: efficientnet-lite0 (offline default), dino-vitb16, conv4, "
        "resnet12, or a local ViT folder / hub id",
    )
    p.add_argument("--teacher-checkpoint", type=Path, help="meta-trained teacher checkpoint")
    p.add_argument("--teacher-input-size", type=int, help="backbone input size (default: its own)")
    p.add_argument("--root", type=Path, help="dataset folder (overrides the episode file's root)")
    p.add_argument(
        "--out", type=Path, help="results JSON (default: <episodes>.<teacher>.results.json)"
    )
    p.add_argument("--limit", type=int, help="only the first N episodes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    f = sub.add_parser(
        "fd",
        help="Frechet distances between two image folders (FD-EffNetLite0; FID-64 with weights)",
        description="Frechet distance between the images of two folders (searched recursively). "
        "FD-EffNetLite0 uses EfficientNet-Lite0 pooled features (offline; not comparable with "
        "FID). FID-64 (the paper's metric) needs pytorch-fid's Inception weights as a local file.",
    )
    f.add_argument("--real", required=True, type=Path, help="folder of real images")
    f.add_argument("--fake", required=True, type=Path, help="folder of generated images")
    f.add_argument("--inception-weights", type=Path, help="pt_inception-2015-12-05 .pth for FID-64")
    f.add_argument("--no-effnet", action="store_true", help="skip FD-EffNetLite0")
    f.add_argument("--limit", type=int, help="at most N images per folder (sorted by path)")
    f.add_argument("--batch-size", type=int, default=50)
    f.add_argument("--device", default="auto")
    f.add_argument("--out", type=Path, help="write the results as JSON")
    f.set_defaults(func=cmd_fd)


def _default_out(episodes: Path, teacher: str) -> Path:
    tag = Path(teacher).name.replace("/", "_") or "teacher"
    return episodes.with_name(f"{episodes.stem}.{tag}.results.json")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tinyshot.errors import ConfigError
    from tinyshot.evaluation.episodic import evaluate_teacher_on_episode_file
    from tinyshot.models.teacher import build_teacher
    from tinyshot.utils.device import resolve_device

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    dev = resolve_device(args.device)
    kw = {"input_size": args.teacher_input_size} if args.teacher_input_size else {}
    teacher = build_teacher(args.teacher, checkpoint=args.teacher_checkpoint, **kw).to(dev).eval()
    out = args.out or _default_out(args.episodes, args.teacher)
    name = (
        args.teacher
        if args.teacher_checkpoint is None
        else f"{args.teacher}@{args.teacher_checkpoint}"
    )
    results = evaluate_teacher_on_episode_file(
        teacher,
        args.episodes,
        out,
        root=args.root,
        teacher_name=name,
        method=f"teacher ({args.teacher})",
        batch_size=args.batch_size,
        limit=args.limit,
    )
    Console().print(results.table(title=f"{args.episodes.name}: ProtoNet teacher"))
    print(f"per-episode accuracies: {out}")
    return 0


def cmd_fd(args: argparse.Namespace) -> int:
    from tinyshot.errors import ConfigError
    from tinyshot.evaluation.frechet import efficientnet_frechet, read_image_dir
    from tinyshot.utils.io import write_json

    if args.no_effnet and args.inception_weights is None:
        raise ConfigError("nothing to compute: --no-effnet without --inception-weights")
    real = read_image_dir(args.real, args.limit)
    fake = read_image_dir(args.fake, args.limit)
    results = []
    if args.inception_weights is not None:
        from tinyshot.evaluation.inception import fid64

        results.append(fid64(real, fake, args.inception_weights, args.batch_size, args.device))
    if not args.no_effnet:
        results.append(
            efficientnet_frechet(real, fake, batch_size=args.batch_size, device=args.device)
        )
    for r in results:
        print(
            f"{r.metric}: {r.value:.4f}  ({r.n_a} real vs {r.n_b} generated images, {r.feature_dim}-d)"
        )
    if args.out:
        write_json(
            args.out,
            {
                "real": str(args.real),
                "fake": str(args.fake),
                "results": [r.to_dict() for r in results],
            },
        )
        print(f"wrote {args.out}")
    else:
        print(json.dumps({r.metric: r.value for r in results}))
    return 0


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="a dataset name from `tinyshot datasets`")
    p.add_argument("--split", default=None, help="default: the dataset's base split")
    p.add_argument("--root", default=None, help="dataset folder (where needed)")


def _load_base(args: argparse.Namespace):
    from tinyshot.data.registry import dataset_info, load_dataset

    split = args.split or dataset_info(args.dataset).base_split
    return load_dataset(args.dataset, split, args.root)


def _train_teacher(args: argparse.Namespace) -> int:
    from tinyshot.distill.meta_train import MetaTrainConfig, meta_train_teacher
    from tinyshot.models.teacher import build_teacher

    cfg = MetaTrainConfig(
        episodes_per_epoch=args.episodes_per_epoch,
        epochs=args.epochs,
        ways=args.ways,
        shots=args.shots,
        queries=args.queries,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
    )
    cfg.validate()
    ds = _load_base(args)
    teacher = build_teacher(args.backbone, input_size=args.input_size)
    meta_train_teacher(teacher, ds, cfg, args.run_dir)
    print(f"teacher checkpoint: {Path(args.run_dir) / 'teacher.pt'}")
    return 0


def _pretrain_student(args: argparse.Namespace) -> int:
    from tinyshot.distill.pretrain_student import PretrainConfig, checkpoint_path, pretrain_student

    cfg = PretrainConfig(
        epochs=args.epochs,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        rotation_weight=args.rotation_weight,
        input_size=args.input_size,
        augment=not args.no_augment,
        max_per_class=args.max_per_class,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
    )
    cfg.validate()
    ds = _load_base(args)
    pretrain_student(args.arch, ds, cfg, args.out)
    print(f"pretrained student: {checkpoint_path(args.arch, ds, cfg, args.out)}")
    return 0
