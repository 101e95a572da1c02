"""CLI sub-commands of the evaluation stage (registered by tinyshot.cli): `tinyshot plan-eval`
(Theorem 1) and `tinyshot fd` (Frechet distances between two image folders: FD-EffNetLite0
offline, FID-64 with weights). `tinyshot evaluate` lives in pipeline.commands: its default
teacher binds the pipeline's pretrained student."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    _register_fidelity(sub)
    p = sub.add_parser(
        "plan-eval",
        help="Theorem 1: episodes needed for a target variance / CI, or variance for P episodes",
        description="Plan an episodic evaluation with Theorem 1 of the TINT paper: "
        "Var = (1/P)(a(1-a)/Q + (1-1/Q) sigma^2). Q counts the queries of one episode "
        "(all classes together, e.g. 5 x 595 = 2975).",
    )
    p.add_argument("--acc", type=float, required=True, help="expected mean accuracy a in [0, 1]")
    p.add_argument("--sigma", type=float, required=True, help="std of per-episode true accuracy")
    p.add_argument("--queries", type=int, required=True, help="queries per episode (Q)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-var", type=float, help="episodes for this estimator variance")
    goal.add_argument(
        "--target-halfwidth", type=float, help="episodes for this CI half-width (accuracy units)"
    )
    goal.add_argument("--episodes", type=int, help="variance and half-width for P episodes")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_plan_eval)

    f = sub.add_parser(
        "fd",
        help="Frechet distances between two image folders (FD-EffNetLite0; FID-64 with weights)",
        description="Frechet distance between the images of two folders (searched recursively). "
        "FD-EffNetLite0 uses EfficientNet-Lite0 pooled features (offline; not comparable with "
        "FID). FID-64 (the paper's metric) needs pytorch-fid's Inception weights as a local file.",
    )
    f.add_argument("--real", required=True, type=Path, help="folder of real images")
    f.add_argument("--fake", required=True, type=Path, help="folder of generated images")
    f.add_argument("--inception-weights", type=Path, help="pt_inception-2015-12-05 .pth for FID-64")
    f.add_argument("--no-effnet", action="store_true", help="skip FD-EffNetLite0")
    f.add_argument("--limit", type=int, help="at most N images per folder (sorted by path)")
    f.add_argument("--batch-size", type=int, default=50)
    f.add_argument("--device", default="auto")
    f.add_argument("--out", type=Path, help="write the results as JSON")
    f.set_defaults(func=cmd_fd)


def plan(
    acc: float,
    sigma: float,
    queries: int,
    target_var: float | None = None,
    target_halfwidth: float | None = None,
    episodes: int | None = None,
    confidence: float = 0.95,
) -> dict:
    """The plan-eval answer as a dict (the --json output)."""
    from tinyshot.evaluation import stats

    per_episode = stats.episode_variance(acc, sigma, queries)
    out: dict = {
        "acc": acc,
        "sigma": sigma,
        "queries": queries,
        "confidence": confidence,
        "episode_variance": per_episode,
        "binomial_term": acc * (1 - acc) / queries,
        "inter_episode_term": (1 - 1 / queries) * sigma**2,
    }
    if episodes is None:
        if target_var is not None:
            exact = stats.episodes_for_variance(acc, sigma, queries, target_var)
            out["target_var"] = target_var
        else:
            assert target_halfwidth is not None
            exact = stats.episodes_for_halfwidth(acc, sigma, queries, target_halfwidth, confidence)
            out["target_halfwidth"] = target_halfwidth
            out["episodes_t"] = stats.episodes_for_t_halfwidth(
                acc, sigma, queries, target_halfwidth, confidence
            )
        out["episodes_exact"] = exact
        episodes = stats.ceil_episodes(exact)
    out["episodes"] = episodes
    out["variance"] = stats.theorem1_variance(acc, sigma, queries, episodes)
    out["halfwidth"] = stats.halfwidth_for(acc, sigma, queries, episodes, confidence)
    out["halfwidth_t"] = stats.t_halfwidth_for(acc, sigma, queries, episodes, confidence)
    return out


def cmd_plan_eval(args: argparse.Namespace) -> int:
    r = plan(
        args.acc,
        args.sigma,
        args.queries,
        args.target_var,
        args.target_halfwidth,
        args.episodes,
        args.confidence,
    )
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(
        f"Theorem 1, a={r['acc']:g}, sigma={r['sigma']:g}, Q={r['queries']}: one episode's "
        f"variance {r['episode_variance']:.4g} = {r['binomial_term']:.4g} (queries) + "
        f"{r['inter_episode_term']:.4g} (episodes)"
    )
    if "episodes_exact" in r:
        goal = (
            f"Var <= {r['target_var']:g}"
            if "target_var" in r
            else f"+-{r['target_halfwidth']:g} at {100 * r['confidence']:g}%"
        )
        print(f"episodes for {goal}: {r['episodes_exact']:.1f} -> {r['episodes']}")
    print(
        f"with {r['episodes']} episodes: Var {r['variance']:.3g}, "
        f"{100 * r['confidence']:g}% CI about +-{100 * r['halfwidth']:.2f} points (normal), "
        f"+-{100 * r['halfwidth_t']:.2f} (Student-t over the episodes, as reported)"
    )
    if "episodes_t" in r:
        print(f"episodes for that half-width with the Student-t interval: {r['episodes_t']}")
    return 0


def _register_fidelity(sub: argparse._SubParsersAction) -> None:
    from tinyshot.diffusion.config import DEMO_DDIM_STEPS

    p = sub.add_parser(
        "fidelity",
        help="class fidelity of a generator: share of 'a photo of a {name}' samples judged "
        "to be of that class by a classifier trained on real images",
        description="Sample every class caption of a generator folder (its tinyshot.json) and "
        "label the samples with the judge, a Conv4 trained on the real Fashion-MNIST train "
        "split (shipped; --train-judge retrains it). Prints per-class fidelity per guidance "
        "and writes JSON; --record stores it in the generator's tinyshot.json.",
    )
    p.add_argument(
        "--generator",
        default="fashion-mnist-known",
        help="shipped generator name or a generator folder (default fashion-mnist-known)",
    )
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0],
                   help="classifier-free guidance scale(s) (default 3, the demo's)")  # fmt: skip
    p.add_argument("--steps", type=int, default=DEMO_DDIM_STEPS,
                   help=f"DDIM steps (default {DEMO_DDIM_STEPS}, the demo's)")  # fmt: skip
    p.add_argument("--spacing", choices=("leading", "trailing", "linspace"),
                   help="DDIM timestep spacing (default: the pipeline's for this generator, "
                   "trailing for the shipped ones)")  # fmt: skip
    p.add_argument("--n", type=int, default=50, help="samples per class caption (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result to this JSON file")
    p.add_argument("--record", action="store_true",
                   help="store the result under 'fidelity' in the generator's tinyshot.json")  # fmt: skip
    p.add_argument("--train-judge", action="store_true",
                   help="retrain the shipped judge first (about 10 min on 1 CPU core)")  # fmt: skip
    p.set_defaults(func=cmd_fidelity)


def cmd_fidelity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinyshot.diffusion.pretrain import SHIPPED_GENERATORS, default_generator_path
    from tinyshot.errors import ConfigError
    from tinyshot.evaluation.fidelity import judge_path, measure_generator, save_judge, train_judge
    from tinyshot.utils.io import read_json, write_json

    folder = (
        default_generator_path(args.generator)
        if args.generator in SHIPPED_GENERATORS
        else Path(args.generator)
    )
    if not (folder / "tinyshot.json").is_file():
        raise ConfigError(f"--generator {args.generator}: {folder}/tinyshot.json not found")
    if args.n < 1 or args.steps < 1:
        raise ConfigError("--n and --steps must be >= 1")
    if args.train_judge:
        judge, info = train_judge()
        print(f"judge: {save_judge(judge, info, judge_path())} "
              f"(test accuracy {100 * info['test_accuracy']:.1f}%)")  # fmt: skip
    res = measure_generator(
        folder, args.guidance, args.steps, args.n, args.seed, timestep_spacing=args.spacing
    )
    print(f"{args.steps} DDIM steps, {res['timestep_spacing']} spacing, {args.n} per class")
    print(f"{'guidance':>8} {'mean':>6} {'min':>6}  per class (%)")
    for w, r in res["by_guidance"].items():
        per = ", ".join(f"{c} {100 * v:.0f}" for c, v in r["per_class"].items())
        print(f"{w:>8} {100 * r['mean']:6.1f} {100 * r['min']:6.1f}  {per}")
    if res["judge_real_recall"]:
        per = ", ".join(f"{c} {100 * v:.0f}" for c, v in res["judge_real_recall"].items())
        print(f"{'judge on real test images':>22}  {per}")
    if args.json:
        write_json(args.json, res)
    if args.record:
        info_path = folder / "tinyshot.json"
        write_json(info_path, {**read_json(info_path), "fidelity": res})
        print(f"recorded in {info_path}")
    return 0


def cmd_fd(args: argparse.Namespace) -> int:
    from tinyshot.errors import ConfigError
    from tinyshot.evaluation.frechet import efficientnet_frechet, read_image_dir
    from tinyshot.utils.io import write_json

    if args.no_effnet and args.inception_weights is None:
        raise ConfigError("nothing to compute: --no-effnet without --inception-weights")
    real = read_image_dir(args.real, args.limit)
    fake = read_image_dir(args.fake, args.limit)
    results = []
    if args.inception_weights is not None:
        from tinyshot.evaluation.inception import fid64

        results.append(fid64(real, fake, args.inception_weights, args.batch_size, args.device))
    if not args.no_effnet:
        results.append(
            efficientnet_frechet(real, fake, batch_size=args.batch_size, device=args.device)
        )
    for r in results:
        print(
            f"{r.metric}: {r.value:.4f}  ({r.n_a} real vs {r.n_b} generated images, {r.feature_dim}-d)"
        )
    if args.out:
        write_json(
            args.out,
            {
                "real": str(args.real),
                "fake": str(args.fake),
                "results": [r.to_dict() for r in results],
            },
        )
        print(f"wrote {args.out}")
    else:
        print(json.dumps({r.metric: r.value for r in results}))
    return 0
