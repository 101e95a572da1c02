"""int8 copies of exported students: onnxruntime's post-training static quantization.

Static rather than dynamic: the activations get fixed int8 ranges measured once on calibration
images, so every convolution runs as an int8 kernel instead of quantizing its input at run
time (dynamic quantization covers MatMul/Gemm, almost none of a convolutional student's work).
The settings are onnxruntime's recommended CPU defaults:

- QDQ format: QuantizeLinear/DequantizeLinear pairs around each quantized op, which the CPU
  provider fuses into int8 kernels; the file stays a standard ONNX graph.
- weights int8 per output channel (a per-tensor scale loses small channels, which depthwise
  convolutions such as EfficientNet-Lite's have many of); activations uint8 per tensor
  (asymmetric). uint8 activations with int8 weights ("U8S8") are the x86 fast path: on this
  project's CPU (AVX-512 VNNI) Lite0 at 96 px took 0.85 ms per image at batch 1 on one thread
  against 1.7 ms with int8 activations and 2.0 ms in fp32 (a probe under load). On x86 CPUs
  without VNNI, U8S8 products can saturate; `activations="int8"` is the safe choice there
  and on ARM.
- MinMax calibration over the calibration images, streamed in batches of
  `CALIBRATION_BATCH`: the calibrator keeps only each batch's per-tensor minimum and maximum
  (its graph reduces every activation to them), so memory does not grow with the image count.
  (Its `CalibMaxIntermediateOutputs` option is left alone: onnxruntime 1.32 drops the batches
  collected so far when the limit is reached instead of merging their ranges.)

- The first few convolutions stay fp32 where that was measured to matter
  (`FP32_LEADING_CONVS`, or `fp32_convs`): EfficientNet-Lite0's stem and first block (3
  convolutions) work at full resolution on few channels, and quantizing them cost most of its
  int8 error at no gain in speed (docs/models.md, "int8").

Calibration images are prepared exactly as `tinyshot predict` prepares its inputs
(export.preprocess_images), and at most `DEFAULT_CALIBRATION_IMAGES` are used: min/max ranges
settle within a few hundred images, and calibration costs a forward pass of every activation
tensor per image. Which images to calibrate on is the caller's choice; for a fit run folder it
is the run's own supports and synthetic images, never query images (pipeline.quantize_run).
The int8 file carries the fp32 file's metadata plus `precision` = "int8" and a `quantization`
record, so `predict` and `OnnxClassifier` read it like any exported student.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tinyshot.errors import ConfigError, DataError
from tinyshot.models.export import OnnxClassifier, preprocess_images

INT8_MODEL_FILE = "model.int8.onnx"
DEFAULT_CALIBRATION_IMAGES = 500
CALIBRATION_BATCH = 16
# Convolutions kept in fp32, counted from the input, per student architecture (others: 0).
FP32_LEADING_CONVS: dict[str, int] = {"efficientnet-lite0": 3}


class ImageCalibration:
    """An onnxruntime `CalibrationDataReader` (it only needs `get_next`): batches of images,
    prepared as `predict` prepares them, drawn from `images` only when asked for; it stops
    after `max_images`. `count` says how many were fed."""

    def __init__(
        self,
        images: Iterable[Image.Image],
        input_size: int,
        input_name: str,
        max_images: int = DEFAULT_CALIBRATION_IMAGES,
        batch_size: int = CALIBRATION_BATCH,
    ) -> None:
        self._images: Iterator[Image.Image] = iter(images)
        self.input_size = int(input_size)
        self.input_name = input_name
        self.max_images = int(max_images)
        self.batch_size = int(batch_size)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch: list[Image.Image] = []
        while len(batch) < self.batch_size and self.count + len(batch) < self.max_images:
            im = next(self._images, None)
            if im is None:
                break
            batch.append(im)
        if not batch:
            return None
        self.count += len(batch)
        return {self.input_name: preprocess_images(batch, self.input_size)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item


@dataclass
class QuantizeResult:
    """What `quantize_onnx` wrote and from how many images."""

    path: str
    fp32_path: str
    calibration_images: int
    fp32_bytes: int
    int8_bytes: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ACTIVATION_TYPES = ("uint8", "int8")


def quantization_settings(activations: str = "uint8", fp32_convs: int = 0) -> dict[str, Any]:
    """The `quantization` metadata record of an int8 file, before the calibration figures."""
    return {
        "method": "onnxruntime static quantization",
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": f"{activations}, per tensor",
        "calibration": "MinMax",
        "fp32_leading_convs": fp32_convs,
    }


def leading_nodes(graph: Any, n_convs: int) -> list[str]:
    """Names of `graph`'s nodes up to and including its `n_convs`-th Conv. ONNX nodes are
    stored in topological order, and a student's graph runs its layers in sequence, so these
    are the layers that see the input first."""
    if n_convs <= 0:
        return []
    names, seen = [], 0
    for node in graph.node:
        names.append(node.name)
        seen += node.op_type == "Conv"
        if seen == n_convs:
            return names
    raise ConfigError(f"fp32_convs={n_convs}, but the model has only {seen} convolution(s)")


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    images: Iterable[Image.Image],
    max_images: int = DEFAULT_CALIBRATION_IMAGES,
    activations: str = "uint8",
    extra_meta: dict[str, Any] | None = None,
    fp32_convs: int | None = None,
) -> QuantizeResult:
    """Write an int8 copy of the exported student `fp32_path` to `out_path`, calibrated on
    up to `max_images` of `images` (streamed); `activations` "uint8" (x86 fast path) or
    "int8"; `extra_meta` joins the `quantization` record (e.g. where the images came from);
    `fp32_convs` leading convolutions stay fp32 (None: the architecture's
    `FP32_LEADING_CONVS`). DataError when `images` yields none."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from tinyshot.utils.io import atomic_write

    if max_images < 1:
        raise ConfigError(f"calibration needs at least 1 image, got max_images={max_images}")
    if activations not in ACTIVATION_TYPES:
        raise ConfigError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    clf = OnnxClassifier(fp32_path)
    keep = FP32_LEADING_CONVS.get(clf.arch, 0) if fp32_convs is None else int(fp32_convs)
    if keep < 0:
        raise ConfigError(f"fp32_convs must be >= 0, got {keep}")
    stream = iter(images)
    first = next(stream, None)
    if first is None:
        raise DataError(f"{fp32_path}: no calibration images to quantize with")
    reader = ImageCalibration(
        itertools.chain([first], stream), clf.input_size, clf.input_name, max_images
    )
    with tempfile.TemporaryDirectory(prefix="tinyshot-quantize-") as tmp:
        # Shape inference and graph simplification first, as onnxruntime recommends: constant
        # padding chains fold away and more ops end up quantized.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        excluded = leading_nodes(onnx.load(str(pre)).graph, keep) if keep else []
        raw = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(raw),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
        settings = {
            **quantization_settings(activations, keep),
            "calibration_images": reader.count,
        }
        settings.update(extra_meta or {})
        proto = onnx.load(str(raw))
        meta = {**clf.meta, "precision": "int8", "quantization": json.dumps(settings)}
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, str(v)
        proto.producer_name = "tinyshot"

        def _write(tmp_out: Path) -> None:
            onnx.save(proto, str(tmp_out))

        atomic_write(out_path, _write)
    return QuantizeResult(
        path=str(out_path),
        fp32_path=str(fp32_path),
        calibration_images=reader.count,
        fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=out_path.stat().st_size,
        settings=settings,
    )


def top1_agreement(
    model_a: str | Path, model_b: str | Path, images: Iterable[Image.Image], batch_size: int = 64
) -> tuple[float, int]:
    """(fraction of `images` on which the two models' top-1 classes agree, image count): how
    much an int8 copy changes the fp32 model's answers."""
    a, b = OnnxClassifier(model_a), OnnxClassifier(model_b)
    same = n = 0
    batch: list[Image.Image] = []

    def flush() -> None:
        nonlocal same, n
        x = a.preprocess(batch)
        same += int((a.logits(x).argmax(1) == b.logits(x).argmax(1)).sum())
        n += len(batch)
        batch.clear()

    for im in images:
        batch.append(im)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return (same / n if n else float("nan")), n
