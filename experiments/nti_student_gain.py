"""NTI's learning rate chosen by what TINT's student gains (issue 32).

The demo's NTI settings (lr 1.0, 10 inner steps) were chosen for a reconstruction gain; this
sets each NTI lr's reconstruction gain and null drift beside the teacher's agreement with
TINT's images and the accuracy of the student distilled on them, paired per episode with
support+base and with TINT at the reference run's lr. Each `--run LR=DIR` is a finished
`tinyshot benchmark` of the `tint` method with `specialize.nti_lr = LR` on the reference run's
episodes (same `--split`, `--queries`, `--seed`):

    tinyshot benchmark --dataset fashion-mnist --split novel-pool --queries 150 --seed 1000 \\
        --episodes 2 --no-ray --method tint='{"specialize":{"nti_lr":0.3}}' \\
        --out runs/known-nti-lr0.3
    PYTHONPATH=src python experiments/nti_student_gain.py --ref runs/known-iters-base \\
        --run 0.3=runs/known-nti-lr0.3 0.1=runs/known-nti-lr0.1 --json results/nti-student-gain.json

An lr may be given for several runs (e.g. one per `--only` shard); their episodes are merged.

`null drift` is |u_t - u_empty| / |u_empty|, the mean over timesteps and support images of how
far NTI moved the null embeddings from the generator's empty-prompt encoding. Judged share
and FD are read from each run's fidelity.json (`experiments/benchmark_fidelity.py RUN --images
50`) where it exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from tinyshot.diffusion.artifacts import load_artifacts
from tinyshot.diffusion.model import load_diffusion_model
from tinyshot.pipeline.benchmark import paired_differences
from tinyshot.utils.io import read_json, write_json


def finished(run: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for p in sorted((run / "work").iterdir()):
        if (p / "result.json").is_file():
            out[int(p.name)] = read_json(p / "result.json")
    return out


def fidelity(run: Path) -> dict[int, dict[str, float]]:
    """Judged share and FD of TINT's images per episode, where benchmark_fidelity.py ran."""
    path = run / "fidelity.json"
    if not path.is_file():
        return {}
    return {
        e["episode"]: {
            "judged": e["judged"]["per_generator"]["tint"]["mean"],
            "fd": e["fd"]["tint"],
        }
        for e in read_json(path)["episodes"]
    }


def nti_figures(spec_dir: Path, empty: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean NTI gain over plain CFG (dB) and null drift over the episode's classes."""
    arts = load_artifacts(spec_dir)
    model_id = arts[0].meta["model_id"]
    if model_id not in empty:
        model = load_diffusion_model(model_id, device="cpu")
        empty[model_id] = model.empty_embedding().float().cpu().reshape(model.max_length, -1)
    u0 = empty[model_id]
    drift = [
        float(((a.null_embeddings - u0).flatten(2).norm(dim=2) / u0.norm()).mean()) for a in arts
    ]
    gains = [a.meta["stats"]["nti_gain_db"] for a in arts]
    return {"nti_gain_db": sum(gains) / len(gains), "null_drift": sum(drift) / len(drift)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", type=Path, required=True, help="run with support+base and tint")
    p.add_argument(
        "--run", nargs="+", required=True,
        help="LR=DIR, a tint run at that NTI lr (an LR may be given for several runs)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    ref = finished(a.ref)
    ref_lr = float(
        read_json(a.ref / "work" / str(min(ref)) / "config.json")["config"]["specialize"]["nti_lr"]
    )
    # lr -> episode -> (run folder, episode result, fidelity); an lr may span several runs
    runs: dict[float, dict[int, tuple[Path, dict, dict]]] = {}
    for lr, d in [(ref_lr, a.ref)] + [
        (float(lr), Path(d)) for lr, _, d in (item.partition("=") for item in a.run)
    ]:
        fid = fidelity(d)
        for i, res in finished(d).items():
            runs.setdefault(lr, {})[i] = (d, res, fid.get(i, {}))
    episodes = sorted(set(ref).intersection(*(set(r) for r in runs.values())))
    if not episodes:
        sys.exit("no episode finished in every run")
    empty: dict[str, torch.Tensor] = {}
    name = {lr: f"tint@nti_lr={lr:g}" for lr in runs}
    per_episode, rows = [], []
    for i in episodes:
        rec = {"support+base": {"accuracy": ref[i]["methods"]["support+base"]["accuracy"]}}
        for lr, by_episode in runs.items():
            d, res, fid = by_episode[i]
            m = res["methods"]["tint"]
            rec[name[lr]] = {"accuracy": m["accuracy"]}
            figs = nti_figures(d / "work" / str(i) / "specialize", empty)
            rows.append({
                "episode": i, "nti_lr": lr, "accuracy": m["accuracy"],
                "agreement": m["health"]["agreement"], **figs, **fid,
            })  # fmt: skip
        per_episode.append({"episode": i, "methods": rec})
    order = [name[lr] for lr in sorted(runs)] + ["support+base"]
    per_lr = {}
    for lr in sorted(runs):
        mine = [r for r in rows if r["nti_lr"] == lr]
        keys = ("accuracy", "agreement", "judged", "fd", "nti_gain_db", "null_drift")
        per_lr[f"{lr:g}"] = {
            k: sum(r[k] for r in mine) / len(mine) for k in keys if all(k in r for r in mine)
        }
    summary = {
        "format": "tinyshot.nti-student-gain",
        "reference": {"run": str(a.ref), "nti_lr": ref_lr},
        "runs": {f"{lr:g}": sorted({str(v[0]) for v in r.values()}) for lr, r in runs.items()},
        "episodes": episodes,
        "per_lr": per_lr,
        "per_episode_rows": rows,
        "paired": paired_differences(per_episode, order),
        "command": " ".join(sys.argv),
    }
    if a.json:
        write_json(a.json, summary)
    print("NTI lr | gain dB | null drift | agreement | judged | FD | student accuracy")
    for lr, s in per_lr.items():
        print(
            f"{lr:>6} | {s['nti_gain_db']:+.1f} | {s['null_drift']:.2f}x | "
            f"{100 * s['agreement']:.1f}% | {100 * s.get('judged', float('nan')):.1f}% | "
            f"{s.get('fd', float('nan')):.0f} | {100 * s['accuracy']:.2f}"
        )
    for d in summary["paired"]:
        hw = 100 * (d["half_width"] or 0)
        print(
            f"{d['a']} - {d['b']}: {100 * d['mean_difference']:+.2f} +- {hw:.2f} ({d['episodes']})"
        )


if __name__ == "__main__":
    main()
