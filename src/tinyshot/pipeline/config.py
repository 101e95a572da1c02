"""What decides an episode's result: the method names, PipelineConfig, and what follows from the
configuration alone (the generator's folder and image preparation, the synthetic stores' size,
the inputs an episode actually uses)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tinyshot.data.base import FewShotDataset
from tinyshot.diffusion.config import DEMO_DDIM_STEPS
from tinyshot.errors import ConfigError

# Synthetic-image methods (diffusion.generate.METHOD_PARTS: specialization x sampling).
GENERATORS = ("name", "ti", "dafusion", "tint", "lora", "lora-dafusion", "lora-tint")
# Generators that need the episode's TI/NTI specialization ("name" needs none).
SPECIALIZED = ("ti", "dafusion", "tint")
# Generators that sample the LoRA-adapted generator (diffusion.lora); lora-tint also needs the
# supports inverted through it.
LORA_GENERATORS = ("lora", "lora-dafusion", "lora-tint")
# Two cheap ImageNet backbones plus the base-pretrained student (models.ensemble.ENSEMBLES);
# `tinyshot evaluate` and the teacher baseline default to it too.
DEFAULT_TEACHER = "effnet-lite-student"
STUDENT_METHODS = ("support-only", "support+base", *GENERATORS)
METHODS = ("teacher", *STUDENT_METHODS)
# What the demo and the benchmark run when no method is named: everything but the LoRA
# methods, whose training the demo's 10-minute budget has not been measured with.
DEFAULT_METHODS = tuple(m for m in METHODS if m not in LORA_GENERATORS)
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

    methods: tuple[str, ...] = DEFAULT_METHODS
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
    # LoRA specialization (diffusion.lora.LoraTrainConfig) for the lora* methods. CPU-sized:
    # a larger lr than DataDream's 1e-4 and every support in each step (5 per class): on the
    # concept-unknown tuning episode 3e-3 drew 42% judged of their class, 1e-3 27%, 1e-4 20%
    # (docs/results.md, "LoRA").
    lora: dict[str, Any] = field(
        default_factory=lambda: {
            "steps": 1000,
            "lr": 3e-3,
            "batch_size": 5,
            "rank": 16,
            "alpha": 16.0,
            "warmup_steps": 100,
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
        from tinyshot.diffusion.lora import LoraTrainConfig

        LoraTrainConfig.from_dict(self.lora).validate()
        return self

    @property
    def generators(self) -> list[str]:
        return [m for m in GENERATORS if m in self.methods]

    def to_dict(self) -> dict[str, Any]:
        """Plain data; the LoRA settings only where a LoRA method runs (they change nothing
        else, and run folders made before them keep resuming)."""
        d = asdict(self)
        d["methods"] = list(self.methods)
        if not any(m in LORA_GENERATORS for m in self.methods):
            del d["lora"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(known)}")
        base = cls()
        # Keys left out take the named student's own defaults first (models.students
        # .STUDENT_CONFIG_DEFAULTS: EfficientNet-Lite0's input size and shorter pretraining).
        from tinyshot.models.students import student_defaults

        merged: dict[str, Any] = {}
        for k, v in student_defaults(str(d.get("student", base.student))).items():
            cur = getattr(base, k)
            merged[k] = {**cur, **v} if isinstance(cur, dict) else v
        for k, v in d.items():
            cur = merged.get(k, getattr(base, k))
            merged[k] = {**cur, **v} if isinstance(cur, dict) and isinstance(v, dict) else v
        return cls(**merged).validate()


def resolve_generator(name: str) -> str:
    """Shipped generator names map to the model folder shipped with the package."""
    from tinyshot.diffusion.pretrain import SHIPPED_GENERATORS, default_generator_path

    return str(default_generator_path(name)) if name in SHIPPED_GENERATORS else name


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
