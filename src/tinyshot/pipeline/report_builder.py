"""Assemble `report.html` for a demo or fit run from the files its stages left behind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyshot.pipeline.report import Report
from tinyshot.utils.io import read_json
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.report")

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SHOW_PER_GENERATOR = 10
# demo tables and reports: what each method is, in words
METHOD_LABELS = {
    "teacher": "teacher (ProtoNet; not tiny)",
    "support-only": "student: support only",
    "support+base": "student: support + base (LabelHalluc)",
    "name": "student: + class-name prompt synthetic",
    "ti": "student: + plain-TI synthetic",
    "dafusion": "student: + DA-Fusion synthetic",
    "tint": "student: + TINT synthetic (full method)",
    "lora": "student: + LoRA synthetic (DataDream)",
    "lora-dafusion": "student: + LoRA img2img synthetic",
    "lora-tint": "student: + LoRA-TINT synthetic",
}
# the student's validation curve of a fit run
VAL_NAME = "agreement with the teacher on held-out synthetic images"
# fit.json / result.json timing keys, in the words of the report
STAGE_LABELS = {
    "specialize_s": "specialization (textual inversion + null-text inversion)",
    "generate_ti_s": "image generation, textual inversion only",
    "generate_dafusion_s": "image generation, DA-Fusion",
    "generate_tint_s": "image generation, TINT",
    "specialize_lora_s": "LoRA specialization (training; null-text inversion for lora-tint)",
    "generate_lora_s": "image generation, LoRA",
    "generate_lora-dafusion_s": "image generation, LoRA img2img",
    "generate_lora-tint_s": "image generation, LoRA-TINT",
    "teacher_s": "teacher labels for the synthetic images",
    "student_images_s": "synthetic images at the student's size (memory-mapped file)",
    "health_s": "health checks of the synthetic images",
    "export_s": "ONNX export",
    "report_s": "report",
    "teacher_and_labels_s": "teacher labels and teacher accuracy",
    "distill_s": "student distillation",
}


def stage_label(key: str) -> str:
    return STAGE_LABELS.get(key, key.removesuffix("_s").replace("_", " "))


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _synthetic_rows(
    report: Report,
    episode_dir: Path,
    class_index: int,
    generators: Sequence[str],
    prep: Any = None,
) -> None:
    """Generated images beside the supports, without a pad-mode generator's border (as the
    teacher and the student see them)."""
    from tinyshot.data.transforms import crop_generator_frame, images_to_tensor, tensor_to_pil
    from tinyshot.diffusion.store import ImageStore

    for g in generators:
        folder = episode_dir / "synthetic" / g
        if not (folder / "manifest.jsonl").exists() and not folder.is_dir():
            continue
        try:
            imgs = ImageStore(folder).load_images(class_index, limit=SHOW_PER_GENERATOR)
        except Exception as e:
            log.warning("report: cannot read %s (%s)", folder, e)
            continue
        if prep is not None and imgs:
            x = images_to_tensor(imgs)
            imgs = [tensor_to_pil(t) for t in crop_generator_frame(x, prep.at_side(x.shape[-1]))]
        report.images(f"{g} generated", imgs)


def _alpha_rows(
    report: Report, episode_dir: Path, generator: str, class_names: list[str], used: float
) -> None:
    """The alpha sweep: one support image per class, alpha 0 (reconstruction) .. 1 (new sample),
    in the supports' frame (crop_generator_frame)."""
    from tinyshot.data.transforms import crop_generator_frame, images_to_tensor, tensor_to_pil
    from tinyshot.diffusion.artifacts import load_artifacts
    from tinyshot.diffusion.generate import alpha_sweep
    from tinyshot.diffusion.model import load_diffusion_model
    from tinyshot.pipeline.config import resolve_generator

    spec = episode_dir / "specialize"
    if not spec.is_dir():
        return
    model = load_diffusion_model(resolve_generator(generator))
    prep = model.image_prep
    artifacts = load_artifacts(spec)
    report.heading("Alpha sweep (TINT, Eq. 3-4)", 3)
    report.paragraph(
        "Each row starts from one support image's inverted noise z_T and blends in fresh noise: "
        f"alpha = {', '.join(map(str, ALPHAS))}. alpha = 0 reconstructs the support image "
        f"(null-text inversion); alpha = 1 gives new samples. Training used alpha = {used}.",
        note=True,
    )
    for c, name in enumerate(class_names):
        row = alpha_sweep(model, artifacts, c, 0, ALPHAS, seed=c)
        row = [tensor_to_pil(x) for x in crop_generator_frame(images_to_tensor(row), prep)]
        report.images(f"{name}", row)


def _curves(report: Report, episode_dir: Path, methods: Sequence[str]) -> None:
    series = {}
    for m in methods:
        hist = episode_dir / "students" / m / "history.json"
        if not hist.is_file():
            continue
        curve = [e for e in read_json(hist).get("curve", []) if "val_acc" in e]
        if curve:
            label = METHOD_LABELS.get(m, m)
            series[label] = ([e["step"] for e in curve], [100 * e["val_acc"] for e in curve])
    if series:
        report.heading(
            "Student accuracy on held-out query images during distillation (episode 1)", 3
        )
        report.chart(
            series, y_label="accuracy (%)", x_label="distillation iteration", y_range=(0, 100)
        )


def _health_banner(report: Report, health: dict[str, Any] | None, label: str) -> None:
    """First thing in the report: sources, health per generator, warnings (evaluation.health)."""
    if health:
        from tinyshot.evaluation.health_summary import banner_html

        report.raw(banner_html(health, label))


def _real_estimate(report: Report, health: dict[str, Any] | None, agree: float | None) -> None:
    """Accuracy on real held-out supports beside the agreement on synthetic images."""
    real = (health or {}).get("real_image_estimate") or {}
    t, h = real.get("teacher_loo") or {}, real.get("holdout") or {}
    rows = []
    if agree is not None:
        rows.append(
            ["student: agreement with the teacher", "held-out synthetic", f"{100 * agree:.1f}"]
        )
    if h.get("images"):
        rows.append(
            ["student", f"{h['images']} held-out support images", f"{100 * h['student']:.1f}"]
        )
        rows.append(
            ["teacher", f"{h['images']} held-out support images", f"{100 * h['teacher']:.1f}"]
        )
    if t.get("images"):
        rows.append(
            [
                "teacher (leave-one-out ProtoNet)",
                f"{t['images']} support images",
                f"{100 * t['accuracy']:.1f}",
            ]
        )
    if not rows:
        return
    report.heading("Accuracy estimate on real images", 3)
    report.paragraph(
        "An estimate from few images: each real image is one vote, so with n images the 95% "
        "interval is about +-100/sqrt(n) points. "
        + (
            "The student was not evaluated on real images: every support trained it; rerun "
            "with --holdout 1 to keep one image per class out of every stage."
            if not h.get("images")
            else "Held-out supports were kept out of specialization, the teacher's prototypes "
            "and distillation."
        ),
        note=True,
    )
    report.table(["model", "images", "accuracy %"], rows)


def build_demo_report(
    out: Path,
    results: dict[str, Any],
    episodes: list[Any],
    support_ds: Any,
    query_ds: Any,
    config: Any,
) -> Path:
    from tinyshot.pipeline.config import GENERATORS, generator_prep

    pipe = config.pipeline
    prep = generator_prep(pipe)
    report = Report("tinyshot demo: TINT few-shot distillation on Fashion-MNIST")
    _health_banner(report, results.get("health"), "all methods of the comparison")
    world = getattr(config, "world", "unknown")
    seen = (
        "trained with all ten class names, but never on the held-out pool the supports come "
        "from (the concept-known world, the paper's setting)"
        if world == "known"
        else "trained with the base-class names only; the novel classes it saw unlabelled "
        "(the concept-unknown world)"
    )
    report.paragraph(
        f"{len(episodes)} episodes of {config.ways}-way {config.shots}-shot over the novel classes "
        "(Sandal, Shirt, Sneaker, Bag, Ankle boot). Supports from the train split, queries from "
        f"the test split, which no model saw. Generator: {pipe.generator}, the project's own "
        f"text-to-image model, {seen} (docs/pretrained-generator.md)."
    )
    report.heading("Results")
    rows = []
    for m, s in results["summary"].items():
        ci = "n/a" if s["ci95"] != s["ci95"] else f"{100 * s['ci95']:.2f}"
        rows.append(
            [
                METHOD_LABELS.get(m, m),
                f"{100 * s['mean']:.2f}",
                ci,
                s["episodes"],
                int(s["queries"]),
            ]
        )
    report.table(["method", "accuracy %", "95% CI +-", "episodes", "queries/episode"], rows)
    if hr := results.get("teacher_headroom"):
        report.paragraph(
            f"Teacher headroom over the best student ({hr['best_student']}): "
            f"{100 * hr['headroom']:+.2f} points. "
            + (f"WARNING: {hr['warning']}." if hr["warning"] else "Enough to rank the sources.")
        )
    fd = results.get("frechet")
    if fd:
        names = list(next(iter(fd["per_generator"].values())).keys())
        report.paragraph(
            f"Data quality: Frechet distance on EfficientNet-Lite0 features ({fd['metric']}, not "
            f"FID), {fd['images_per_class']} generated vs {fd['images_per_class']} real test "
            "images per class; lower is better.",
            note=True,
        )
        report.table(
            ["generator", "mean", *names],
            [
                [g, f"{fd['mean'][g]:.1f}", *[f"{v:.1f}" for v in per.values()]]
                for g, per in fd["per_generator"].items()
            ],
        )
    judged = results.get("judged")
    if judged:
        names = list(next(iter(judged["per_generator"].values()))["per_class"])
        report.paragraph(
            "Class fidelity of the synthetic images: the share of episode 1's images that a "
            "judge (Conv4 trained on the real train split, 10-way, chance 10%) labels as their "
            "class. Independent of the teacher, which labels them for the students.",
            note=True,
        )
        report.table(
            ["generator", "mean %", *names],
            [
                [g, f"{100 * (j['mean'] or 0):.1f}"]
                + [("n/a" if v is None else f"{100 * v:.0f}") for v in j["per_class"].values()]
                for g, j in judged["per_generator"].items()
            ],
        )
    ep_dir = out / "episodes" / "0000"
    generators = [g for g in GENERATORS if g in pipe.methods]
    students = [m for m in pipe.methods if m != "teacher"]
    _curves(report, ep_dir, students)
    report.heading("Episode 1: support and generated images per class")
    ep = episodes[0]
    for c, name in enumerate(ep.classes):
        report.heading(name, 3)
        support = [support_ds.load_image(support_ds.index_of(i)) for i in ep.support[c]]
        report.images("support", support)
        _synthetic_rows(report, ep_dir, c, generators, prep)
    if "tint" in generators:
        try:
            _alpha_rows(report, ep_dir, pipe.generator, ep.classes, pipe.alpha)
        except Exception as e:
            log.warning("report: alpha sweep failed (%s)", e)
    report.heading("Configuration")
    import json

    report.code(json.dumps(results["config"], indent=2))
    return report.write(out / "report.html")


def build_fit_report(out: Path, summary: dict[str, Any], data: Any, config: Any) -> Path:
    """The `fit` report: support images, generated samples, alpha sweep, training curve."""
    import json

    from tinyshot.pipeline.config import GENERATORS, generator_prep

    report = Report(f"tinyshot fit: {len(summary['classes'])} classes")
    _health_banner(report, summary.get("health"), f"method {summary['method']}")
    report.paragraph(
        f"Student {summary['student']['arch']} at {summary['student']['input_size']} px, trained "
        f"with {summary['method']}; exported to {Path(summary['model']).name}. Generator: "
        f"{summary['generator']}; teacher: {summary['teacher']}."
    )
    inputs = summary.get("inputs")
    if inputs:
        t, st, g = inputs["teacher"], inputs["student"], inputs["generator"]["image_prep"]
        how = (
            f"{g['content_size'] or g['size']} px centred on a {g['size']} px canvas "
            f"(pad value {g['pad_value']})"
            if g["mode"] == "pad"
            else f"resized to {g['size']} px"
        )
        report.paragraph(
            f"What each model was given: the teacher the original images at its own "
            f"{t['input_size']} px input; the student {st['input_size']} px images, "
            f"{'with' if st['base_pretrained'] else 'without'} base-class pretraining and "
            f"{st['base_images']} base images; the generator the supports {how}"
            f"{', in grey' if g['grey'] else ''}, as its training images were.",
            note=True,
        )
    agree = summary.get("teacher_agreement_on_heldout_synthetic")
    if agree is not None:
        report.paragraph(
            f"Agreement with the teacher on held-out synthetic images: {100 * agree:.1f}% "
            "(there is no labelled query set in a fit run; evaluate on your own test images "
            "with `tinyshot predict`).",
            note=True,
        )
    _real_estimate(report, summary.get("health"), agree)
    attempts = int(summary.get("attempts", 1))
    report.heading("Time per stage", 3)
    rows = [[stage_label(k), duration(v)] for k, v in summary["timings"].items()]
    total = summary.get("wall_seconds")
    if total is not None:
        rows.append(
            ["total" + (f" ({attempts} attempts)" if attempts > 1 else ""), duration(total)]
        )
    report.table(["stage", "time"], rows)
    if attempts > 1:
        report.paragraph(
            f"This run was interrupted and resumed ({attempts} attempts); times are summed over "
            "all attempts.",
            note=True,
        )
    hist = out / "student" / "history.json"
    if hist.is_file():
        curve = read_json(hist).get("curve", [])
        pts = [e for e in curve if "val_acc" in e]
        if pts:
            report.heading(f"Student {VAL_NAME} during distillation", 3)
            report.chart(
                {VAL_NAME: ([e["step"] for e in pts], [100 * e["val_acc"] for e in pts])},
                y_label="agreement (%)",
                x_label="distillation iteration",
                y_range=(0, 100),
            )
        losses = [e for e in curve if "loss" in e]
        if losses:
            report.heading("Student training loss", 3)
            report.chart(
                {"training loss (all sources)": (
                    [e["step"] for e in losses], [e["loss"] for e in losses]
                )},
                y_label="loss",
                x_label="distillation iteration",
            )  # fmt: skip
    generators = [g for g in GENERATORS if g in config.methods]
    report.heading("Support and generated images per class")
    for c, name in enumerate(data.class_names):
        report.heading(name, 3)
        report.images("support", data.support_pil[c])
        _synthetic_rows(report, out, c, generators, generator_prep(config))
    if "tint" in generators:
        try:
            _alpha_rows(report, out, config.generator, data.class_names, config.alpha)
        except Exception as e:
            log.warning("report: alpha sweep failed (%s)", e)
    report.heading("Configuration")
    report.code(json.dumps(config.to_dict(), indent=2))
    return report.write(out / "report.html")
