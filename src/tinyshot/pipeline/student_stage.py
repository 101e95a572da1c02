"""The episode's students: the base-class pretrained backbone they all start from (pretrained
once per dataset into the cache, shipped for the demo), and one method's student distilled from
the sources that method uses."""

from __future__ import annotations

from pathlib import Path

import torch

from tinyshot.data.base import FewShotDataset
from tinyshot.pipeline.config import GENERATORS, PipelineConfig
from tinyshot.pipeline.episode_data import EpisodeData
from tinyshot.utils.logging import get_logger
from tinyshot.utils.seed import derive_seed

log = get_logger("pipeline.student_stage")

# Base-class pretrained students shipped for the demo (same file names as the cache's keys).
SHIPPED_STUDENTS = Path(__file__).resolve().parent.parent / "assets" / "students"


def pretrained_student_path(base_ds: FewShotDataset | None, config: PipelineConfig) -> Path | None:
    """Base-class pretraining of the student, cached in $TINYSHOT_CACHE (paid once per dataset)."""
    if not config.pretrain_student or base_ds is None:
        return None
    from tinyshot.distill.pretrain_student import PretrainConfig, checkpoint_path, pretrain_student
    from tinyshot.utils.paths import cache_dir

    pcfg = PretrainConfig(**{**config.pretrain, "input_size": config.image_size})
    out = cache_dir() / "students"
    path = checkpoint_path(config.student, base_ds, pcfg, out)
    shipped = SHIPPED_STUDENTS / path.name  # the demo's pretraining ships with the package
    if not path.is_file() and shipped.is_file():
        log.info("using the shipped pretrained %s backbone %s", config.student, shipped.name)
        return shipped
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent episodes (Ray workers sharing the cache) pretrain once; the others wait.
    with FileLock(f"{path}.lock"):
        if not path.is_file() or not read_pretrain_done(path):
            log.info(
                "pretraining %s on %s/%s (cached for later episodes)",
                config.student,
                base_ds.name,
                base_ds.split,
            )
            pretrain_student(config.student, base_ds, pcfg, out)
    return path


def read_pretrain_done(path: Path) -> bool:
    from tinyshot.utils.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    return bool(state["extra"].get("done", state["meta"].get("done", True)))


def distill_student(
    method: str,
    data: EpisodeData,
    labels: dict[str, torch.Tensor],
    synthetic: dict[str, torch.Tensor],
    pretrained: Path | None,
    config: PipelineConfig,
    run_dir: Path,
    seed: int,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    val_name: str = "accuracy on held-out query images",
):
    """Stage 3 for one method: a fresh student (pretrained backbone, new N-way head) distilled."""
    from tinyshot.distill.config import DistillConfig
    from tinyshot.distill.distill import distill
    from tinyshot.distill.pretrain_student import load_pretrained_backbone
    from tinyshot.models.students import build_student

    sources = ["support"]
    base = syn = None
    if method != "support-only" and data.base is not None:
        sources.append("base")
        base = (data.base, labels["base"])
    if method in GENERATORS:
        sources.append("synthetic")
        syn = (synthetic[method], labels[method])
    dcfg = DistillConfig.from_dict(
        {
            **config.distill,
            "sources": sources,
            "kd_temperature": config.kd_temperature,
            "input_size": config.image_size,
            "seed": derive_seed(seed, "distill", method) % 2**31,
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head", method) % 2**63)
        student = build_student(config.student, data.ways, config.image_size)
    if pretrained is not None:
        load_pretrained_backbone(student, pretrained)
    result = distill(
        student,
        support=(data.support, data.support_labels),
        base=base,
        synthetic=syn,
        config=dcfg,
        run_dir=run_dir,
        val=val,
        device=None if config.device == "auto" else config.device,
        val_name=val_name,
    )
    return student, result


def sources_of(method: str, has_base: bool) -> list[str]:
    """What a student method learns from (the rule of distill_student, for the health record)."""
    src = ["support"]
    if method not in ("support-only", "teacher") and has_base:
        src.append("base")
    if method in GENERATORS:
        src.append(f"synthetic:{method}")
    return src
