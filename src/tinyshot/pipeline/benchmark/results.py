"""`BenchmarkResult`: the aggregated results of a run, rebuilt from its store (`aggregate`), written
to results.json and summary.txt.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyshot.evaluation.health import status_line
from tinyshot.evaluation.health_summary import headroom_line, teacher_headroom
from tinyshot.pipeline.benchmark.statistics import method_statistics, paired_differences
from tinyshot.pipeline.benchmark.store import RESULTS_FORMAT, VERSION
from tinyshot.utils.io import read_json, write_json


@dataclass
class BenchmarkResult:
    """Aggregated results of a run (also in out_dir/results.json and summary.txt)."""

    out_dir: Path
    methods: list[str]
    total: int
    summary: dict[str, dict[str, Any]]
    paired: list[dict[str, Any]]
    per_episode: list[dict[str, Any]]  # sorted by index: {"index", "seed", "methods"}
    failures: list[dict[str, Any]]  # sorted by index: {"index", "error_type", "message"}
    run: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)  # evaluation.health, per generator

    @property
    def complete(self) -> bool:
        return len(self.per_episode) == self.total and not self.failures

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.json"

    def accuracies(self, method: str) -> list[float]:
        return [r["methods"][method]["accuracy"] for r in self.per_episode]

    @property
    def teacher_headroom(self) -> dict[str, Any] | None:
        """Teacher minus the best student on the mean accuracies (evaluation.health)."""
        means = {m: s["mean"] for m, s in self.summary.items() if s.get("mean") is not None}
        return teacher_headroom(means)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "version": VERSION,
            "run": self.run,
            "episodes_total": self.total,
            "episodes_done": len(self.per_episode),
            "complete": self.complete,
            "summary": self.summary,
            "paired": self.paired,
            "failures": self.failures,
            "per_episode": self.per_episode,
            "health": self.health,
            "teacher_headroom": self.teacher_headroom,
        }

    def render(self, width: int = 120) -> str:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=width, record=True, file=io.StringIO())
        conf = next(iter(self.summary.values()), {}).get("confidence", 0.95)
        pct = f"{100 * conf:g}%"
        target = next(iter(self.summary.values()), {}).get("target_halfwidth")
        t = Table(
            title=f"{len(self.per_episode)}/{self.total} episodes"
            + (f", {len(self.failures)} failed" if self.failures else "")
        )
        for col in (
            "method",
            "P",
            f"accuracy % ± {pct} CI (t)",
            "std %",
            "Q/episode",
            "sigma_a %",
            "Thm-1 var",
            f"Thm-1 ± {pct}",
        ):
            t.add_column(col, justify="left" if col == "method" else "right")
        if target is not None:
            t.add_column(f"P for ±{100 * target:g}%", justify="right")

        def pc(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f}"

        for m, s in self.summary.items():
            row = [
                m,
                str(s["episodes"]),
                f"{pc(s['mean'])} ± {pc(s['half_width'])}",
                pc(s["std"]),
                f"{s['mean_queries']:.0f}",
                pc(s["sigma_a"]),
                "n/a" if s["theorem1_variance"] is None else f"{s['theorem1_variance']:.3g}",
                pc(s["theorem1_half_width"]),
            ]
            if target is not None:
                row.append(
                    "n/a" if s["episodes_for_target"] is None else str(s["episodes_for_target"])
                )
            t.add_row(*row)
        console.print(t)
        if self.paired:
            p = Table(title="paired differences (same episodes)")
            for col in ("a - b", "P", f"difference % ± {pct} CI"):
                p.add_column(col, justify="left" if col == "a - b" else "right")
            for d in self.paired:
                p.add_row(
                    f"{d['a']} - {d['b']}",
                    str(d["episodes"]),
                    f"{100 * d['mean_difference']:+.2f} ± {pc(d['half_width'])}",
                )
            console.print(p)
        for g, s in (self.health.get("generators") or {}).items():
            if s["agreement"] is not None:
                console.print(f"health: {status_line(g, s)}", markup=False)
        if (hr := self.teacher_headroom) is not None:
            console.print(
                headroom_line(hr) + (f". WARNING: {hr['warning']}" if hr["warning"] else "")
            )
        for f in self.failures:
            console.print(f"episode {f['index']} failed: {f['error_type']}: {f['message']}")
        return console.export_text()


def aggregate(
    out_dir: str | Path,
    indices: Sequence[int],
    methods: Sequence[str],
    *,
    target_halfwidth: float | None = None,
    confidence: float = 0.95,
    run: dict[str, Any] | None = None,
    write: bool = True,
) -> BenchmarkResult:
    """Rebuild the results from out_dir/episodes and out_dir/failures (sorted by index)."""
    out_dir = Path(out_dir)
    per_episode, failures = [], []
    for i in sorted(indices):
        rec_path = out_dir / "episodes" / f"{i}.json"
        fail_path = out_dir / "failures" / f"{i}.json"
        if rec_path.is_file():
            rec = read_json(rec_path)
            per_episode.append({"index": i, "seed": rec["seed"], "methods": rec["methods"]})
        elif fail_path.is_file():
            f = read_json(fail_path)
            failures.append({k: f[k] for k in ("index", "error_type", "message")})
    from tinyshot.evaluation.health_summary import benchmark_health

    summary = {}
    if per_episode:
        for m in methods:
            accs = [r["methods"][m]["accuracy"] for r in per_episode]
            qs = [r["methods"][m]["queries"] for r in per_episode]
            summary[m] = method_statistics(accs, qs, target_halfwidth, confidence)
    result = BenchmarkResult(
        out_dir=out_dir,
        methods=list(methods),
        total=len(indices),
        summary=summary,
        paired=paired_differences(per_episode, list(methods), confidence),
        per_episode=per_episode,
        failures=failures,
        run=dict(run or {}),
        health=benchmark_health(per_episode),
    )
    if write:
        write_json(out_dir / "results.json", result.to_dict())
        text = result.render()
        from tinyshot.utils.io import atomic_write

        atomic_write(out_dir / "summary.txt", lambda p: p.write_text(text))
    return result
