"""`tinyshot quantize RUN_DIR` and `fit --quantize int8`: an int8 copy of a fit run's student,
calibrated on the run's own images (models.quantize).

Calibration images are the run's supports (the class folders `fit` read, less the supports
`--holdout` kept out of training) and its synthetic images; never query images (a fit run has
none) and never held-out supports (they are what the run's accuracy estimate is measured on).
Supports come first, then synthetic images one class after another in turn, so a capped set
still covers every class. A synthetic image loses the generator's pad frame first, as it did
for the student; then every image goes through `predict`'s own preparation.

Writes RUN_DIR/model.int8.onnx and RUN_DIR/quantize.json (image counts and where they came
from, file sizes, and how often the int8 model's top-1 class agrees with the fp32 model's on
the calibration images).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from tinyshot.data.transforms import ImagePrep
from tinyshot.errors import ConfigError, DataError
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.quantize_run")

QUANTIZE_RECORD = "quantize.json"


@dataclass
class RunImages:
    """A fit run's calibration images, listed up front and opened one at a time."""

    supports: list[Path]
    synthetic: list[Path]  # classes interleaved
    prep: ImagePrep | None  # the generator's framing, cropped from synthetic images
    held_out: list[Path] = field(default_factory=list)  # never read
    notes: list[str] = field(default_factory=list)
    read: list[Path] = field(default_factory=list)  # every file opened, in order

    def __len__(self) -> int:
        return len(self.supports) + len(self.synthetic)

    def images(self, limit: int | None = None) -> Iterator[Image.Image]:
        """Supports, then synthetic images, at most `limit`; each file is opened when asked for."""
        import itertools

        from tinyshot.data.images import open_rgb

        listed = [(p, False) for p in self.supports] + [(p, True) for p in self.synthetic]
        for path, synthetic in itertools.islice(listed, limit):
            self.read.append(path)
            im = open_rgb(path, min_side=1)  # fit has checked the supports' sizes
            yield unframe(im, self.prep) if synthetic else im


def unframe(im: Image.Image, prep: ImagePrep | None) -> Image.Image:
    """A generated image without the generator's pad frame (pipeline.synthetic's crop)."""
    if prep is None:
        return im
    from tinyshot.data.transforms import crop_generator_frame, images_to_uint8, tensor_to_pil

    x = crop_generator_frame(images_to_uint8([im]), prep)
    return tensor_to_pil(x[0].float() / 255.0)


def check_run_dir(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(run folder, its config.json record); ConfigError naming the folder when it is not a
    finished fit run."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    if not (run / "config.json").is_file() or not (run / "classes.json").is_file():
        raise ConfigError(
            f"{run_dir}: not a fit run folder (no config.json and classes.json); pass the "
            "folder `tinyshot fit --out` wrote"
        )
    record = read_json(run / "config.json")
    if not isinstance(record, dict) or "data_dir" not in record:
        raise ConfigError(f"{run / 'config.json'}: not a fit run record (no data_dir)")
    from tinyshot.models.export import MODEL_FILE

    if not (run / MODEL_FILE).is_file():
        raise ConfigError(
            f"{run_dir}: no {MODEL_FILE}: the fit has not finished; rerun the same "
            f"`tinyshot fit ... --out {run_dir}` to finish it, then quantize"
        )
    return run, record


def run_images(run_dir: str | Path) -> RunImages:
    """The calibration images of a fit run folder (see the module doc)."""
    run, record = check_run_dir(run_dir)
    classes = read_json(run / "classes.json")
    notes: list[str] = []
    supports, held, kept = _supports(record, classes, notes)
    shots = _fit_shots(run)
    if supports and shots is not None and kept != shots:
        notes.append(
            f"{record['data_dir']}: holds {kept} supports per class, the fit trained on "
            f"{shots}; the folder has changed since, so calibrating on synthetic images only"
        )
        supports, held = [], []
    synthetic = _synthetic(run, record, len(classes))
    return RunImages(supports, synthetic, _generator_prep(run, record), held, notes)


def _supports(
    record: dict[str, Any], classes: list[str], notes: list[str]
) -> tuple[list[Path], list[Path], list[int]]:
    """(support files the run trained on, supports it held out, kept files per class), in
    `fit`'s order."""
    import torch

    from tinyshot.data.imagefolder import load_imagefolder

    data_dir = Path(record["data_dir"])
    try:
        ds = load_imagefolder(data_dir)
    except DataError as e:
        notes.append(f"the supports cannot be read ({e}); calibrating on synthetic images only")
        return [], [], []
    if list(ds.class_names) != list(classes):
        notes.append(
            f"{data_dir}: its class folders {ds.class_names} are not the run's classes "
            f"{classes} any more; calibrating on synthetic images only"
        )
        return [], [], []
    files = [ds.root / ds.paths[int(i)] for c in range(ds.num_classes) for i in ds.indices_of(c)]
    counts = [len(ds.indices_of(c)) for c in range(ds.num_classes)]
    per_class = int(record.get("holdout_per_class") or 0)
    if not per_class:
        return files, [], counts
    from tinyshot.evaluation.holdout import holdout_split
    from tinyshot.utils.seed import derive_seed

    labels = torch.tensor([c for c in range(ds.num_classes) for _ in ds.indices_of(c)])
    seed = derive_seed(int(record.get("seed", 0)), "holdout") % 2**63
    keep, hold = holdout_split(labels, per_class, seed)  # fit's split (evaluation.holdout)
    kept = [n - per_class for n in counts]
    return [files[int(i)] for i in keep], [files[int(i)] for i in hold], kept


def _fit_shots(run: Path) -> list[int] | None:
    """Supports per class the fit trained on (fit.json), None when it did not record them."""
    fit = run / "fit.json"
    shots = read_json(fit).get("shots") if fit.is_file() else None
    return [int(n) for n in shots] if isinstance(shots, list) else None


def _synthetic(run: Path, record: dict[str, Any], n_classes: int) -> list[Path]:
    """The run's generated images, one class after another in turn (generator by generator)."""
    from tinyshot.diffusion.store import SETTINGS, ImageStore

    methods = (record.get("config") or {}).get("methods") or []
    per_class: list[list[Path]] = [[] for _ in range(n_classes)]
    for m in methods:
        root = run / "synthetic" / m
        if not (root / SETTINGS).is_file():
            continue
        for item in ImageStore(root).items():
            if 0 <= item.class_index < n_classes:
                per_class[item.class_index].append(item.path)
    out = []
    for k in range(max((len(p) for p in per_class), default=0)):
        out.extend(p[k] for p in per_class if k < len(p))
    return out


def _generator_prep(run: Path, record: dict[str, Any]) -> ImagePrep | None:
    """The generator's image preparation the fit recorded (fit.json), else the configured
    generator's; None when neither can be read (images are then used whole)."""
    fit = run / "fit.json"
    if fit.is_file():
        prep = (((read_json(fit).get("inputs") or {}).get("generator")) or {}).get("image_prep")
        if prep:
            return ImagePrep.from_dict(prep, where=str(fit))
    try:
        from tinyshot.pipeline.config import PipelineConfig, generator_prep

        return generator_prep(PipelineConfig.from_dict(record.get("config") or {}))
    except Exception as e:  # a generator folder that has moved: frames stay on
        log.warning("%s: generator framing unknown (%s); synthetic images used whole", run, e)
        return None


def quantize_run(
    run_dir: str | Path,
    max_images: int | None = None,
    activations: str = "uint8",
    out: str | Path | None = None,
    fp32_convs: int | None = None,
) -> dict[str, Any]:
    """Write RUN_DIR/model.int8.onnx and RUN_DIR/quantize.json, or only the int8 file at `out`
    (the run folder untouched); `fp32_convs` as in models.quantize.quantize_onnx; returns the
    record."""
    from tinyshot.models.export import MODEL_FILE
    from tinyshot.models.quantize import (
        DEFAULT_CALIBRATION_IMAGES,
        INT8_MODEL_FILE,
        quantize_onnx,
        top1_agreement,
    )

    cap = DEFAULT_CALIBRATION_IMAGES if max_images is None else int(max_images)
    if cap < 1:
        raise ConfigError(f"--calibration-images must be >= 1, got {cap}")
    src = run_images(run_dir)
    run = Path(run_dir).expanduser()
    for note in src.notes:
        log.warning("%s: %s", run, note)
    if len(src) == 0:
        raise DataError(
            f"{run_dir}: no images to calibrate on: no readable supports in the run's data "
            "folder and no synthetic images in the run folder"
        )
    n_sup = min(len(src.supports), cap)
    sources = {
        "supports": n_sup,
        "synthetic": min(len(src.synthetic), cap - n_sup),
        "held_out_supports_left_out": len(src.held_out),
        "max_images": cap,
    }
    fp32 = run / MODEL_FILE
    int8 = Path(out) if out is not None else run / INT8_MODEL_FILE
    log.info(
        "quantizing %s to int8 on %d support and %d synthetic image(s)",
        fp32,
        sources["supports"],
        sources["synthetic"],
    )
    result = quantize_onnx(
        fp32,
        int8,
        src.images(cap),
        cap,
        activations,
        extra_meta={"calibration_sources": sources},
        fp32_convs=fp32_convs,
    )
    agreement, n = top1_agreement(fp32, int8, src.images(cap))
    record = {
        "model": str(fp32),
        "int8_model": str(int8),
        "calibration": sources,
        "settings": result.settings,
        "bytes": {"fp32": result.fp32_bytes, "int8": result.int8_bytes},
        "size_ratio": result.int8_bytes / result.fp32_bytes,
        "top1_agreement_with_fp32": {"fraction": agreement, "images": n},
        "notes": src.notes,
    }
    if out is None:  # a copy elsewhere (benches) leaves the run folder as it was
        write_json(run / QUANTIZE_RECORD, record)
    log.info(
        "wrote %s (%.2f MB, %.0f%% of fp32); top-1 agrees with fp32 on %.1f%% of the %d "
        "calibration images",
        int8,
        result.int8_bytes / 1e6,
        100 * record["size_ratio"],
        100 * agreement,
        n,
    )
    return record
