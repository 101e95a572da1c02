"""CLI: predict with an exported student (fp32 or int8) and export a checkpoint to ONNX
(`tinyshot bench inference` lives in pipeline.commands: it reads run folders and episodes)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyshot.errors import DataError, TinyshotError

if TYPE_CHECKING:
    from tinyshot.models.export import OnnxClassifier


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the `tinyshot` parser."""
    p = sub.add_parser(
        "predict", help="classify image files or folders with an exported .onnx student"
    )
    p.add_argument(
        "model",
        help="an .onnx file (fp32 or int8) written by `fit`, `export` or `quantize`, or a fit "
        "run folder: its model.onnx, or model.int8.onnx with --int8",
    )
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument(
        "--top-k", type=int, default=1, help="print the k most likely classes (default 1)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--int8",
        action="store_true",
        help="with a run folder: use its int8 model (model.int8.onnx, from `tinyshot quantize` "
        "or `fit --quantize int8`)",
    )
    p.add_argument(
        "--labelled",
        action="store_true",
        help="the images sit in class folders (DIR/<class>/...): also report top-1 accuracy, "
        "overall and per class, each image labelled by its own folder's name",
    )
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="export a student checkpoint to ONNX (metadata included)")
    p.add_argument("checkpoint", help="a student checkpoint (.pt)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--class-names", default=None, help="comma-separated names (default: the checkpoint's)"
    )
    p.set_defaults(func=_export)


# ------------------------------------------------------------------------- handlers


def collect_images(items: list[str]) -> tuple[list[Path], list[dict[str, str]]]:
    """Image files named or found (recursively) under the given paths, and one error per path
    that gives none (missing, or a folder without images): bad inputs are reported, not fatal."""
    from tinyshot.data.images import IMAGE_EXTENSIONS

    out: list[Path] = []
    errors: list[dict[str, str]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                errors.append({"file": str(p), "error": f"{p}: folder holds no images ({exts})"})
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            errors.append({"file": str(p), "error": f"{p}: no such file or folder"})
    return out, errors


def model_path(model: str | Path, int8: bool = False) -> Path:
    """The .onnx file `predict` runs: `model` itself, or a run folder's model.onnx
    (model.int8.onnx with `int8`)."""
    from tinyshot.errors import ModelError
    from tinyshot.models.export import MODEL_FILE
    from tinyshot.models.quantize import INT8_MODEL_FILE

    path = Path(model)
    if not path.is_dir():
        if int8:
            raise ModelError(
                f"--int8 picks {INT8_MODEL_FILE} in a run folder, and {model} is not a folder; "
                "pass the int8 .onnx file itself, or the run folder"
            )
        return path
    name = INT8_MODEL_FILE if int8 else MODEL_FILE
    if not (path / name).is_file():
        hint = f"make it with `tinyshot quantize {model}`" if int8 else "is the fit finished?"
        raise ModelError(f"{model}: the run folder has no {name} ({hint})")
    return path / name


def labelled_accuracy(results: list[dict], class_names: list[str]) -> dict:
    """Top-1 accuracy of `results` (predict's records), each image's label being its folder's
    name; folder names are matched to classes as class folders are written ("T-shirt/top" is
    folder T-shirt_top; case and underscores aside). A folder naming no class is an error."""
    from tinyshot.models.export import class_key

    keys = {class_key(c): c for c in class_names}
    hits: dict[str, list[int]] = {c: [] for c in class_names}
    for r in results:
        folder = Path(r["file"]).parent.name
        if class_key(folder) not in keys:
            raise DataError(
                f"{Path(r['file']).parent}: with --labelled, an image's folder names its class, "
                f"and {folder!r} is none of the model's classes {class_names}"
            )
        label = keys[class_key(folder)]
        hits[label].append(int(r["top"][0]["class"] == label))
    n = sum(len(h) for h in hits.values())
    return {
        "accuracy": sum(sum(h) for h in hits.values()) / max(1, n),
        "images": n,
        "per_class": {
            c: {"accuracy": sum(h) / len(h), "images": len(h)} for c, h in hits.items() if h
        },
    }


def classify_files(
    clf: OnnxClassifier, files: list[Path], batch_size: int, top_k: int
) -> Iterator[dict[str, Any]]:
    """One record per file, in order: {"file", "top": [{"class", "prob"}...]} or, for a file
    that is not a readable image, {"file", "error"}. Files are decoded one batch at a time, so a
    folder of any size is classified in the memory of one batch."""
    from tinyshot.data.images import open_rgb

    k = min(top_k, len(clf.class_names))
    for i in range(0, len(files), batch_size):
        batch = files[i : i + batch_size]
        images, failed = [], {}
        for f in batch:
            try:
                images.append(open_rgb(f))
            except DataError as e:
                failed[f] = str(e)
        probs = iter(clf.predict(images, batch_size=batch_size)[1])
        for f in batch:
            if f in failed:
                yield {"file": str(f), "error": failed[f]}
                continue
            p = next(probs)
            order = p.argsort()[::-1][:k]
            yield {
                "file": str(f),
                "top": [
                    {"class": clf.class_names[int(j)], "prob": round(float(p[j]), 6)} for j in order
                ],
            }


def _predict(args: argparse.Namespace) -> int:
    """Classify every readable image; every bad path or file is named on stderr (and under
    "errors" with --json), and the exit status is 1 if there was any, 0 otherwise."""
    from tinyshot.models.export import OnnxClassifier

    if args.top_k < 1:
        raise TinyshotError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise TinyshotError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = model_path(args.model, args.int8)
    clf = OnnxClassifier(model)
    files, errors = collect_images(args.images)
    results = []
    for r in classify_files(clf, files, args.batch_size, args.top_k):
        if "error" in r:
            errors.append(r)
            continue
        results.append(r)
        if not args.json:
            print(f"{r['file']}\t" + "\t".join(f"{t['class']}\t{t['prob']:.4f}" for t in r["top"]))
    scored = labelled_accuracy(results, clf.class_names) if args.labelled else None
    if args.json:
        doc = {"model": str(model), "precision": clf.precision, "results": results}
        print(
            json.dumps(
                {**doc, "errors": errors, **({"labelled": scored} if scored else {})}, indent=2
            )
        )
    elif scored:
        per = ", ".join(f"{c} {100 * v['accuracy']:.1f}" for c, v in scored["per_class"].items())
        print(
            f"top-1 accuracy {100 * scored['accuracy']:.2f}% on {scored['images']} labelled "
            f"images ({clf.precision}); per class: {per}"
        )
    for e in errors:
        print(f"tinyshot predict: error: {e['error']}", file=sys.stderr)
    if errors:
        print(
            f"tinyshot predict: {len(errors)} bad input(s); classified {len(results)} image(s)",
            file=sys.stderr,
        )
    return 1 if errors else 0


def _export(args: argparse.Namespace) -> int:
    from tinyshot.models.export import export_onnx, parity
    from tinyshot.models.students import load_student

    student, meta = load_student(args.checkpoint)
    names = meta.get("class_names")
    if args.class_names:
        names = [n.strip() for n in args.class_names.split(",")]
    out = export_onnx(student, args.out, names, opset=args.opset)
    print(
        f"wrote {out} ({student.arch}, {student.num_classes} classes, {student.input_size} px; "
        f"max |torch - onnxruntime| = {parity(student, out):.1e})"
    )
    return 0
