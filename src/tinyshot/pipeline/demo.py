"""`tinyshot demo`: the whole method, offline, on Fashion-MNIST's five novel classes.

Two worlds, one shipped generator each (docs/pretrained-generator.md):
- "known" (default), the paper's setting: the generator saw all ten classes named, except a
  held-out pool of novel train images (split `novel-pool`) from which the supports come, so
  textual inversion has a concept to find, as Stable Diffusion has for sandals and bags;
- "unknown": the generator saw base-class captions plus unlabelled novel images under one
  generic caption (a user's truly new classes); supports from the novel train images.
Queries come from the test split (seen by no model); the teacher is the pipeline's default
ProtoNet (`effnet-lite-student`: Lite0 and Lite1 at 96 px plus the base-pretrained student).
Every episode goes through `run_pipeline_episode` with all methods; the run folder holds:

    episodes.json       the episode file (re-used on rerun)
    episodes/<i>/       each episode's stages (resumable)
    results.json        per-method mean accuracy, 95% t-interval, per-episode accuracies,
                        Frechet distances per generator and class, timings
    summary.txt         the printed table
    report.html         self-contained report (images embedded)
    log.txt             the log
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from tinyshot.data.episodes import Episode
from tinyshot.errors import ConfigError
from tinyshot.pipeline.config import (
    DEFAULT_METHODS,
    GENERATORS,
    METHODS,
    PipelineConfig,
    generator_prep,
    resolve_generator,
)
from tinyshot.pipeline.report_builder import METHOD_LABELS
from tinyshot.utils.io import read_json, write_json
from tinyshot.utils.logging import get_logger, progress, setup_logging
from tinyshot.utils.seed import derive_seed

log = get_logger("pipeline.demo")


@dataclass(frozen=True)
class World:
    generator: str  # shipped generator name
    support_split: str  # fashion-mnist split the supports are drawn from
    about: str
    # The LoRA method the demo adds to the pipeline's defaults here (the world's best on the
    # test-split episodes, docs/results.md) and its budget (PipelineConfig.lora keys; a
    # preset, file or flag wins).
    lora_method: str = "lora-dafusion"
    lora: dict[str, Any] = field(default_factory=dict)
    # Default methods the demo leaves out here, to stay under 10 minutes (--methods runs them)
    left_out: tuple[str, ...] = ()


WORLDS = {
    "known": World(
        "fashion-mnist-known",
        "novel-pool",
        "generator trained with all ten class names, never on the held-out support pool",
        # The generator already draws these classes by name: DataDream's sampling (fresh
        # noise, the class-name prompt) beats editing the supports here, and 100 steps keep
        # `make demo` under 10 minutes (docs/results.md, "LoRA in the concept-known world").
        lora_method="lora",
        lora={"steps": 100, "prompt": "name"},
        # `lora` is the class-name prompt through the adapted generator; plain `name` (a tie
        # with it on the test episodes, +0.17 +- 0.64) would take the demo past 10 minutes.
        left_out=("name",),
    ),
    "unknown": World(
        "fashion-mnist",
        "novel-train",
        "generator trained with base-class names only; novel images unlabelled",
    ),
}
DEFAULT_WORLD = "known"


def demo_methods(world: str = DEFAULT_WORLD) -> tuple[str, ...]:
    """The pipeline's default methods plus the world's LoRA method (issue 32), less what the
    world leaves out."""
    w = WORLDS.get(world, WORLDS[DEFAULT_WORLD])
    return (*(m for m in DEFAULT_METHODS if m not in w.left_out), w.lora_method)


def demo_pipeline(world: str = DEFAULT_WORLD, over: dict[str, Any] | None = None) -> PipelineConfig:
    """The demo's pipeline: the world's methods and LoRA budget, under `over` (a preset,
    config file and flags already merged)."""
    from tinyshot.presets import merge_config

    w = WORLDS.get(world, WORLDS[DEFAULT_WORLD])  # an unknown name fails in resolve_world
    base = {"methods": list(demo_methods(world)), "lora": w.lora}
    return PipelineConfig.from_dict(merge_config(base, over or {}))


@dataclass
class DemoConfig:
    episodes: int = 1
    world: str = DEFAULT_WORLD
    ways: int = 5
    shots: int = 5
    queries: int | None = None  # per class from the test split; None = all (1000)
    seed: int = 0
    fd_images: int = 200  # per class and generator for the Frechet distances (paper: 300)
    pipeline: PipelineConfig = None  # type: ignore[assignment]  # None: the world's own

    def __post_init__(self) -> None:
        if self.pipeline is None:
            self.pipeline = demo_pipeline(self.world)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pipeline"] = self.pipeline.to_dict()
        return d

    def resolve_world(self) -> World:
        """The world's shipped generator replaces the other world's; any other generator (a
        folder, a hub id) is kept."""
        if self.world not in WORLDS:
            raise ConfigError(f"demo world must be one of {sorted(WORLDS)}, got {self.world!r}")
        w = WORLDS[self.world]
        if self.pipeline.generator in {x.generator for x in WORLDS.values()}:
            self.pipeline.generator = w.generator
        return w

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DemoConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown demo config key(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        pipe = demo_pipeline(d.get("world", DEFAULT_WORLD), d.pop("pipeline", {}))
        return cls(**d, pipeline=pipe)


def demo_datasets(world: str = DEFAULT_WORLD):
    from tinyshot.data.registry import load_dataset

    return (
        load_dataset("fashion-mnist", WORLDS[world].support_split),
        load_dataset("fashion-mnist", "novel-test"),
        load_dataset("fashion-mnist", "base"),
    )


def demo_episodes(config: DemoConfig, out: Path, support_ds, query_ds) -> list[Episode]:
    from tinyshot.data.episode_io import read_episodes, write_episodes
    from tinyshot.data.sampler import sample_episodes

    path = out / "episodes.json"
    episodes = sample_episodes(
        support_ds,
        config.episodes,
        config.ways,
        config.shots,
        config.queries,
        config.seed,
        query_ds=query_ds,
    )
    if path.is_file():
        existing, _ = read_episodes(path)
        if [e.to_dict() for e in existing] != [e.to_dict() for e in episodes]:
            raise ConfigError(
                f"{path}: holds other episodes than this configuration samples; "
                "use a new --out folder or the same --episodes/--shots/--seed"
            )
        return existing
    meta = {
        "dataset": {
            "name": "fashion-mnist",
            "split": WORLDS[config.world].support_split,
            "query_split": "novel-test",
        },
        "world": config.world,
        "ways": config.ways,
        "shots": config.shots,
        "queries": "all" if config.queries is None else config.queries,
        "seed": config.seed,
    }
    write_episodes(path, episodes, meta)
    return episodes


def summarize(per_episode: list[dict[str, dict[str, Any]]], methods: list[str]) -> dict[str, Any]:
    from tinyshot.evaluation.stats import estimate_sigma, mean_confidence_interval

    out: dict[str, Any] = {}
    for m in methods:
        accs = [ep[m]["accuracy"] for ep in per_episode if m in ep]
        if not accs:
            continue
        mean, hw = mean_confidence_interval(accs)
        q = float(sum(ep[m]["queries"] for ep in per_episode if m in ep) / len(accs))
        entry = {"mean": mean, "ci95": hw, "episodes": len(accs), "queries": q, "accuracies": accs}
        if len(accs) >= 2:
            entry["sigma_a"] = estimate_sigma(accs, q)
        out[m] = entry
    return out


def paired_vs_tint(per_episode: list[dict[str, dict[str, Any]]], methods: list[str]) -> list[dict]:
    """TINT minus each other method on the same episodes: pairing removes the episode-difficulty
    spread, so these intervals are much tighter than the per-method ones."""
    from tinyshot.pipeline.benchmark import paired_differences

    if "tint" not in methods:
        return []
    rows = [{"methods": ep} for ep in per_episode]
    return [d for m in methods if m != "tint" for d in paired_differences(rows, ["tint", m])]


def format_table(
    summary: dict[str, Any],
    fd: dict[str, Any] | None = None,
    paired: list[dict] | None = None,
    headroom: dict[str, Any] | None = None,
    judged: dict[str, Any] | None = None,
) -> str:
    lines = [f"{'method':<48} {'accuracy (%)':>20} {'episodes':>9}"]
    for m, s in summary.items():
        ci = "n/a" if s["ci95"] != s["ci95"] else f"{100 * s['ci95']:.2f}"
        lines.append(
            f"{METHOD_LABELS.get(m, m):<48} {100 * s['mean']:>12.2f} +- {ci:>5} {s['episodes']:>9}"
        )
    if headroom:
        from tinyshot.evaluation.health_summary import headroom_line

        lines.append(
            headroom_line(headroom)
            + (
                ""
                if headroom["status"] == "ok"
                else "  WARNING: below +3, the methods cannot separate"
            )
        )
    if paired:
        lines.append("")
        lines.append("paired differences on the same episodes (accuracy points, 95% t-interval)")
        for d in paired:
            hw = "n/a" if d["half_width"] is None else f"{100 * d['half_width']:.2f}"
            lines.append(f"  tint - {d['b']:<14} {100 * d['mean_difference']:+7.2f} +- {hw:>5}")
    if judged:
        lines.append("")
        lines.append(
            "synthetic images judged to be of their class (Conv4 judge trained on the real "
            "train split, 10-way, chance 10%)"
        )
        for g, j in judged["per_generator"].items():
            vals = " ".join(f"{100 * v:5.1f}" for v in j["per_class"].values() if v is not None)
            lines.append(f"  {g:<13} mean {100 * (j['mean'] or 0):5.1f}%  per class: {vals}")
    if fd:
        lines.append("")
        lines.append(f"Frechet distance to real test images ({fd['metric']}, lower is better)")
        for g, per_class in fd["per_generator"].items():
            vals = " ".join(f"{v:7.1f}" for v in per_class.values())
            lines.append(f"  {g:<13} mean {fd['mean'][g]:7.1f}   per class: {vals}")
    return "\n".join(lines)


@torch.no_grad()
def frechet_per_class(
    out: Path,
    episode_dir: Path,
    query_ds,
    class_names: list[str],
    generators: list[str],
    n: int,
    pipeline: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Per generator and class: Frechet distance between n generated and n real test images.

    Generated images lose the generator's pad border first (crop_generator_frame), so both
    sides are in the real images' frame (a black frame alone would add distance)."""
    from tinyshot.data.transforms import crop_generator_frame, images_to_tensor, tensor_to_pil
    from tinyshot.diffusion.store import ImageStore
    from tinyshot.evaluation.frechet import (
        EFFNET_METRIC,
        BackboneFeatures,
        extract_features,
        frechet_distance_features,
    )
    from tinyshot.models.backbones import build_backbone
    from tinyshot.models.teacher import default_batch_size
    from tinyshot.utils.device import resolve_device

    cache = out / "frechet.json"
    if cache.is_file():
        return read_json(cache)
    prep = generator_prep(pipeline or PipelineConfig())
    extractor = BackboneFeatures(build_backbone("efficientnet-lite0", input_size=96), EFFNET_METRIC)

    dev = resolve_device(None)

    def features(images) -> Any:
        return extract_features(extractor, images, default_batch_size(dev), dev)

    # the real side once per class, not once per generator and class
    real = {
        name: features(query_ds.load_images(query_ds.indices_of(query_ds.class_id(name))[:n]))
        for name in class_names
    }
    per: dict[str, dict[str, float]] = {}
    for g in generators:
        store = ImageStore(episode_dir / "synthetic" / g)
        per[g] = {}
        for c, name in enumerate(class_names):
            fake = store.load_images(c, limit=n)
            fake = [tensor_to_pil(x) for x in crop_generator_frame(images_to_tensor(fake), prep)]
            per[g][name] = frechet_distance_features(features(fake), real[name])
    res = {
        "metric": EFFNET_METRIC,
        "images_per_class": n,
        "per_generator": per,
        "mean": {g: sum(v.values()) / len(v) for g, v in per.items()},
    }
    write_json(cache, res)
    return res


def judged_synthetic(
    out: Path,
    episode_dir: Path,
    class_names: list[str],
    generators: list[str],
    pipeline: PipelineConfig | None = None,
) -> dict[str, Any] | None:
    """Per generator: the share of its images the shipped Fashion-MNIST judge (a Conv4 trained on
    the real train split, evaluation.fidelity) labels as their class; None without a judge."""
    from tinyshot.data.transforms import crop_generator_frame
    from tinyshot.diffusion.store import ImageStore
    from tinyshot.evaluation.fidelity import judge_path, judged_share, load_judge

    cache = out / "judged.json"
    if cache.is_file():
        return read_json(cache)
    if not judge_path("fashion-mnist").is_file():
        return None
    judge, info = load_judge("fashion-mnist")
    prep = generator_prep(pipeline or PipelineConfig())
    per = {}
    for g in generators:
        store = ImageStore(episode_dir / "synthetic" / g)
        per[g] = judged_share(
            judge,
            info["class_names"],
            {
                n: crop_generator_frame(store.load_tensor(c)[0], prep)
                for c, n in enumerate(class_names)
            },
        )
    res = {"judge": {k: info.get(k) for k in ("arch", "test_accuracy")}, "per_generator": per}
    write_json(cache, res)
    return res


def run_demo(out_dir: str | Path, config: DemoConfig | None = None) -> dict[str, Any]:
    """Run (or resume) the demo; returns the results dict also written to results.json."""

    from tinyshot.utils.timing import StageTimes

    config = config or DemoConfig()
    world = config.resolve_world()
    config.pipeline.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    write_json(out / "config.json", config.to_dict())
    # Wall time summed over attempts (a resumed demo's last attempt alone says little).
    with StageTimes(out).stage(DEMO_TIME_KEY):
        return _run_demo(out, config, world)


DEMO_TIME_KEY = "demo_s"


def _run_demo(out: Path, config: DemoConfig, world: World) -> dict[str, Any]:
    from tinyshot.pipeline.episode import run_pipeline_episode
    from tinyshot.pipeline.report_builder import build_demo_report
    from tinyshot.utils.timing import StageTimes

    t_start = time.perf_counter()
    support_ds, query_ds, base_ds = demo_datasets(config.world)
    episodes = demo_episodes(config, out, support_ds, query_ds)
    log.info(
        "demo (concept-%s world: %s): %d episodes of %d-way %d-shot, methods %s -> %s",
        config.world,
        world.about,
        len(episodes),
        config.ways,
        config.shots,
        ", ".join(config.pipeline.methods),
        out,
    )
    per_episode = []
    for i, ep in enumerate(progress(episodes, desc="episodes", unit="episode")):
        t0 = time.perf_counter()
        res = run_pipeline_episode(
            ep,
            support_ds,
            query_ds,
            base_ds,
            config.pipeline,
            out / "episodes" / f"{i:04d}",
            derive_seed(config.seed, "episode", i),
        )
        per_episode.append(res)
        log.info(
            "episode %d/%d done in %.0f s: %s",
            i + 1,
            len(episodes),
            time.perf_counter() - t0,
            ", ".join(f"{m} {100 * r['accuracy']:.1f}" for m, r in res.items()),
        )
    methods = [m for m in METHODS if m in config.pipeline.methods]
    summary = summarize(per_episode, methods)
    paired = paired_vs_tint(per_episode, methods)
    generators = [g for g in GENERATORS if g in config.pipeline.methods]
    fd = None
    if generators and config.fd_images > 0:
        fd = frechet_per_class(
            out,
            out / "episodes" / "0000",
            query_ds,
            episodes[0].classes,
            generators,
            config.fd_images,
            config.pipeline,
        )
    judged = (
        judged_synthetic(
            out, out / "episodes" / "0000", episodes[0].classes, generators, config.pipeline
        )
        if generators
        else None
    )
    from tinyshot.evaluation.health import status_line
    from tinyshot.evaluation.health_summary import combine_episodes, teacher_headroom

    headroom = teacher_headroom({m: s["mean"] for m, s in summary.items()})
    if headroom and headroom["warning"]:
        log.warning("%s", headroom["warning"])

    health = combine_episodes(
        [
            read_json(p) if (p := out / "episodes" / f"{i:04d}" / "health.json").is_file() else None
            for i in range(len(episodes))
        ]
    )
    for g, s in health.get("generators", {}).items():
        if s["status"] != "ok":
            log.warning("health: %s; details in report.html", status_line(g, s))
    results = {
        "format": "tinyshot.demo-results",
        "version": 1,
        "config": config.to_dict(),
        "world": config.world,
        "generator": resolve_generator(config.pipeline.generator),
        "summary": summary,
        "paired": paired,
        "per_episode": per_episode,
        "frechet": fd,
        "judged": judged,
        "health": health,
        "teacher_headroom": headroom,
        "wall_seconds": StageTimes(out).get(DEMO_TIME_KEY, running_since=t_start),
        "wall_seconds_this_attempt": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),  # results are identical for the same count
    }
    write_json(out / "results.json", results)
    table = format_table(summary, fd, paired, headroom, judged)
    (out / "summary.txt").write_text(table + "\n")
    build_demo_report(out, results, episodes, support_ds, query_ds, config)
    print(table)
    print(f"\nresults: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return results
