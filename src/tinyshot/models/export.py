"""ONNX export of a trained student and an onnxruntime classifier for deployment.

The graph includes input normalisation, so preprocessing is only: RGB, resize to SxS
(bicubic), scale to [0,1], NCHW float32. The model file carries that description (and the
mean/std the graph applies), the class names, the input size, the architecture and the
precision as ONNX metadata, so `tinyshot predict` needs nothing but the .onnx file; an int8
copy (models.quantize) carries the same metadata.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tinyshot.errors import ConfigError, ModelError
from tinyshot.models.students import Student, count_parameters

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MODEL_FILE = "model.onnx"  # what `fit` writes in its run folder


def preprocessing_text(size: int) -> str:
    return (
        f"RGB, resize to {size}x{size} bicubic, scale to [0,1], NCHW float32; "
        "normalisation inside the graph"
    )


def normalization_meta(student: Student) -> dict[str, Any]:
    """What the graph does to its [0,1] RGB input before the network: grey conversion (1-channel
    students) and the per-channel mean/std (EfficientNet-Lite: 0.5/0.5, i.e. [-1, 1])."""
    norm = student.backbone.normalize
    return {
        "mean": [round(float(v), 6) for v in norm.mean.flatten()],
        "std": [round(float(v), 6) for v in norm.std.flatten()],
        "network_channels": student.in_channels,
        "grey_inside_graph": student.in_channels == 1,
    }


def export_onnx(
    student: Student,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    opset: int = 17,
    check: bool = True,
) -> Path:
    """Write `student` as ONNX (dynamic batch axis) with metadata; checks parity when `check`."""
    import onnx

    from tinyshot import __version__
    from tinyshot.utils.io import atomic_write

    names = (
        list(class_names)
        if class_names is not None
        else [str(i) for i in range(student.num_classes)]
    )
    if len(names) != student.num_classes:
        raise ConfigError(f"{len(names)} class names given for a {student.num_classes}-way student")
    path = Path(path)
    model = student.eval().cpu()
    s = student.input_size
    dummy = torch.rand(2, 3, s, s)

    def _write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        meta = {
            "class_names": json.dumps(names),
            "input_size": str(s),
            "preprocessing": preprocessing_text(s),
            "input_channels": "3",
            "normalization": json.dumps(normalization_meta(student)),
            "arch": student.arch,
            "num_parameters": str(count_parameters(student)),
            "precision": "fp32",
            "tinyshot_version": __version__,
        }
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "tinyshot"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    atomic_write(path, _write)
    if check:
        diff = parity(student, path)
        if diff > 1e-3:
            raise ModelError(f"{path}: onnxruntime output differs from torch by {diff:.2e}")
    return path


def parity(student: Student, path: str | Path, batch: int = 4, seed: int = 0) -> float:
    """Max abs difference of logits, torch vs onnxruntime, on random inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, student.input_size, student.input_size, generator=g)
    with torch.no_grad():
        ref = student.eval().cpu()(x).numpy()
    got = OnnxClassifier(path).logits(x.numpy())
    return float(np.abs(ref - got).max())


def preprocess_images(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """What `predict` does to images before the graph: RGB (grey images get three equal
    channels), resize to size x size (PIL bicubic), scale to [0,1], NCHW float32. int8
    calibration (models.quantize) prepares its images with this too."""
    from tinyshot.data.transforms import images_to_tensor

    return images_to_tensor([im.convert("RGB") for im in images], size).numpy()


class OnnxClassifier:
    """A deployed student: images in, (labels, probabilities) out, via onnxruntime."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(
                f"{self.path}: not a loadable ONNX model ({type(e).__name__}: {e})"
            ) from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta or "input_size" not in meta:
            raise ModelError(
                f"{self.path}: ONNX model lacks tinyshot metadata (class_names, input_size); "
                "export it with `tinyshot export`"
            )
        self.meta: dict[str, Any] = dict(meta)
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.input_size = int(meta["input_size"])
        self.arch = meta.get("arch", "")
        self.precision = meta.get("precision", "fp32")  # models exported before int8: fp32
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw logits for a float32 (B,3,S,S) batch in [0,1]."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[
            0
        ]

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess_images(images, self.input_size)

    def predict(
        self, images: Sequence[Image.Image], batch_size: int = 64
    ) -> tuple[list[str], np.ndarray]:
        """(predicted class name per image, (B, N) softmax probabilities)."""
        if len(images) == 0:
            return [], np.zeros((0, len(self.class_names)), dtype=np.float32)
        out = []
        for i in range(0, len(images), batch_size):
            z = self.logits(self.preprocess(images[i : i + batch_size])).astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            out.append((p / p.sum(axis=1, keepdims=True)).astype(np.float32))
        probs = np.concatenate(out)
        return [self.class_names[int(i)] for i in probs.argmax(1)], probs


# ------------------------------------------------------------------------- benchmark


def _time_per_call(fn, budget: float, min_reps: int = 1, max_reps: int = 2000) -> float:
    """Fastest call after one warm-up call, timing for about `budget` seconds (the minimum is the
    figure least disturbed by other processes on a shared machine, as in `timeit`)."""
    import time

    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(min(times))


def count_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates per image in conv and linear layers (attention products excluded)."""
    total = 0

    def hook(mod: torch.nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        per_image = out.numel() // out.shape[0]
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += per_image * (mod.in_channels // mod.groups) * k
        else:
            total += per_image * mod.in_features

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model.eval()(torch.rand(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def _bench_model(
    name: str,
    model: torch.nn.Module,
    size: int,
    params: int,
    batches: Sequence[int],
    budget: float,
    threads: int | None,
    onnx_dir: Path | None,
) -> list[dict[str, Any]]:
    rows = []
    model = model.eval()
    macs = count_macs(model, size)
    clf_session = None
    if onnx_dir is not None:
        import onnxruntime as ort

        path = onnx_dir / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.rand(1, 3, size, size),),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        clf_session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for b in batches:
        x = torch.rand(b, 3, size, size)
        runtimes: list[tuple[str, Any]] = [("torch", lambda x=x: model(x))]
        if clf_session is not None:
            xn = x.numpy()
            runtimes.append(("onnxruntime", lambda xn=xn: clf_session.run(None, {INPUT_NAME: xn})))
        for runtime, fn in runtimes:
            with torch.inference_mode():
                sec = _time_per_call(fn, budget)
            rows.append(
                {
                    "model": name,
                    "runtime": runtime,
                    "batch": b,
                    "input_size": size,
                    "parameters": params,
                    "mmacs": macs / 1e6,
                    "ms_per_image": 1000 * sec / b,
                    "images_per_s": b / sec,
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def run_inference_bench(
    student_size: int = 84,
    teacher_size: int = 224,
    batches: Sequence[int] = (1, 64),
    teacher_batches: Sequence[int] = (1, 64),
    vit_batches: Sequence[int] = (1, 8),
    budget: float = 1.0,
    threads: int | None = None,
    vits: Sequence[str] = ("dino-vitb16", "dinov2-small", "dinov2-base"),
) -> list[dict[str, Any]]:
    """Throughput of the students (torch eager, onnxruntime) and of the teacher backbones: the
    ViT teachers (`vits`: dino-vitb16, dinov2-small, dinov2-base) with random weights from their
    published configs at 224 px, torch eager only."""
    import tempfile

    from tinyshot.models.backbones import VIT_TEACHERS, build_backbone, random_weight_backbone
    from tinyshot.models.students import build_student

    unknown = [v for v in vits if v not in VIT_TEACHERS]
    if unknown:
        raise ConfigError(
            f"bench inference: unknown ViT teacher(s) {unknown}; choose from {VIT_TEACHERS}"
        )

    if threads:
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("conv4", "resnet12"):
            s = build_student(arch, 5, student_size)
            rows += _bench_model(
                arch, s, student_size, count_parameters(s), batches, budget, threads, Path(tmp)
            )
        if teacher_batches:
            eff = build_backbone("efficientnet-lite0", input_size=teacher_size)
            rows += _bench_model(
                "efficientnet-lite0 (teacher)",
                eff,
                teacher_size,
                count_parameters(eff.net) - 1281000,
                teacher_batches,
                budget,
                threads,
                Path(tmp),
            )
        for name in vits if vit_batches else ():
            vit = random_weight_backbone(name)
            rows += _bench_model(
                f"{name} (teacher, random weights)",
                vit,
                vit.input_size,
                count_parameters(vit),
                vit_batches,
                budget,
                threads,
                None,
            )
            del vit
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<40} {'runtime':<12} {'batch':>5} {'px':>4} {'params':>11} {'MMACs':>8} "
        f"{'ms/image':>10} {'images/s':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<40} {r['runtime']:<12} {r['batch']:>5} {r['input_size']:>4} "
            f"{r['parameters']:>11,} {r['mmacs']:>8.0f} {r['ms_per_image']:>10.3f} {r['images_per_s']:>10.1f}"
        )
    threads = sorted({r.get("threads", torch.get_num_threads()) for r in rows})
    lines.append(
        f"(torch {torch.__version__}, {'/'.join(map(str, threads))} thread(s), fp32, CPU; "
        "fastest of repeated calls)"
    )
    return "\n".join(lines)


def class_key(name: str) -> str:
    """A class name as matched between a model and an episode: its class folder name
    (write_episode_supports), case and underscores aside."""
    from tinyshot.diffusion.store import folder_name

    return folder_name(name).casefold().replace("_", " ").strip()
