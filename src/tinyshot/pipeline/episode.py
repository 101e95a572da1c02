"""One few-shot episode through the whole TINT pipeline, for every requested method.

Stages, each leaving files under the episode's work folder so a killed run resumes at the
stage (and item) where it stopped:

    specialize/            TI + NTI artifacts of the episode's classes   (diffusion.specialize)
    synthetic/<gen>/       generated images per generator                 (diffusion.generate)
    labels/<source>.safetensors  teacher soft labels                      (distill.pseudo_label)
    students/<method>/     distillation checkpoints, history, result      (distill.distill)
    result.json            per-method accuracy on the episode's queries

Methods (names shared by `demo`, `benchmark` and `fit`):
    teacher       the ProtoNet teacher alone (upper reference, not tiny)
    support-only  student trained on the labelled support images only
    support+base  + teacher-labelled base-class images (the LabelHalluc setting)
    ti / dafusion / tint   + teacher-labelled synthetic images from that generator
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyshot.data.base import FewShotDataset
from tinyshot.data.episodes import Episode
from tinyshot.data.transforms import images_to_tensor
from tinyshot.errors import ConfigError
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger
from tinyshot.utils.seed import derive_seed
from tinyshot.utils.threads import note_thread_count

log = get_logger("pipeline.episode")

GENERATORS = ("ti", "dafusion", "tint")
STUDENT_METHODS = ("support-only", "support+base", *GENERATORS)
METHODS = ("teacher", *STUDENT_METHODS)
# Base-class pretrained students shipped for the demo (same file names as the cache's keys).
SHIPPED_STUDENTS = Path(__file__).resolve().parent.parent / "assets" / "students"


@dataclass
class PipelineConfig:
    """Everything that decides an episode's result; plain data (JSON config files map onto it).

    Defaults are sized for the offline Fashion-MNIST demo on a 2-core CPU; the paper's values
    are in the comments and in docs/pipeline.md.
    """

    methods: tuple[str, ...] = METHODS
    # Generator: a shipped offline model ("fashion-mnist", "glyphs"), a local folder or a hub id.
    # The benchmark runner picks the shipped one of the episode's dataset unless a method sets it.
    generator: str = "fashion-mnist"
    specialize: dict[str, Any] = field(
        default_factory=lambda: {
            "ti_steps": 150,  # paper 5000
            "ti_lr": 1e-2,  # paper 1e-3 (5k steps)
            "ti_batch_size": 5,
            "num_inference_steps": 10,  # paper 50
            "guidance": 3.0,  # paper 7.5 (SD 1.5)
            "nti_inner_steps": 5,  # paper 10
        }
    )
    synthetic_per_class: int = 50  # paper 4000
    alpha: float = 1.0
    generation_batch_size: int = 100
    # Teacher: ProtoNet on this backbone; optional meta-trained checkpoint.
    teacher: str = "efficientnet-lite0"
    teacher_input_size: int | None = 96
    teacher_checkpoint: str | None = None
    kd_temperature: float = 1.0
    # Student and its base-class pretraining (cached per dataset, paid once).
    student: str = "conv4"
    image_size: int = 32  # student input size; every source is resized to it
    pretrain_student: bool = True
    pretrain: dict[str, Any] = field(
        default_factory=lambda: {"iterations": 1500, "batch_size": 128, "lr": 0.05}
    )
    base_images: int = 1500  # base-class images pseudo-labelled per episode
    distill: dict[str, Any] = field(
        default_factory=lambda: {
            "iterations": 200,  # paper 10000
            "batch_size": 150,
            "lr": 0.02,
            "eval_every": 50,
            "checkpoint_every": 100,
        }
    )
    val_queries_per_class: int = 50  # held-out subset for the accuracy curve
    device: str = "auto"

    def validate(self) -> PipelineConfig:
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"unknown method(s) {bad}; choose from {list(METHODS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("synthetic_per_class", "image_size", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    @property
    def generators(self) -> list[str]:
        return [m for m in GENERATORS if m in self.methods]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = list(self.methods)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(known)}")
        base = cls()
        merged: dict[str, Any] = {}
        for k, v in d.items():
            cur = getattr(base, k)
            merged[k] = {**cur, **v} if isinstance(cur, dict) and isinstance(v, dict) else v
        return cls(**merged).validate()


def resolve_generator(name: str) -> str:
    """Shipped generator names map to the model folder shipped with the package."""
    from tinyshot.diffusion.pretrain import SHIPPED_GENERATORS, default_generator_path

    return str(default_generator_path(name)) if name in SHIPPED_GENERATORS else name


@dataclass
class EpisodeData:
    """The images of one episode at the student's input size, as uint8 tensors."""

    class_names: list[str]
    support_pil: list[list[Any]]  # per class, PIL images (generator input)
    support: torch.Tensor  # (NK,3,S,S) uint8
    support_labels: torch.Tensor
    query: torch.Tensor | None = None
    query_labels: torch.Tensor | None = None
    base: torch.Tensor | None = None

    @property
    def ways(self) -> int:
        return len(self.class_names)


def _uint8(images: Sequence[Any], size: int) -> torch.Tensor:
    return (images_to_tensor(list(images), size) * 255).round().to(torch.uint8)


def load_episode_data(
    episode: Episode,
    support_ds: FewShotDataset,
    query_ds: FewShotDataset | None,
    base_ds: FewShotDataset | None,
    config: PipelineConfig,
    seed: int,
) -> EpisodeData:
    size = config.image_size
    support_pil = [
        support_ds.load_images([support_ds.index_of(i) for i in ids]) for ids in episode.support
    ]
    labels = [c for c, imgs in enumerate(support_pil) for _ in imgs]
    data = EpisodeData(
        class_names=list(episode.classes),
        support_pil=support_pil,
        support=_uint8([im for imgs in support_pil for im in imgs], size),
        support_labels=torch.tensor(labels, dtype=torch.long),
    )
    if episode.query:
        qds = query_ds or support_ds
        idx, qlab = episode.query_indices(qds)
        data.query = _uint8(qds.load_images(idx), size)
        data.query_labels = torch.from_numpy(qlab)
    uses_base = any(m not in ("teacher", "support-only") for m in config.methods)
    if uses_base and base_ds is not None and config.base_images > 0:
        rng = np.random.default_rng(derive_seed(seed, "base"))
        n = min(config.base_images, len(base_ds))
        pick = np.sort(rng.choice(len(base_ds), size=n, replace=False))
        data.base = _uint8(base_ds.load_images(pick), size)
    return data


def _val_subset(
    data: EpisodeData, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if data.query is None or data.query_labels is None or per_class <= 0:
        return None
    g = torch.Generator().manual_seed(derive_seed(seed, "val") % 2**63)
    keep = []
    for c in range(data.ways):
        idx = torch.nonzero(data.query_labels == c).view(-1)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    sel = torch.cat(keep)
    return data.query[sel], data.query_labels[sel]


def specialize_and_generate(
    data: EpisodeData, config: PipelineConfig, work_dir: Path, seed: int
) -> dict[str, Any]:
    """Stage 1: TINT specialization, then each requested generator's synthetic set."""
    from tinyshot.diffusion.config import SpecializeConfig
    from tinyshot.diffusion.generate import generate
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.diffusion.specialize import specialize

    stores: dict[str, Any] = {}
    if not config.generators:
        return stores
    model = load_diffusion_model(resolve_generator(config.generator), device=config.device)
    spec_cfg = SpecializeConfig.from_dict(
        {**config.specialize, "seed": derive_seed(seed, "spec") % 2**31}
    )
    t0 = time.perf_counter()
    artifacts = specialize(
        model, data.support_pil, data.class_names, spec_cfg, work_dir / "specialize"
    )
    timings = {"specialize_s": time.perf_counter() - t0}
    for gen in config.generators:
        t0 = time.perf_counter()
        stores[gen] = generate(
            model,
            artifacts,
            method=gen,
            n_per_class=config.synthetic_per_class,
            out_dir=work_dir / "synthetic" / gen,
            alpha=config.alpha,
            batch_size=config.generation_batch_size,
            seed=derive_seed(seed, "generate") % 2**31,
        )
        timings[f"generate_{gen}_s"] = time.perf_counter() - t0
    stores["_timings"] = timings
    return stores


def build_episode_teacher(data: EpisodeData, config: PipelineConfig):
    from tinyshot.models.teacher import build_teacher

    kw: dict[str, Any] = {}
    if config.teacher_input_size:
        kw["input_size"] = config.teacher_input_size
    with torch.random.fork_rng(devices=[]):  # a randomly initialised part is seeded too
        torch.manual_seed(derive_seed("teacher", config.teacher) % 2**63)
        teacher = build_teacher(config.teacher, checkpoint=config.teacher_checkpoint, **kw)
    teacher.eval()
    teacher.set_support(data.support.float() / 255.0, data.support_labels)
    return teacher


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
    )
    return student, result


def run_pipeline_episode(
    episode: Episode,
    support_ds: FewShotDataset,
    query_ds: FewShotDataset | None,
    base_ds: FewShotDataset | None,
    config: PipelineConfig,
    work_dir: str | Path,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """All requested methods on one episode; returns method -> {"accuracy", "queries", ...}.

    A finished episode (work_dir/result.json) is returned as stored.
    """
    from tinyshot.distill.pseudo_label import pseudo_label
    from tinyshot.evaluation.episodic import evaluate_student

    config.validate()
    work = Path(work_dir)
    done = work / "result.json"
    if done.is_file():
        return read_json(done)["methods"]
    work.mkdir(parents=True, exist_ok=True)
    note_thread_count(work)  # a resume with another thread count is warned about
    write_json(
        work / "config.json",
        {"config": config.to_dict(), "episode": episode.to_dict(), "seed": seed},
    )
    data = load_episode_data(episode, support_ds, query_ds, base_ds, config, seed)
    if data.query is None:
        raise ConfigError("the episode has no query images to evaluate on")
    n_query = int(data.query.shape[0])
    results: dict[str, dict[str, Any]] = {}

    gen = specialize_and_generate(data, config, work, seed)
    synthetic = {g: gen[g].load_tensor()[0] for g in config.generators}
    synthetic = {g: _resize_uint8(x, config.image_size) for g, x in synthetic.items()}

    t0 = time.perf_counter()
    teacher = build_episode_teacher(data, config)
    labels: dict[str, torch.Tensor] = {}
    if data.base is not None:
        labels["base"] = pseudo_label(teacher, data.base, work / "labels" / "base.safetensors")
    for g, x in synthetic.items():
        labels[g] = pseudo_label(teacher, x, work / "labels" / f"{g}.safetensors")
    if "teacher" in config.methods:
        probs = teacher.predict_proba(data.query.float() / 255.0)
        acc = float((probs.argmax(1) == data.query_labels).double().mean())
        results["teacher"] = {"accuracy": acc, "queries": n_query}
    teacher_s = time.perf_counter() - t0
    del teacher

    pretrained = (
        pretrained_student_path(base_ds, config)
        if any(m in STUDENT_METHODS for m in config.methods)
        else None
    )
    val = _val_subset(data, config.val_queries_per_class, seed)
    for method in config.methods:
        if method == "teacher":
            continue
        t0 = time.perf_counter()
        student, distilled = distill_student(
            method,
            data,
            labels,
            synthetic,
            pretrained,
            config,
            work / "students" / method,
            seed,
            val,
        )
        acc = evaluate_student(student, data.query, data.query_labels)
        results[method] = {
            "accuracy": acc,
            "queries": n_query,
            "seconds": time.perf_counter() - t0,
            "iterations": distilled.steps,
        }
    if "teacher" in results:
        results["teacher"]["seconds"] = teacher_s
    timings = {**gen.get("_timings", {}), "teacher_and_labels_s": teacher_s}
    write_json(
        done, {"methods": results, "timings": timings, "episode": episode.to_dict(), "seed": seed}
    )
    return results


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    y = torch.nn.functional.interpolate(
        xf, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return (y.clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------ benchmark runner adapter

DEFAULT_METHODS: dict[str, dict[str, Any]] = {m: {} for m in METHODS}


def pipeline_config_from_methods(methods: dict[str, dict[str, Any]]) -> PipelineConfig:
    """Method configs hold PipelineConfig overrides; all methods of one run share one pipeline,
    so a key given twice with different values is an error rather than a silent pick."""
    merged: dict[str, Any] = {}
    for name, cfg in methods.items():
        if name not in METHODS:
            raise ConfigError(f"--method: unknown method {name!r}; choose from {list(METHODS)}")
        for k, v in (cfg or {}).items():
            if k in merged and merged[k] != v:
                raise ConfigError(
                    f"--method {name}: {k}={v!r} conflicts with {k}={merged[k]!r} from another "
                    "method; methods of one benchmark share the pipeline configuration"
                )
            merged[k] = v
    merged["methods"] = [m for m in METHODS if m in methods]
    return PipelineConfig.from_dict(merged)


def check_methods(methods: dict[str, dict[str, Any]]) -> None:
    pipeline_config_from_methods(methods)


def _base_dataset(meta: dict[str, Any]) -> FewShotDataset | None:
    from tinyshot.data.registry import dataset_info, load_dataset

    ds = meta.get("dataset") or {}
    name = ds.get("name")
    if not name or name == "imagefolder":
        return None
    info = dataset_info(name)
    return load_dataset(name, info.base_split, root=ds.get("root"), **(ds.get("options") or {}))


def task_pipeline_config(methods: dict[str, dict[str, Any]], dataset: str | None) -> PipelineConfig:
    """The pipeline of a benchmark task: unless a method names a generator, a dataset with a
    shipped generator gets it (glyph episodes must not be drawn by the Fashion-MNIST model)."""
    from tinyshot.diffusion.pretrain import SHIPPED_GENERATORS

    config = pipeline_config_from_methods(methods)
    if dataset in SHIPPED_GENERATORS and not any(
        "generator" in (c or {}) for c in methods.values()
    ):
        config.generator = dataset
    return config


def run_episode(task: Any) -> dict[str, dict[str, Any]]:
    """The benchmark runner's default episode function (see pipeline.benchmark.EpisodeTask)."""
    config = task_pipeline_config(task.methods, (task.meta.get("dataset") or {}).get("name"))
    config.device = getattr(task, "device", "auto") or "auto"
    support_ds, query_ds = task.datasets()
    base_ds = _base_dataset(task.meta)
    return run_pipeline_episode(
        task.episode, support_ds, query_ds, base_ds, config, task.work_dir, task.seed
    )
