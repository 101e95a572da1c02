"""One world's 10-episode summary in the benchmark's results format, paired across runs
(issue 32): results/known-world.json and results/unknown-world.json.

The methods of a world were measured in several runs of the same episodes (same `--split`,
`--query-split`, `--episodes 10` and default seed, so each episode's supports, queries and
seeds are the same in every run). Some of those run folders are gone; their per-episode
accuracies are the rows of docs/results.md, kept in results/documented-rows.json. This script
merges those rows with the results.json of the runs that still exist (a method in both, such
as support+base rerun beside the LoRA methods, takes the run's value and its differences from
the rows are recorded) and computes the benchmark's own statistics (`method_statistics`,
`paired_differences`) over the merged rows.

    PYTHONPATH=src python experiments/world_summary.py unknown runs/unknown-lora \\
        --json results/unknown-world.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tinyshot.pipeline.benchmark.statistics import method_statistics, paired_differences
from tinyshot.utils.io import read_json, write_json

ROWS = Path(__file__).resolve().parents[1] / "results" / "documented-rows.json"
# Order of the paired differences (a - b for a listed before b): the newer methods first.
ORDER = (
    "lora",
    "lora-dafusion",
    "lora-tint",
    "tint",
    "dafusion",
    "ti",
    "name",
    "support+base",
    "support-only",
    "teacher",
)


def documented(world: str, rows_path: Path) -> tuple[dict[int, dict[str, Any]], dict, dict]:
    rows = read_json(rows_path)[world]
    q = rows["episodes"]["queries_per_episode"]
    per: dict[int, dict[str, Any]] = {}
    agreement: dict[str, float] = {}
    sources = {}
    for m, d in rows["methods"].items():
        for i, acc in enumerate(d["accuracy_percent"]):
            per.setdefault(i, {})[m] = {"accuracy": acc / 100.0, "queries": q, "documented": True}
        if "agreement_mean_percent" in d:
            agreement[m] = d["agreement_mean_percent"] / 100.0
        sources[m] = {"from": "docs/results.md: " + d["source"], "command": d["command"]}
    return per, agreement, sources


def merge_run(run_dir: Path, per: dict[int, dict[str, Any]], sources: dict) -> dict[str, Any]:
    """Add a run's per-episode accuracies; a method already in the rows (support+base, rerun
    beside the new methods) takes the run's value, so that the new methods pair with a run of
    the same code, and its differences from the documented rows are kept."""
    from tinyshot.pipeline.benchmark.results import aggregate

    run = read_json(run_dir / "run.json")
    n = len(read_json(Path(run["episodes_file"]))["episodes"])
    res = aggregate(run_dir, range(n), list(run["methods"]), write=False).to_dict()
    cmd = "tinyshot benchmark " + " ".join(
        [f"--dataset {run['dataset']['name']} --split {run['dataset']['split']}"]
        + [f"--query-split {run['dataset']['query_split']} --episodes {n}"]
        + [f"--method {m}" for m in run["methods"]]
    )
    seconds = [read_json(f)["seconds"] for f in sorted((run_dir / "episodes").glob("*.json"))]
    # Memorisation (evaluation.health): nearest-support distance over the supports' spread.
    ratios: dict[str, list[float]] = {}
    copies: dict[str, list[float]] = {}
    for r in res["per_episode"]:
        h = run_dir / "work" / str(r["index"]) / "health.json"
        for c in read_json(h)["classes"] if h.is_file() else []:
            if c.get("distance_ratio") is not None:
                ratios.setdefault(c["generator"], []).append(c["distance_ratio"])
                copies.setdefault(c["generator"], []).append(c["near_copies"])
    rerun: dict[str, list[float]] = {}
    for r in res["per_episode"]:
        ep = per.setdefault(r["index"], {})
        for m, v in r["methods"].items():
            new = {"accuracy": v["accuracy"], "queries": v["queries"]}
            if (v.get("health") or {}).get("agreement") is not None:
                new["agreement"] = v["health"]["agreement"]
            if m in ep and ep[m].get("documented"):
                rerun.setdefault(m, []).append(new["accuracy"] - ep[m]["accuracy"])
            ep[m] = new
            sources[m] = {"from": str(run_dir), "command": cmd}
    health = {
        g: {k: s.get(k) for k in ("agreement", "episodes", "episodes_failed", "episodes_warned")}
        for g, s in ((res.get("health") or {}).get("generators") or {}).items()
    }
    return {
        "rerun_minus_documented": {
            m: {"episodes": len(d), "max_abs": max(map(abs, d)), "mean": sum(d) / len(d)}
            for m, d in rerun.items()
        },
        "health": health,
        "nearest_support_over_spread": {
            g: {
                "classes": len(v),
                "mean": sum(v) / len(v),
                "min": min(v),
                "near_copy_share_max": max(copies[g]),
            }
            for g, v in ratios.items()
        },
        "episodes_done": len(res["per_episode"]),
        "episodes_total": n,
        "seconds_per_episode": seconds,
    }


def pc(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("world", choices=("known", "unknown"))
    p.add_argument("runs", nargs="*", type=Path, help="benchmark run folders of this world")
    p.add_argument("--rows", type=Path, default=ROWS)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", action="store_true", help="also print the docs' tables")
    a = p.parse_args()

    per, agreement, sources = documented(a.world, a.rows)
    checks = {str(r): merge_run(r, per, sources) for r in a.runs}
    for c in checks.values():
        for g, s in c["health"].items():
            if s.get("agreement") is not None:
                agreement[g] = s["agreement"]
    present = {m for ep in per.values() for m in ep}
    methods = [m for m in ORDER if m in present]
    per_episode = [
        {
            "index": i,
            "methods": {
                m: {k: v for k, v in per[i][m].items() if k != "documented"}
                for m in methods
                if m in per[i]
            },
        }
        for i in sorted(per)
    ]
    summary = {}
    for m in methods:
        rows = [r["methods"][m] for r in per_episode if m in r["methods"]]
        summary[m] = method_statistics([r["accuracy"] for r in rows], [r["queries"] for r in rows])
        summary[m]["teacher_agreement"] = agreement.get(m)
    out = {
        "format": "tinyshot.world-summary",
        "world": a.world,
        "episodes": read_json(a.rows)[a.world]["episodes"],
        "methods": methods,
        "summary": summary,
        "paired": paired_differences(per_episode, methods),
        "per_episode": per_episode,
        "sources": sources,
        "runs": checks,
        "command": "PYTHONPATH=src python experiments/world_summary.py "
        + " ".join([a.world, *map(str, a.runs), "--json", str(a.json)]),
    }
    write_json(a.json, out)
    for m in methods:
        s = summary[m]
        ag = s["teacher_agreement"]
        print(
            f"{m:14s} {100 * s['mean']:6.2f} +- {pc(s['half_width'])}  (P={s['episodes']})"
            + ("" if ag is None else f"  agreement {100 * ag:.1f}%")
        )
    for d in out["paired"]:
        if d["a"].startswith("lora") or d["a"] == "tint":
            print(
                f"{d['a']} - {d['b']}: {100 * d['mean_difference']:+.2f} +- "
                f"{pc(d['half_width'])} (P={d['episodes']})"
            )
    if a.markdown:
        print(markdown(out))


def markdown(out: dict[str, Any]) -> str:
    """The per-episode table of the methods measured in runs (those with agreement figures),
    support+base beside them."""
    new = [m for m in out["methods"] if m.startswith("lora")]
    cols = ["support+base", *new]
    lines = [
        "| episode | " + " | ".join(cols) + " | agreement " + " / ".join(new) + " % |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for r in out["per_episode"]:
        ms = r["methods"]
        if not all(m in ms for m in new):
            continue
        acc = [f"{100 * ms[m]['accuracy']:.2f}" for m in cols]
        ag = [f"{100 * ms[m]['agreement']:.0f}" for m in new]
        lines.append(f"| {r['index']} | " + " | ".join(acc) + " | " + " / ".join(ag) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
