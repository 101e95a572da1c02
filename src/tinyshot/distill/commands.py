"""CLI: `tinyshot train-teacher` (P>M>F meta-training of the teacher) and
`tinyshot pretrain-student` (base-class pretraining of a student backbone)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-teacher", help="meta-train the ProtoNet teacher on base classes")
    _dataset_args(p)
    p.add_argument(
        "--backbone",
        default="efficientnet-lite0",
        help="efficientnet-lite0 (offline default), dino-vitb16, dinov2-small, dinov2-base, "
        "a ViT / DINOv2 folder or hub id",
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
    # = MetaTrainConfig's HEAD_LR / BACKBONE_LR (no torch at start-up); a test keeps them equal
    p.add_argument(
        "--lr", type=float, default=3e-3, help="ProtoNet head (scale, bias) lr (default 3e-3)"
    )
    p.add_argument(
        "--backbone-lr",
        type=float,
        default=1e-5,
        help="backbone lr (default 1e-5, kept low so pretrained features survive; "
        "a random-init backbone wants --lr's value; 0 freezes it)",
    )
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
    p.add_argument("--arch", choices=["conv4", "resnet12", "efficientnet-lite0"], default="conv4")
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
