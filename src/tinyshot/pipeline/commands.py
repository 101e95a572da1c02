"""CLI sub-commands of the pipeline stage: `demo`, `fit`, `quantize` (int8 copy of a fit's
student), `benchmark`, `evaluate` (the pipeline's teacher over an episode file), and the
`bench inference` and `bench scale` tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tinyshot.errors import ConfigError
from tinyshot.presets import PRESET_HELP, PRESETS, merge_config, preset
from tinyshot.utils.io import read_config_file


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the `tinyshot` parser."""
    _register_demo(sub)
    _register_fit(sub)
    _register_quantize(sub)
    _register_episode_folder(sub)
    _register_benchmark(sub)
    _register_evaluate(sub)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    _register_bench_inference(bench_sub)
    p = bench_sub.add_parser(
        "scale",
        help="memory, disk and time of fit's stages at N synthetic images",
        description="Write N synthetic images in the store's format, then run every stage of "
        "`fit` that reads them (teacher labels, the student's image file, health checks, "
        "distillation for a few iterations, export, report) at the paper preset's sizes with "
        "a reduced-width random DINO teacher; prints seconds per image, disk use and, last, "
        "the peak RSS (docs/pipeline.md, 'Memory and disk at scale').",
    )
    p.add_argument("--images", type=int, required=True, help="synthetic images N")
    p.add_argument("--size", type=int, default=512, help="generated side in px (default 512)")
    p.add_argument("--iterations", type=int, default=3, help="distillation iterations")
    p.add_argument("--student", help="student architecture (default: the paper's resnet12)")
    p.add_argument("--out", help="folder (default runs/bench-scale/N-SIZE; replaced)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.set_defaults(func=_bench_scale)


def _bench_scale(args: argparse.Namespace) -> int:

    from tinyshot.pipeline.scale_bench import format_table, run_scale_bench

    if args.images < 5 or args.size < 16:
        raise ConfigError("bench scale: --images must be >= 5 and --size >= 16")
    res = run_scale_bench(
        args.images, args.size, args.out, iterations=args.iterations, student=args.student
    )
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0


# Options of the former `bench inference` table, now `--table runtimes` (any of them picks it).
RUNTIME_TABLE_OPTIONS = ("batches", "teacher_batches", "vit_batches", "vits", "teacher_size")


def _register_bench_inference(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "inference",
        help="per student and precision: size, latency, throughput, accuracy (fp32 vs int8)",
        description="The deployment table (default): per student and precision (fp32, int8), "
        "parameters, ONNX file size, batch-1 latency (median and p95 over repeated calls) and "
        "batch-64 throughput on --threads onnxruntime threads (default 1), accuracy on an "
        "episode's queries with --runs and --episode, and int8/fp32 ratios measured in the same "
        "run. --table runtimes (or any of --batches, --teacher-batches, --vit-batches, --vits, "
        "--teacher-size) prints the torch vs onnxruntime table of students and teachers "
        "instead. docs/models.md, 'Deployment table'.",
    )
    p.add_argument(
        "--table",
        choices=["deploy", "runtimes"],
        help="deploy (default) or runtimes (torch vs onnxruntime, students and teachers)",
    )
    d = p.add_argument_group("deploy table")
    d.add_argument(
        "--students",
        help="students built here, NAME[@SIZE] comma-separated (default without --runs: "
        "conv4,resnet12,efficientnet-lite0 at fit's sizes 32, 32, 128; random weights, "
        "Lite0 with its ImageNet weights, so no accuracy)",
    )
    d.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN_DIR",
        default=[],
        help="fit run folders: their model.onnx and model.int8.onnx (quantized here, not "
        "saved, when a run has none)",
    )
    d.add_argument(
        "--episode",
        metavar="FILE[:INDEX]",
        help="accuracy of the --runs models on this episode's queries (episode 0 by default); "
        "the runs must be fits on its supports (`tinyshot episode-folder`)",
    )
    d.add_argument("--root", help="dataset folder for --episode (overrides the file's)")
    d.add_argument("--precisions", default="fp32,int8", help="fp32, int8 or both (default)")
    d.add_argument(
        "--calibration-images",
        type=int,
        help="int8 copies made here for runs: calibration images (default 500)",
    )
    d.add_argument("--out", help="also write the results as JSON to this file")
    r = p.add_argument_group("runtimes table (the former default)")
    r.add_argument(
        "--size",
        type=int,
        default=None,
        help="student input size (runtimes: default 84; deploy: every built student's)",
    )
    r.add_argument("--teacher-size", type=int, default=None, help="default 224")
    r.add_argument("--batches", default=None, help="student batch sizes (default 1,64)")
    r.add_argument("--teacher-batches", default=None, help="default 1,64")
    r.add_argument(
        "--vit-batches", default=None, help="batch sizes of the ViT teachers ('' to skip them)"
    )
    r.add_argument(
        "--vits",
        default=None,
        help="ViT teachers to time (random weights, published configs, 224 px): "
        "dino-vitb16, dinov2-small, dinov2-base (default: all three)",
    )
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per cell")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime/torch threads (deploy: default 1; runtimes: default all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_bench_inference)


def _bench_inference(args: argparse.Namespace) -> int:
    runtimes = any(getattr(args, k) is not None for k in RUNTIME_TABLE_OPTIONS)
    table = args.table or ("runtimes" if runtimes else "deploy")
    if table == "runtimes":
        return _bench_runtimes(args)
    if runtimes:
        given = [f"--{k.replace('_', '-')}" for k in RUNTIME_TABLE_OPTIONS if getattr(args, k)]
        raise ConfigError(
            f"{', '.join(given)}: options of --table runtimes, not of the deploy table"
        )
    from tinyshot.pipeline.deploy_bench import (
        DEFAULT_STUDENTS,
        format_deploy_table,
        parse_students,
        run_deploy_bench,
        write_result,
    )

    spec = args.students if args.students is not None else "" if args.runs else DEFAULT_STUDENTS
    students = parse_students(spec, args.size) if spec else []
    result = run_deploy_bench(
        students=students,
        runs=args.runs,
        precisions=[p.strip() for p in args.precisions.split(",") if p.strip()],
        episode=args.episode,
        root=args.root,
        threads=args.threads or 1,
        budget=args.budget,
        calibration_images=args.calibration_images,
    )
    print(json.dumps(result, indent=2) if args.json else format_deploy_table(result))
    if args.out:
        print(f"results: {write_result(result, args.out)}")
    return 0


def _bench_runtimes(args: argparse.Namespace) -> int:
    from tinyshot.models.export import format_table, run_inference_bench

    deploy = {"--students": args.students, "--runs": args.runs, "--episode": args.episode}
    given = [k for k, v in deploy.items() if v]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: options of the deploy table, not of --table runtimes"
        )

    def ints(s: str | None, default: str) -> list[int]:
        return [int(v) for v in (default if s is None else s).split(",") if v.strip()]

    rows = run_inference_bench(
        student_size=args.size or 84,
        teacher_size=args.teacher_size or 224,
        batches=ints(args.batches, "1,64"),
        teacher_batches=ints(args.teacher_batches, "1,64"),
        vit_batches=ints(args.vit_batches, "1,8"),
        budget=args.budget,
        threads=args.threads,
        vits=[
            v.strip()
            for v in (args.vits or "dino-vitb16,dinov2-small,dinov2-base").split(",")
            if v.strip()
        ],
    )
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


# ------------------------------------------------------------------ demo and fit


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline (defaults: the CPU-sized offline configuration)")
    g.add_argument("--preset", choices=sorted(PRESETS), help=PRESET_HELP)
    g.add_argument("--config", help="JSON or TOML file with pipeline settings (docs/pipeline.md)")
    g.add_argument(
        "--generator",
        help="'fashion-mnist', 'fashion-mnist-known' or 'glyphs' (shipped offline models), "
        "an SD 1.x folder or hub id",
    )
    g.add_argument(
        "--teacher",
        help="'effnet-lite-student' (Lite0 + Lite1 at 96 px + the base-pretrained student: the "
        "default of demo, benchmark and of fit with --base), 'effnet-lite-ensemble' (Lite0 at 224 "
        "+ Lite1 at 240 px: fit's default without --base; docs/models.md), 'efficientnet-lite0', "
        "'dino-vitb16', 'dinov2-small', 'dinov2-base', a DINO ViT or DINOv2 folder or hub id",
    )
    g.add_argument(
        "--student",
        choices=["conv4", "resnet12", "efficientnet-lite0"],
        help="student architecture (default conv4; efficientnet-lite0: ImageNet weights, 128 px "
        "and a short base-class fine-tune unless set; docs/models.md)",
    )
    g.add_argument(
        "--image-size", type=int, help="student input size in pixels (default 32; Lite0 128)"
    )
    g.add_argument("--synthetic", type=int, help="synthetic images per class")
    g.add_argument("--alpha", type=float, help="TINT noise blend in [0, 1] (paper: 1)")
    g.add_argument("--ti-steps", type=int, help="textual inversion iterations (paper: 5000)")
    g.add_argument(
        "--lora-steps",
        type=int,
        help="LoRA training steps of the lora* methods (default 1000; the known-world demo 100)",
    )
    g.add_argument(
        "--lora-prompt",
        choices=["token", "name"],
        help="lora* methods: a learned token per class (default) or the class (folder) name "
        "(the known-world demo's)",
    )
    g.add_argument("--iterations", type=int, help="distillation iterations (paper: 10000)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")
    g.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: OMP_NUM_THREADS, else the cores this process may use); "
        "results are identical between runs with the same count",
    )


def _pipeline_overrides(args: argparse.Namespace, file_config: dict[str, Any]) -> dict[str, Any]:
    d = merge_config(preset(getattr(args, "preset", None)), file_config)
    flat = {
        "generator": args.generator,
        "teacher": args.teacher,
        "student": args.student,
        "image_size": args.image_size,
        "synthetic_per_class": args.synthetic,
        "alpha": args.alpha,
        "device": args.device,
    }
    d.update({k: v for k, v in flat.items() if v is not None})
    if args.ti_steps is not None:
        d["specialize"] = {**d.get("specialize", {}), "ti_steps": args.ti_steps}
    for key, value in (("steps", args.lora_steps), ("prompt", args.lora_prompt)):
        if value is not None:
            d["lora"] = {**d.get("lora", {}), key: value}
    if args.iterations is not None:
        d["distill"] = {**d.get("distill", {}), "iterations": args.iterations}
    return d


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo on Fashion-MNIST: TINT vs baselines, table + report.html",
        description="Specialize the shipped generator on each episode's supports, generate "
        "synthetic images (TINT, plain TI, DA-Fusion, class-name prompts, a LoRA-adapted "
        "generator), pseudo-label with the teacher, distill Conv4 students under "
        "each setting and evaluate them on the test split. Rerun the same command to resume.",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument(
        "--world",
        choices=["known", "unknown"],
        help="'known' (default): the generator knows the ten class names but never saw the "
        "support pool (the paper's setting); 'unknown': it never saw the novel classes named",
    )
    p.add_argument("--episodes", type=int, help="number of episodes (default 1)")
    p.add_argument("--shots", type=int, help="support images per class (default 5)")
    p.add_argument(
        "--queries", type=int, help="queries per class from the test split (default all)"
    )
    p.add_argument("--seed", type=int, help="episode sampling seed (default 0)")
    p.add_argument(
        "--methods",
        help="comma-separated subset of teacher,support-only,support+base,name,ti,dafusion,tint "
        "and lora,lora-dafusion,lora-tint (LoRA-adapted generator; docs/pipeline.md). Default: "
        "the first seven and the world's LoRA method: in the concept-known world lora "
        "(DataDream: fresh noise, class names, 100 LoRA steps) in place of name, in the "
        "unknown one lora-dafusion",
    )
    _add_pipeline_options(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from tinyshot.pipeline.demo import DemoConfig, run_demo

    raw = read_config_file(args.config) if args.config else {}
    pipe = _pipeline_overrides(args, raw.pop("pipeline", {}))
    if args.methods:
        pipe["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    top = {k: v for k, v in raw.items()}
    for key in ("world", "episodes", "shots", "queries", "seed"):
        if getattr(args, key) is not None:
            top[key] = getattr(args, key)
    top["pipeline"] = pipe
    run_demo(args.out, DemoConfig.from_dict(top))
    return 0


def _register_fit(sub: argparse._SubParsersAction) -> None:
    from tinyshot.pipeline.config import GENERATORS

    p = sub.add_parser(
        "fit",
        help="train a tiny classifier from an ImageFolder of your classes (K images each)",
        description="specialize -> generate -> pseudo-label -> distill -> export ONNX. "
        "DATA_DIR holds one sub-folder per class. Leaves RUN_DIR/model.onnx, classes.json, "
        "report.html and config.json; rerun the same command to resume after an interruption.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one sub-folder per class")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument(
        "--base",
        help="optional base-class images for distillation and student pretraining: a folder of "
        "class folders, or a dataset NAME[:SPLIT] such as fashion-mnist:base",
    )
    p.add_argument(
        "--method",
        default="tint",
        choices=[*GENERATORS, "support+base", "support-only"],
        help="which data the student learns from (default tint; name: images of "
        "'a photo of a {folder name}', underscores as spaces; lora, lora-dafusion, lora-tint: "
        "the generator itself adapted to your images by LoRA (DataDream), sampled from noise, "
        "img2img or TINT; for classes the generator cannot draw)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop with exit code 3 instead of distilling when a class's synthetic images fail "
        "the health check (teacher agreement not above chance); finished stages are kept",
    )
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="N",
        help="keep N support images per class out of every training stage and report student "
        "and teacher accuracy on them (an estimate from few real images; default 0)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="after export, also write RUN_DIR/model.int8.onnx (what `tinyshot quantize` does)",
    )
    _add_pipeline_options(p)
    p.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from tinyshot.pipeline.config import PipelineConfig
    from tinyshot.pipeline.fit import fit, fit_teacher_defaults
    from tinyshot.pipeline.quantize_run import quantize_run

    raw = read_config_file(args.config) if args.config else {}
    pipe = _pipeline_overrides(args, raw)
    pipe["methods"] = [args.method]
    if "teacher" not in pipe:  # no flag, config file or preset names one: fit's own default
        defaults = fit_teacher_defaults(args.base, bool(pipe.get("pretrain_student", True)))
        pipe["teacher"] = defaults["teacher"]
        pipe.setdefault("teacher_input_size", defaults["teacher_input_size"])
    summary = fit(
        args.data_dir,
        args.out,
        PipelineConfig.from_dict(pipe),
        base=args.base,
        seed=args.seed,
        strict=args.strict,
        holdout=args.holdout,
    )
    print(f"model:   {summary['model']}")
    if args.quantize:
        print(_quantized_line(quantize_run(args.out)))
    print(f"classes: {', '.join(summary['classes'])}")
    print(f"report:  {Path(args.out) / 'report.html'}")
    for line in health_lines(summary.get("health", {})):
        print(line)
    print(f"predict: tinyshot predict {summary['model']} IMAGES...")
    return 0


def _register_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="write an int8 copy of a fit run's model (RUN_DIR/model.int8.onnx)",
        description="onnxruntime static quantization (QDQ, int8 weights per channel, uint8 "
        "activations) of RUN_DIR/model.onnx, calibrated on the run's own supports and "
        "synthetic images (never held-out supports), prepared as `predict` prepares images. "
        "Writes RUN_DIR/model.int8.onnx and RUN_DIR/quantize.json; `tinyshot predict RUN_DIR "
        "--int8 IMAGES` uses it. docs/models.md, 'int8'.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished `tinyshot fit` run folder")
    p.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        metavar="N",
        help="use at most N images, supports first (default 500)",
    )
    p.add_argument(
        "--activations",
        choices=["uint8", "int8"],
        default="uint8",
        help="uint8 (default; the x86 fast path) or int8 (x86 CPUs without VNNI, ARM)",
    )
    p.add_argument(
        "--fp32-convs",
        type=int,
        default=None,
        metavar="N",
        help="keep the first N convolutions in fp32 (default: the student's measured setting, "
        "3 for efficientnet-lite0, 0 for conv4 and resnet12)",
    )
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from tinyshot.pipeline.quantize_run import quantize_run

    record = quantize_run(
        args.run_dir, args.calibration_images, args.activations, fp32_convs=args.fp32_convs
    )
    print(_quantized_line(record))
    return 0


def _register_episode_folder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "episode-folder",
        help="write an episode's supports as class folders (a `fit` DATA_DIR)",
        description="Write the support images of one episode of an episode file as one folder "
        "per class, so `tinyshot fit` can train on exactly that episode and `tinyshot bench "
        "inference --runs RUN_DIR --episode FILE[:INDEX]` can score the result on its queries "
        "(which are not written).",
    )
    p.add_argument("episode", metavar="FILE[:INDEX]", help="episode file, episode 0 by default")
    p.add_argument("--out", required=True, help="a new (or empty) folder")
    p.add_argument("--root", help="dataset folder (overrides the episode file's)")
    p.set_defaults(func=cmd_episode_folder)


def cmd_episode_folder(args: argparse.Namespace) -> int:
    from tinyshot.pipeline.deploy_bench import write_episode_supports

    print(f"supports: {write_episode_supports(args.episode, args.out, args.root)}")
    return 0


def _quantized_line(record: dict[str, Any]) -> str:
    agree = record["top1_agreement_with_fp32"]
    cal = record["calibration"]
    return (
        f"int8:    {record['int8_model']} ({100 * record['size_ratio']:.0f}% of fp32's size; "
        f"calibrated on {cal['supports']} support + {cal['synthetic']} synthetic images, "
        f"top-1 agrees with fp32 on {100 * agree['fraction']:.1f}% of them)"
    )


def health_lines(health: dict[str, Any]) -> list[str]:
    """One stdout line per generator (evaluation.health.status_line), then the run's notes;
    nothing about synthetic images when none were made."""
    from tinyshot.evaluation.health import status_line

    gens = health.get("generators", {})
    lines = [f"health:  {status_line(g, info)}" for g, info in gens.items()]
    problems = {p for c in health.get("classes", []) for p in c.get("problems", [])}
    notes = [w for w in health.get("warnings", []) if w not in problems]
    if notes:
        lines.append(f"health:  {len(notes)} note(s) about the run; see the log")
    if any(info.get("status") != "ok" for info in gens.values()):
        lines.append("health:  details in the report's banner and health.json")
    return lines


# ------------------------------------------------------------------ benchmark


def _register_benchmark(sub: argparse._SubParsersAction) -> None:
    from tinyshot.data.commands import _queries
    from tinyshot.pipeline.benchmark import DEFAULT_EPISODE_FN

    p = sub.add_parser(
        "benchmark",
        help="run methods on many episodes (Ray tasks, resumable) and report accuracy ± CI",
        description="Run every method on every episode of an episode file (or of P episodes "
        "sampled here), one Ray task per episode, locally or on a cluster (--address). "
        "Finished episodes are kept: rerun the same command to resume. Results: "
        "OUT/results.json, OUT/summary.txt, OUT/episodes/<i>.json, OUT/failures/<i>.json. "
        "See docs/benchmark.md.",
    )
    p.add_argument(
        "--episodes",
        required=True,
        help="an episode file (from `tinyshot episodes`), or a number P of episodes to sample "
        "into OUT/episodes.json",
    )
    p.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME[=CONFIG]",
        help="a method; CONFIG is a JSON/TOML file or an inline JSON object (repeatable). "
        "A JSON/TOML file alone lists several methods. Default: the episode function's "
        "DEFAULT_METHODS",
    )
    p.add_argument("--out", required=True, help="run folder (rerun with it to resume)")
    g = p.add_argument_group("sampling (with --episodes P)")
    g.add_argument("--dataset", default=None, help="registry name (see `tinyshot datasets`)")
    g.add_argument("--root", default=None, help="dataset folder; also overrides an episode file's")
    g.add_argument("--split", default=None, help="split for supports (default: the novel split)")
    g.add_argument("--query-split", default=None, help="draw queries from this split")
    g.add_argument("--ways", type=int, default=5)
    g.add_argument("--shots", type=int, default=5)
    g.add_argument("--queries", type=_queries, default=None, help="per class, or 'all' (default)")
    g.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="loader option"
    )
    r = p.add_argument_group("execution")
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        help="episodes at a time (default: what fits here: GPUs / --gpus-per-task, else "
        "CPUs / --cpus-per-task; no cap on a cluster)",
    )
    r.add_argument("--cpus-per-task", type=float, default=1.0, help="also the torch threads")
    r.add_argument("--gpus-per-task", type=float, default=0.0)
    r.add_argument(
        "--address", default=None, help="join a Ray cluster (`ray start`), e.g. auto or HOST:6379"
    )
    r.add_argument("--no-ray", action="store_true", help="run episodes one after another here")
    r.add_argument("--max-retries", type=int, default=2, help="retries of a killed worker")
    r.add_argument("--episode-fn", default=DEFAULT_EPISODE_FN, help="package.module:function")
    r.add_argument("--device", default="auto", help="device inside each episode (auto, cpu, cuda)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed and per-episode seeds")
    r.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="pipeline settings for every method, under each method's own config: "
        + PRESET_HELP.split(": ", 1)[1],
    )
    r.add_argument(
        "--only",
        default=None,
        metavar="INDICES",
        help="run only these episodes, e.g. 6-9 or 0,3,5-7 (a shard: episodes keep their "
        "index and seed; the results aggregate every finished episode in OUT)",
    )
    r.add_argument("--no-check", action="store_true", help="skip checking item ids up front")
    s = p.add_argument_group("statistics")
    s.add_argument(
        "--target-halfwidth",
        type=float,
        default=None,
        help="report the episodes a 95%% CI of ± this (accuracy units, e.g. 0.005) needs",
    )
    s.add_argument("--confidence", type=float, default=0.95)
    p.set_defaults(func=cmd_benchmark)


def load_methods_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """{"methods": {name: config}} or {name: config}, from JSON or TOML."""
    data = read_config_file(path, "--method")
    methods = data.get("methods", data) if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"{path}: expected a table of methods, name -> config")
    for name, cfg in methods.items():
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: method {name!r}: config must be a table/object")
    return {str(k): dict(v) for k, v in methods.items()}


def parse_methods(items: list[str]) -> dict[str, dict[str, Any]] | None:
    """`--method` values: NAME, NAME=FILE, NAME={json}, or a methods file; None when empty."""
    methods: dict[str, dict[str, Any]] = {}

    def add(name: str, cfg: Any, where: str) -> None:
        if not name:
            raise ConfigError(f"--method {where!r}: empty method name")
        if not isinstance(cfg, dict):
            raise ConfigError(f"--method {where!r}: the config must be a JSON/TOML object")
        if name in methods:
            raise ConfigError(f"--method: method {name!r} given twice")
        methods[name] = dict(cfg)

    for item in items:
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq:
            if Path(name).suffix.lower() in (".json", ".toml") and Path(name).is_file():
                for k, v in load_methods_file(name).items():
                    add(k, v, item)
            else:
                add(name, {}, item)
        elif value.startswith("{"):
            try:
                add(name, json.loads(value), item)
            except json.JSONDecodeError as e:
                raise ConfigError(f"--method {item!r}: invalid inline JSON ({e})") from e
        else:
            add(name, read_config_file(value, "--method"), item)
    return methods or None


def apply_preset(
    methods: dict[str, dict[str, Any]] | None, name: str, episode_fn: str
) -> dict[str, dict[str, Any]]:
    """The preset under each method's own config (the episode function's default methods
    when none are given): a method's keys win over the preset's."""
    from tinyshot.pipeline.benchmark import default_methods

    methods = methods or default_methods(episode_fn)
    if not methods:
        raise ConfigError(f"--preset: give --method ({episode_fn} declares no default methods)")
    return {m: merge_config(preset(name), cfg) for m, cfg in methods.items()}


def cmd_benchmark(args: argparse.Namespace) -> int:
    from tinyshot.data.commands import parse_options
    from tinyshot.pipeline.benchmark import prepare_episodes, run_benchmark
    from tinyshot.pipeline.benchmark.runners import parse_indices

    methods = parse_methods(args.method)
    if args.preset:
        methods = apply_preset(methods, args.preset, args.episode_fn)
    out = Path(args.out)
    limit = None
    if args.episodes.strip().isdigit():
        if not args.dataset:
            raise ConfigError("--episodes P samples episodes: give --dataset (or an episode file)")
        limit = int(args.episodes)
        episodes = prepare_episodes(
            out / "episodes.json",
            args.dataset,
            limit,
            split=args.split,
            query_split=args.query_split,
            root=args.root,
            options=parse_options(args.option),
            ways=args.ways,
            shots=args.shots,
            queries=args.queries,
            seed=args.seed,
        )
    else:
        episodes = Path(args.episodes)
        if not episodes.is_file():
            raise ConfigError(f"--episodes {episodes}: no such episode file (or give a number)")
        if args.dataset:
            from tinyshot.data.episode_io import read_episodes
            from tinyshot.data.registry import dataset_info

            name = (read_episodes(episodes)[1].get("dataset") or {}).get("name")
            if name != dataset_info(args.dataset).name:
                raise ConfigError(
                    f"--dataset {args.dataset}: the episode file {episodes} is for {name!r}"
                )
    result = run_benchmark(
        episodes,
        methods,
        out,
        episode_fn=args.episode_fn,
        use_ray=False if args.no_ray else None,
        address=args.address,
        num_workers=args.workers,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        max_retries=args.max_retries,
        seed=args.seed,
        target_halfwidth=args.target_halfwidth,
        confidence=args.confidence,
        root=args.root,
        device=args.device,
        limit=limit,
        only=None if args.only is None else parse_indices(args.only),
        check=not args.no_check,
        log_to_driver=bool(getattr(args, "verbose", False)),
    )
    print(result.render(), end="")
    print(f"results: {result.results_path}")
    if result.failures:
        print(
            f"{len(result.failures)} episode(s) failed (details in {out / 'failures'}); "
            "rerun the same command to retry them"
        )
        return 1
    return 0


# ------------------------------------------------------------------ evaluate


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a ProtoNet teacher on every episode of an episode file (95%% t-CI)",
        description="ProtoNet accuracy of a teacher on each episode of an episode file, using "
        "all the queries the file lists, with images prepared as the pipeline's teacher gets "
        "them (the default teacher scores a benchmark episode's teacher row). Writes "
        "per-episode accuracies and the mean with a Student-t confidence interval as JSON "
        "(resumable), and prints a table.",
    )
    p.add_argument("--episodes", required=True, type=Path, help="episode file (tinyshot episodes)")
    p.add_argument(
        "--teacher",
        default="effnet-lite-student",  # = pipeline.config.DEFAULT_TEACHER (no torch at start-up)
        help="teacher backbone or ensemble spec (default: the pipeline's effnet-lite-student; "
        "its 'student' member is the dataset's base-pretrained student, shipped or cached): "
        "efficientnet-lite0, dino-vitb16, dinov2-small, dinov2-base, conv4, resnet12, a local "
        "ViT / DINOv2 folder or hub id",
    )
    p.add_argument("--teacher-checkpoint", type=Path, help="meta-trained teacher checkpoint")
    p.add_argument("--teacher-input-size", type=int, help="backbone input size (default: its own)")
    p.add_argument("--root", type=Path, help="dataset folder (overrides the episode file's root)")
    p.add_argument(
        "--out", type=Path, help="results JSON (default: <episodes>.<teacher>.results.json)"
    )
    p.add_argument("--limit", type=int, help="only the first N episodes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)


def _default_out(episodes: Path, teacher: str) -> Path:
    tag = Path(teacher).name.replace("/", "_") or "teacher"
    return episodes.with_name(f"{episodes.stem}.{tag}.results.json")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tinyshot.data.episode_io import read_episodes
    from tinyshot.evaluation.episodic import evaluate_teacher_on_episode_file
    from tinyshot.models.teacher import build_teacher
    from tinyshot.pipeline.task_config import bind_teacher_spec
    from tinyshot.utils.device import resolve_device
    from tinyshot.utils.logging import get_logger

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    _, meta = read_episodes(args.episodes)
    if args.root is not None:
        meta = {**meta, "dataset": {**(meta.get("dataset") or {}), "root": str(args.root)}}
    spec, warning = bind_teacher_spec(args.teacher, meta)
    if warning:
        get_logger("pipeline.commands").warning("%s", warning)
    dev = resolve_device(args.device)
    kw = {"input_size": args.teacher_input_size} if args.teacher_input_size else {}
    teacher = build_teacher(spec, checkpoint=args.teacher_checkpoint, **kw).to(dev).eval()
    out = args.out or _default_out(args.episodes, args.teacher)
    name = (
        args.teacher
        if args.teacher_checkpoint is None
        else f"{args.teacher}@{args.teacher_checkpoint}"
    )
    results = evaluate_teacher_on_episode_file(
        teacher,
        args.episodes,
        out,
        root=args.root,
        teacher_name=name,
        method=f"teacher ({args.teacher})",
        batch_size=args.batch_size,
        limit=args.limit,
    )
    Console().print(results.table(title=f"{args.episodes.name}: ProtoNet teacher"))
    print(f"per-episode accuracies: {out}")
    return 0
