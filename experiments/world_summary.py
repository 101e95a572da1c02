"""One world's 10-episode summary in the benchmark's results format, paired across runs
(issue 32): results/known-world.json and results/unknown-world.json.

The methods of a world were measured in several runs of the same episodes (same `--split`,
`--query-split`, `--episodes 10` and default seed, so each episode's supports, queries and
seeds are the same in every run). Some of those run folders are gone; their per-episode
accuracies are the rows of docs/results.md, kept in results/documented-rows.json. This script
merges those rows with the results.json of the runs that still exist, checks that a method
measured twice (support+base, rerun beside the LoRA methods) gives the same accuracy on every
episode, and computes the benchmark's own statistics (`method_statistics`,
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
SAME = 1e-4  # two runs of one method on one episode: equal to the printed 2 decimals


def documented(world: str, rows_path: Path) -> tuple[dict[int, dict[str, Any]], dict, dict]:
    rows = read_json(rows_path)[world]
    q = rows["episodes"]["queries_per_episode"]
    per: dict[int, dict[str, Any]] = {}
    agreement: dict[str, float] = {}
    sources = {}
    for m, d in rows["methods"].items():
        for i, acc in enumerate(d["accuracy_percent"]):
            per.setdefault(i, {})[m] = {"accuracy": acc / 100.0, "queries": q}
        if "agreement_percent_rounded" in d:
            a = d["agreement_percent_rounded"]
            agreement[m] = sum(a) / len(a) / 100.0
        sources[m] = {"from": "docs/results.md: " + d["source"], "command": d["command"]}
    return per, agreement, sources


def merge_run(run_dir: Path, per: dict[int, dict[str, Any]], sources: dict) -> dict[str, Any]:
    res = read_json(run_dir / "results.json")
    cmd = (res.get("run") or {}).get("command")
    reproduced: dict[str, list[int]] = {}
    for r in res["per_episode"]:
        ep = per.setdefault(r["index"], {})
        for m, v in r["methods"].items():
            new = {"accuracy": v["accuracy"], "queries": v["queries"]}
            if m in ep:
                if abs(ep[m]["accuracy"] - new["accuracy"]) > SAME:
                    raise SystemExit(
                        f"{run_dir}: {m} on episode {r['index']}: {new['accuracy']:.4f} here, "
                        f"{ep[m]['accuracy']:.4f} in the documented rows (not the same episode?)"
                    )
                reproduced.setdefault(m, []).append(r["index"])
                continue
            ep[m] = new
            sources.setdefault(m, {"from": str(run_dir), "command": cmd})
    health = {
        g: {
            k: s.get(k)
            for k in ("agreement", "episodes", "episodes_failed", "episodes_warned")
            if k in s
        }
        for g, s in ((res.get("health") or {}).get("generators") or {}).items()
    }
    return {"reproduced": reproduced, "health": health}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("world", choices=("known", "unknown"))
    p.add_argument("runs", nargs="*", type=Path, help="benchmark run folders of this world")
    p.add_argument("--rows", type=Path, default=ROWS)
    p.add_argument("--json", type=Path, required=True)
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
        {"index": i, "methods": {m: per[i][m] for m in methods if m in per[i]}} for i in sorted(per)
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
            f"{m:14s} {100 * s['mean']:6.2f} +- {100 * s['half_width']:.2f}  (P={s['episodes']})"
            + ("" if ag is None else f"  agreement {100 * ag:.1f}%")
        )
    for d in out["paired"]:
        if d["a"].startswith("lora") or d["a"] == "tint":
            print(
                f"{d['a']} - {d['b']}: {100 * d['mean_difference']:+.2f} +- "
                f"{100 * d['half_width']:.2f} (P={d['episodes']})"
            )


if __name__ == "__main__":
    main()
