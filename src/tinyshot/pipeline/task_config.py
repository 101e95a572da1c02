"""The pipeline configuration of a benchmark task: its method configs merged into one
PipelineConfig, the shipped generator of its dataset, its base-class dataset, and the teacher
spec its episodes get (for `tinyshot evaluate` and the teacher baseline too)."""

from __future__ import annotations

from typing import Any

from tinyshot.data.base import FewShotDataset
from tinyshot.errors import ConfigError
from tinyshot.pipeline.config import METHODS, PipelineConfig
from tinyshot.pipeline.student_stage import pretrained_student_path


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


def base_dataset(meta: dict[str, Any]) -> FewShotDataset | None:
    """The base-class split of an episode file's dataset (`meta`); None for an ImageFolder."""
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
    return with_student(spec, pretrained_student_path(base_dataset(meta), config))


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
