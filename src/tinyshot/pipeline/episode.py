"""One few-shot episode through the whole TINT pipeline, for every requested method.

Stages, each leaving files under the episode's work folder so a killed run resumes at the
stage (and item) where it stopped:

    specialize/            TI + NTI artifacts of the episode's classes   (diffusion.specialize)
    synthetic/<gen>/       generated images per generator                 (diffusion.generate)
    labels/<source>.safetensors  teacher soft labels                      (distill.pseudo_label)
    student_images/<gen>.npy     the images at the student's size, mapped (distill.image_cache)
    students/<method>/     distillation checkpoints, history, result      (distill.distill)
    result.json            per-method accuracy on the episode's queries

Methods (names shared by `demo`, `benchmark` and `fit`):
    teacher       the ProtoNet teacher alone (upper reference, not tiny)
    support-only  student trained on the labelled support images only
    support+base  + teacher-labelled base-class images (the LabelHalluc setting)
    ti / dafusion / tint   + teacher-labelled synthetic images from that generator
    name          + teacher-labelled images from "a photo of a {class name}" (no TI/NTI)

Each model sees its own input: the generator the images prepared as its training images were
(diffusion.upscale.prepare_for_generator), the teacher the original images (resized only to its
own input size when they differ in size or are larger), the student the images at its input
size. Generated images lose a pad-mode generator's border (crop_generator_frame) before the
teacher or the student sees them, so real and synthetic images share one frame.

Memory does not grow with the synthetic count: the teacher and the health checks read the
stores slice by slice (diffusion.store.StoreView), the student trains from a memory-mapped
file at its input size, and base-class images reach the teacher the same way
(docs/pipeline.md, "Memory and disk at scale").
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
from tinyshot.data.transforms import (
    crop_generator_frame,
    exact_uint8,
    images_to_uint8,
    shrink_uint8,
    teacher_view,
)
from tinyshot.diffusion.config import DEMO_DDIM_STEPS
from tinyshot.errors import ConfigError
from tinyshot.utils.device import resolve_device
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger
from tinyshot.utils.seed import derive_seed
from tinyshot.utils.threads import note_thread_count
from tinyshot.utils.timing import StageTimes

log = get_logger("pipeline.episode")

GENERATORS = ("name", "ti", "dafusion", "tint")
# Generators that need the episode's TI/NTI specialization ("name" needs none).
SPECIALIZED = ("ti", "dafusion", "tint")
# Two cheap ImageNet backbones plus the base-pretrained student (models.ensemble.ENSEMBLES);
# `tinyshot evaluate` and the teacher baseline default to it too.
DEFAULT_TEACHER = "effnet-lite-student"
STUDENT_METHODS = ("support-only", "support+base", *GENERATORS)
METHODS = ("teacher", *STUDENT_METHODS)
# Base-class pretrained students shipped for the demo (same file names as the cache's keys).
SHIPPED_STUDENTS = Path(__file__).resolve().parent.parent / "assets" / "students"
# Images per step of streamed work (teacher labelling, student image files, base images): the
# resumable unit of pseudo-labelling; 512 images at 224 px are 77 MB as uint8.
STREAM_CHUNK = 512


@dataclass
class PipelineConfig:
    """Everything that decides an episode's result; plain data (JSON config files map onto it).

    Defaults are sized for the offline Fashion-MNIST demo on a 2-core CPU (the `demo` preset);
    the paper's values are the `paper` preset (tinyshot.presets, = configs/paper.toml), and
    docs/pipeline.md sets the two side by side.
    """

    methods: tuple[str, ...] = METHODS
    # Generator: a shipped offline model ("fashion-mnist", "glyphs"), a local folder or a hub id.
    # The benchmark runner picks the shipped one of the episode's dataset unless a method sets it.
    generator: str = "fashion-mnist"
    specialize: dict[str, Any] = field(
        default_factory=lambda: {
            "ti_steps": 150,
            "ti_lr": 1e-2,  # a larger step for the short CPU budget
            "ti_batch_size": 5,
            # NTI still beats plain CFG by 9.9-15.1 dB at this count (docs/generator.md)
            "num_inference_steps": DEMO_DDIM_STEPS,
            "guidance": 3.0,
            "nti_inner_steps": 10,
            "nti_lr": 1.0,  # this small text encoder needs a larger step than SD's
        }
    )
    synthetic_per_class: int = 50
    alpha: float = 1.0
    generation_batch_size: int = 100
    # Teacher: ProtoNet on this backbone; optional meta-trained checkpoint.
    # Two cheap ImageNet backbones plus the base-pretrained student (models.ensemble.ENSEMBLES).
    teacher: str = DEFAULT_TEACHER
    teacher_input_size: int | None = 96
    teacher_checkpoint: str | None = None
    kd_temperature: float = 1.0
    # Student and its base-class pretraining (cached per dataset, paid once).
    student: str = "conv4"
    image_size: int = 32  # student input size; every student source is resized to it
    pretrain_student: bool = True
    pretrain: dict[str, Any] = field(
        default_factory=lambda: {"iterations": 1500, "batch_size": 128, "lr": 0.05}
    )
    base_images: int = 1500  # base-class images pseudo-labelled per episode
    distill: dict[str, Any] = field(
        default_factory=lambda: {
            "iterations": 200,
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
    """The images of one episode as uint8 tensors: at the student's input size (support, query,
    base) and as the teacher sees them (teacher_*: the originals, see teacher_view)."""

    class_names: list[str]
    support_pil: list[list[Any]]  # per class, PIL images (generator input)
    support: torch.Tensor  # (NK,3,S,S) uint8
    support_labels: torch.Tensor
    query: torch.Tensor | None = None
    query_labels: torch.Tensor | None = None
    base: torch.Tensor | None = None
    teacher_support: torch.Tensor | None = None
    teacher_query: torch.Tensor | None = None
    # the base images as the teacher sees them, loaded slice by slice (DatasetView) or a tensor
    teacher_base: Any = None

    @property
    def ways(self) -> int:
        return len(self.class_names)


def _uint8(images: Sequence[Any], size: int | None) -> torch.Tensor:
    return images_to_uint8(list(images), size)


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    """ImageStore tensors are floats k/255: back to their exact uint8 values."""
    return x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)


def teacher_synthetic(x: torch.Tensor, prep: Any, size: int | None) -> torch.Tensor:
    """Generated images as the teacher sees them: without the generator's pad frame, shrunk
    only when larger than its input size (in-memory form of StoreView's "shrink" mode)."""
    return shrink_uint8(crop_generator_frame(_as_uint8(x), prep), size)


def student_synthetic(x: torch.Tensor, prep: Any, size: int, chunk: int = 1000) -> torch.Tensor:
    """Generated images as the student sees them: without the pad frame, at its input size, by
    the same resize its real images get, so a generated image equal to a prepared support is
    exactly that support to the student (in-memory form of StoreView's "exact")."""
    return exact_uint8(crop_generator_frame(_as_uint8(x), prep), size, chunk)


def generator_prep(config: PipelineConfig) -> Any:
    """The configured generator's image preparation (from its tinyshot.json; no weights read)."""
    from tinyshot.diffusion.model import read_image_prep

    return read_image_prep(resolve_generator(config.generator))


def store_size(config: PipelineConfig) -> int | None:
    """The side a synthetic store keeps: the largest input size of any model that reads it
    (None when the teacher's size is left to its backbone: the generated size is kept)."""
    if not config.teacher_input_size:
        return None
    return max(int(config.teacher_input_size), int(config.image_size))


class DatasetView:
    """Dataset images (at `indices`) as a teacher sees them (teacher_view), loaded slice by
    slice: `view[a:b]` is uint8 (n,3,S,S)."""

    def __init__(self, ds: FewShotDataset, indices: np.ndarray, size: int | None) -> None:
        self.ds, self.indices, self.size = ds, np.asarray(indices), size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: slice) -> torch.Tensor:
        return teacher_view(self.ds.load_images(self.indices[key].tolist()), self.size)

    def source_id(self) -> str:
        import hashlib

        ids = [self.ds.item_id(int(i)) for i in self.indices]
        key = {"dataset": self.ds.name, "split": self.ds.split, "size": self.size, "items": ids}
        return hashlib.sha256(repr(key).encode()).hexdigest()


def load_base_images(
    base_ds: FewShotDataset, config: PipelineConfig, seed: int
) -> tuple[torch.Tensor, DatasetView]:
    """config.base_images base-class images drawn with the run's seed: at the student's size in
    memory (bounded by base_images), and for the teacher as a DatasetView."""
    rng = np.random.default_rng(derive_seed(seed, "base"))
    n = min(config.base_images, len(base_ds))
    pick = np.sort(rng.choice(len(base_ds), size=n, replace=False))
    student = torch.cat(
        [
            _uint8(base_ds.load_images(pick[i : i + STREAM_CHUNK].tolist()), config.image_size)
            for i in range(0, n, STREAM_CHUNK)
        ]
    )
    return student, DatasetView(base_ds, pick, config.teacher_input_size)


def label_images(teacher: Any, images: Any, path: Path) -> torch.Tensor:
    """Teacher soft labels of a tensor, or of a view read slice by slice (StoreView,
    DatasetView), cached at `path` (distill.pseudo_label)."""
    from tinyshot.distill.pseudo_label import pseudo_label

    if isinstance(images, torch.Tensor):
        return pseudo_label(teacher, images, path)
    return pseudo_label(
        teacher,
        lambda a, b: images[a:b],
        path,
        num_images=len(images),
        source_id=images.source_id(),
        chunk_size=STREAM_CHUNK,
    )


@dataclass
class SyntheticSet:
    """One generator's images as the pipeline uses them; nothing here holds the set in memory."""

    teacher_view: Any  # diffusion.store.StoreView at the teacher's input size
    student: torch.Tensor  # (N,3,S,S) uint8 at the student's size, memory-mapped
    labels: torch.Tensor  # (N, ways) teacher soft labels


def synthetic_sets(
    teacher: Any,
    stores: dict[str, Any],
    config: PipelineConfig,
    work: Path,
    times: StageTimes | None = None,
) -> dict[str, SyntheticSet]:
    """Teacher labels and the student's image file of every generator's store, streamed
    (timed as teacher_s and student_images_s when `times` is given)."""
    from tinyshot.diffusion.store import StoreView
    from tinyshot.distill.image_cache import cached_images

    times = times or StageTimes(work)
    prep = generator_prep(config)
    seen, labels, student = {}, {}, {}
    with times.stage("teacher_s"):
        for g in config.generators:
            seen[g] = StoreView(stores[g], prep, teacher.input_size, "shrink")
            labels[g] = label_images(teacher, seen[g], work / "labels" / f"{g}.safetensors")
    with times.stage("student_images_s"):
        for g in config.generators:
            small = StoreView(stores[g], prep, config.image_size, "exact")
            student[g] = cached_images(
                lambda a, b, v=small: v[a:b],
                len(small),
                config.image_size,
                work / "student_images" / f"{g}.npy",
                small.source_id(),
                chunk_size=STREAM_CHUNK,
            )
    return {g: SyntheticSet(seen[g], student[g], labels[g]) for g in config.generators}


def load_episode_data(
    episode: Episode,
    support_ds: FewShotDataset,
    query_ds: FewShotDataset | None,
    base_ds: FewShotDataset | None,
    config: PipelineConfig,
    seed: int,
) -> EpisodeData:
    size = config.image_size
    tsize = config.teacher_input_size
    support_pil = [
        support_ds.load_images([support_ds.index_of(i) for i in ids]) for ids in episode.support
    ]
    labels = [c for c, imgs in enumerate(support_pil) for _ in imgs]
    flat = [im for imgs in support_pil for im in imgs]
    data = EpisodeData(
        class_names=list(episode.classes),
        support_pil=support_pil,
        support=_uint8(flat, size),
        support_labels=torch.tensor(labels, dtype=torch.long),
        teacher_support=teacher_view(flat, tsize),
    )
    if episode.query:
        qds = query_ds or support_ds
        idx, qlab = episode.query_indices(qds)
        query_pil = qds.load_images(idx)
        data.query = _uint8(query_pil, size)
        data.teacher_query = teacher_view(query_pil, tsize)
        data.query_labels = torch.from_numpy(qlab)
    uses_base = any(m not in ("teacher", "support-only") for m in config.methods)
    if uses_base and base_ds is not None and config.base_images > 0:
        data.base, data.teacher_base = load_base_images(base_ds, config, seed)
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
    from tinyshot.diffusion.generate import generate, generate_from_names
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.diffusion.specialize import specialize

    stores: dict[str, Any] = {}
    if not config.generators:
        return stores
    model = load_diffusion_model(resolve_generator(config.generator), device=config.device)
    spec_cfg = SpecializeConfig.from_dict(
        {**config.specialize, "seed": derive_seed(seed, "spec") % 2**31}
    )
    times = StageTimes(work_dir)  # summed over attempts: a resumed run reports the total
    artifacts = None
    if any(g in SPECIALIZED for g in config.generators):
        with times.stage("specialize_s"):
            artifacts = specialize(
                model, data.support_pil, data.class_names, spec_cfg, work_dir / "specialize"
            )
    keep = store_size(config)
    for gen in config.generators:
        with times.stage(f"generate_{gen}_s"):
            if gen == "name":
                stores[gen] = generate_from_names(
                    model,
                    data.class_names,
                    n_per_class=config.synthetic_per_class,
                    out_dir=work_dir / "synthetic" / gen,
                    batch_size=config.generation_batch_size,
                    seed=derive_seed(seed, "generate") % 2**31,
                    guidance=spec_cfg.guidance,
                    steps=spec_cfg.num_inference_steps,
                    timestep_spacing=spec_cfg.timestep_spacing,
                    store_size=keep,
                )
                continue
            assert artifacts is not None
            stores[gen] = generate(
                model,
                artifacts,
                method=gen,
                n_per_class=config.synthetic_per_class,
                out_dir=work_dir / "synthetic" / gen,
                alpha=config.alpha,
                batch_size=config.generation_batch_size,
                seed=derive_seed(seed, "generate") % 2**31,
                store_size=keep,
            )
    totals = times.totals()
    keys = [
        *(["specialize_s"] if artifacts is not None else []),
        *(f"generate_{g}_s" for g in config.generators),
    ]
    stores["_timings"] = {k: totals.get(k, 0.0) for k in keys}
    return stores


def build_episode_teacher(
    data: EpisodeData, config: PipelineConfig, pretrained_student: Path | None = None
):
    """The configured teacher with its supports set; a `student` member of its spec is the
    run's base-class pretrained student (`pretrained_student`), left out with a warning when
    the run has none."""
    from tinyshot.models.ensemble import with_student
    from tinyshot.models.teacher import build_teacher

    spec, warning = with_student(config.teacher, pretrained_student)
    if warning:
        log.warning("%s", warning)
    kw: dict[str, Any] = {}
    if config.teacher_input_size:
        kw["input_size"] = config.teacher_input_size
    with torch.random.fork_rng(devices=[]):  # a randomly initialised part is seeded too
        torch.manual_seed(derive_seed("teacher", config.teacher) % 2**63)
        teacher = build_teacher(spec, checkpoint=config.teacher_checkpoint, **kw)
    teacher.eval().to(resolve_device(None if config.device == "auto" else config.device))
    support = data.teacher_support if data.teacher_support is not None else data.support
    teacher.set_support(support.float() / 255.0, data.support_labels)
    return teacher


def teacher_notes(config: PipelineConfig, pretrained_student: Path | None) -> list[str]:
    """Run-level warnings about the teacher as built (its `student` member left out), for the
    health report and so report.html."""
    from tinyshot.models.ensemble import with_student

    warning = with_student(config.teacher, pretrained_student)[1]
    return [warning] if warning else []


def teacher_accuracy(teacher: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Teacher accuracy on uint8 images, in chunks (queries at the teacher's size are large)."""
    hits = 0
    for i in range(0, len(images), 500):
        probs = teacher.predict_proba(images[i : i + 500].float() / 255.0)
        hits += int((probs.argmax(1) == labels[i : i + 500]).sum())
    return hits / max(1, len(images))


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


def effective_inputs(config: PipelineConfig, base_ds: FewShotDataset | None) -> dict[str, Any]:
    """What the episode actually uses, where the configuration alone would overstate it
    (no base dataset: no base images, no base-class pretraining)."""
    students = [m for m in config.methods if m in STUDENT_METHODS]
    uses_base = any(m not in ("teacher", "support-only") for m in config.methods)
    n_base = min(config.base_images, len(base_ds)) if uses_base and base_ds is not None else 0
    return {
        "pretrain_student": bool(config.pretrain_student and base_ds is not None and students),
        "base_images": n_base,
        "student_input_size": config.image_size,
        "teacher_input_size": config.teacher_input_size,
        "generator_image_prep": generator_prep(config).to_dict() if config.generators else None,
    }


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
        {
            "config": config.to_dict(),
            "effective": effective_inputs(config, base_ds),
            "episode": episode.to_dict(),
            "seed": seed,
        },
    )
    data = load_episode_data(episode, support_ds, query_ds, base_ds, config, seed)
    if data.query is None:
        raise ConfigError("the episode has no query images to evaluate on")
    n_query = int(data.query.shape[0])
    results: dict[str, dict[str, Any]] = {}

    gen = specialize_and_generate(data, config, work, seed)

    from tinyshot.models.ensemble import uses_student

    needs_student = uses_student(config.teacher) or any(
        m in STUDENT_METHODS for m in config.methods
    )
    pretrained = pretrained_student_path(base_ds, config) if needs_student else None
    t0 = time.perf_counter()
    teacher = build_episode_teacher(data, config, pretrained)
    labels: dict[str, torch.Tensor] = {}
    if data.base is not None:
        tb = data.teacher_base if data.teacher_base is not None else data.base
        labels["base"] = label_images(teacher, tb, work / "labels" / "base.safetensors")
    sets = synthetic_sets(teacher, gen, config, work)
    labels.update({g: s.labels for g, s in sets.items()})
    synthetic = {g: s.student for g, s in sets.items()}
    teacher_seen = {g: s.teacher_view for g, s in sets.items()}
    notes = teacher_notes(config, pretrained)
    health = episode_health(teacher, data, labels, teacher_seen, gen, work, config, notes)
    if "teacher" in config.methods:
        tq = data.teacher_query if data.teacher_query is not None else data.query
        acc = teacher_accuracy(teacher, tq, data.query_labels)
        backbone = teacher.backbone.arch_id  # the spec as resolved (student member or not)
        results["teacher"] = {"accuracy": acc, "queries": n_query, "backbone": backbone}
    teacher_s = time.perf_counter() - t0
    StageTimes(work).add("teacher_and_labels_s", teacher_s)
    del teacher

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
    for g, summary in health["generators"].items():
        if g in results:  # the benchmark's per-episode records carry it to results.json
            results[g]["health"] = summary
    timings = {
        **gen.get("_timings", {}),
        "teacher_and_labels_s": StageTimes(work).get("teacher_and_labels_s"),
    }
    write_json(
        done,
        {
            "methods": results,
            "timings": timings,
            "episode": episode.to_dict(),
            "seed": seed,
            "health": health,
        },
    )
    return results


def episode_health(
    teacher: Any,
    data: EpisodeData,
    labels: dict[str, torch.Tensor],
    synthetic: dict[str, torch.Tensor],
    stores: dict[str, Any],
    work: Path,
    config: PipelineConfig,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Synthetic-data health of an episode (evaluation.health): logged, written to health.json."""
    from tinyshot.evaluation.health import assess, intended_labels

    sources = ["support"] + (["base"] if data.base is not None else [])
    report = assess(
        teacher=teacher,
        class_names=data.class_names,
        support=data.teacher_support if data.teacher_support is not None else data.support,
        support_labels=data.support_labels,
        soft_labels={g: labels[g] for g in synthetic},
        intended={g: intended_labels(stores[g]) for g in synthetic},
        synthetic=synthetic,
        spec_dir=work / "specialize" if (work / "specialize").is_dir() else None,
        sources=sources + [f"synthetic:{g}" for g in synthetic],
        notes=notes,
    )
    report.log_warnings()
    out = report.to_dict()
    write_json(work / "health.json", out)
    return out


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


def bind_teacher_spec(spec: str, meta: dict[str, Any]) -> tuple[str, str | None]:
    """(teacher spec with its bare `student` member bound, warning or None) for the episodes of
    an episode file (`meta` as read with it): the pretrained student a benchmark episode of that
    dataset gets (shipped, or pretrained once into the cache), so `tinyshot evaluate` and the
    teacher baseline score the pipeline's own teacher."""
    from tinyshot.models.ensemble import uses_student, with_student

    if not uses_student(spec):
        return spec, None
    ds = meta.get("dataset") or {}
    config = task_pipeline_config({}, ds.get("name"), ds.get("split"))
    return with_student(spec, pretrained_student_path(_base_dataset(meta), config))


# Support splits whose shipped generator is not the dataset's default one: the concept-known
# world's supports come from the pool its generator never saw.
SPLIT_GENERATORS = {("fashion-mnist", "novel-pool"): "fashion-mnist-known"}


def task_pipeline_config(
    methods: dict[str, dict[str, Any]], dataset: str | None, split: str | None = None
) -> PipelineConfig:
    """The pipeline of a benchmark task: unless a method names a generator, a dataset with a
    shipped generator gets it (glyph episodes must not be drawn by the Fashion-MNIST model),
    and Fashion-MNIST's `novel-pool` supports get the concept-known generator."""
    from tinyshot.diffusion.pretrain import SHIPPED_GENERATORS

    config = pipeline_config_from_methods(methods)
    if any("generator" in (c or {}) for c in methods.values()):
        return config
    if (dataset, split) in SPLIT_GENERATORS:
        config.generator = SPLIT_GENERATORS[(dataset, split)]
    elif dataset in SHIPPED_GENERATORS:
        config.generator = dataset
    return config


def run_episode(task: Any) -> dict[str, dict[str, Any]]:
    """The benchmark runner's default episode function (see pipeline.benchmark.EpisodeTask)."""
    ds = task.meta.get("dataset") or {}
    config = task_pipeline_config(task.methods, ds.get("name"), ds.get("split"))
    config.device = getattr(task, "device", "auto") or "auto"
    support_ds, query_ds = task.datasets()
    base_ds = _base_dataset(task.meta)
    return run_pipeline_episode(
        task.episode, support_ds, query_ds, base_ds, config, task.work_dir, task.seed
    )
