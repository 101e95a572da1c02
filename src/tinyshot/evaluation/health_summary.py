"""Health for readers: a multi-episode run's pooled block (demo, benchmark), the teacher's
headroom over the students, and the report's banner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tinyshot.evaluation.health import HEADROOM_WARN, MAX_BANNER_WARNINGS, status_line


def teacher_headroom(accuracy: dict[str, float]) -> dict[str, Any] | None:
    """Teacher minus best student (mean accuracies by method), with a warning below +3 points.

    None when there is no teacher or no student to compare."""
    students = {m: a for m, a in accuracy.items() if m != "teacher"}
    if "teacher" not in accuracy or not students:
        return None
    best = max(students, key=lambda m: students[m])
    teacher, top = accuracy["teacher"], students[best]
    headroom = teacher - top
    out: dict[str, Any] = {
        "teacher": teacher,
        "best_student": best,
        "best_student_accuracy": top,
        "headroom": headroom,
        "warn_below": HEADROOM_WARN,
        "status": "ok" if headroom >= HEADROOM_WARN else "warn",
        "warning": None,
    }
    if out["status"] == "warn":
        out["warning"] = (
            f"teacher headroom {100 * headroom:+.1f} points: the teacher ({100 * teacher:.1f}%) "
            f"is not {100 * HEADROOM_WARN:.0f} points above the best student ({best}, "
            f"{100 * top:.1f}%), so its pseudo-labels can lift the students little and the "
            "synthetic-image methods tie; use a stronger --teacher (measured ones: "
            "docs/models.md)"
        )
    return out


def headroom_line(headroom: dict[str, Any]) -> str:
    """The one-line summary a run prints (demo table, benchmark summary)."""
    return (
        f"teacher headroom over the best student ({headroom['best_student']}): "
        f"{100 * headroom['headroom']:+.2f} points"
    )


def combine_episodes(per_episode: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """One health block for a multi-episode run (demo, benchmark) from per-episode blocks.

    Agreement is pooled over episodes per generator; warnings keep their episode number.
    """
    eps = [(i, h) for i, h in enumerate(per_episode) if h]
    if not eps:
        return {}
    gens: dict[str, dict[str, Any]] = {}
    for _, h in eps:
        for g, s in (h.get("generators") or {}).items():
            d = gens.setdefault(
                g, {"agreements": [], "failed": 0, "warned": 0, "episodes": 0, "chance": []}
            )
            d["episodes"] += 1
            d["chance"].append(s.get("chance"))
            if s.get("agreement") is not None:
                d["agreements"].append(s["agreement"])
            d["failed"] += s.get("status") == "fail"
            d["warned"] += s.get("status") == "warn"
    correct = sum(
        (h.get("real_image_estimate") or {}).get("teacher_loo", {}).get("correct", 0)
        for _, h in eps
    )
    images = sum(
        (h.get("real_image_estimate") or {}).get("teacher_loo", {}).get("images", 0) for _, h in eps
    )
    generators = {
        g: {
            "agreement": sum(d["agreements"]) / len(d["agreements"]) if d["agreements"] else None,
            "chance": d["chance"][0],
            "episodes": d["episodes"],
            "episodes_failed": d["failed"],
            "episodes_warned": d["warned"],
            "status": "fail" if d["failed"] else ("warn" if d["warned"] else "ok"),
        }
        for g, d in gens.items()
    }
    return {
        "sources": eps[0][1].get("sources", []),
        "chance": eps[0][1].get("chance"),
        "generators": generators,
        "warnings": [f"episode {i + 1}: {w}" for i, h in eps for w in h.get("warnings", [])],
        "information": [f"episode {i + 1}: {w}" for i, h in eps for w in h.get("information", [])],
        "real_image_estimate": {
            "teacher_loo": {
                "accuracy": correct / images if images else None,
                "correct": correct,
                "images": images,
                "method": "leave-one-out ProtoNet over the support images (teacher only)",
            }
        },
        "episodes": len(eps),
    }


def benchmark_health(per_episode: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's health block from the per-episode method records (run_pipeline_episode
    puts each generator's summary under methods[generator]["health"])."""
    blocks = []
    for rec in per_episode:
        gens = {
            m: d["health"]
            for m, d in rec.get("methods", {}).items()
            if isinstance(d, dict) and "health" in d
        }
        blocks.append({"generators": gens} if gens else None)
    out = combine_episodes(blocks)
    if out:
        out.pop("real_image_estimate", None)  # not carried per episode by the benchmark
        out.pop("sources", None)
    return out


def banner_html(health: dict[str, Any], method_label: str | None = None) -> str:
    """The report's first screen: sources used, health per generator, warnings, estimate."""
    import html

    warns = health.get("warnings") or []
    gens = health.get("generators") or {}
    sources = health.get("sources", [])
    failing = any(info.get("status") == "fail" for info in gens.values())
    color, border = (
        ("#fdecea", "#d93025")
        if failing
        else ("#fff4e5", "#ed6c02")
        if warns
        else ("#edf7ed", "#2e7d32")
    )
    parts = [
        f'<div class="health" style="background:{color};border:2px solid {border};'
        'padding:.6em 1em;margin:1em 0;border-radius:4px">'
    ]
    head = (f"Health: {len(warns)} warning(s)" if warns else "Health: no warnings") + (
        f" ({html.escape(method_label)})" if method_label else ""
    )
    parts.append(f"<strong>{head}</strong>")
    status = []
    for g, info in gens.items():
        if info.get("agreement") is None:
            continue
        unused = "" if f"synthetic:{g}" in sources or not sources else " (not used by this student)"
        status.append(f"<li>{html.escape(status_line(g, info) + unused)}</li>")
    if status:
        parts.append(f"<ul>{''.join(status)}</ul>")
    src = [
        f"synthetic images from {s.split(':', 1)[1]}"
        if s.startswith("synthetic:")
        else (
            "teacher-labelled base-class images" if s == "base" else "the labelled support images"
        )
        for s in sources
    ]
    if src:
        parts.append(
            "<p>The student learned from: " + html.escape("; ".join(src)) + f". Chance is "
            f"{100 * health.get('chance', 0):.1f}%.</p>"
        )
    if warns:
        more = len(warns) - MAX_BANNER_WARNINGS
        items = "".join(f"<li>WARNING: {html.escape(w)}</li>" for w in warns[:MAX_BANNER_WARNINGS])
        if more > 0:
            items += f"<li>... and {more} more (health block of the run's JSON)</li>"
        parts.append(f"<ul>{items}</ul>")
    info_lines = health.get("information") or []
    if info_lines:
        shown = info_lines[:MAX_BANNER_WARNINGS]
        items = "".join(f"<li>{html.escape(i)}</li>" for i in shown)
        if len(info_lines) > len(shown):
            items += f"<li>... and {len(info_lines) - len(shown)} more (the run's JSON)</li>"
        parts.append(
            f"<details><summary>{len(info_lines)} figure(s) outside their usual range, on "
            "classes whose images pass the agreement check (information, not a warning)"
            f"</summary><ul>{items}</ul></details>"
        )
    real = health.get("real_image_estimate") or {}
    lines = []
    t = real.get("teacher_loo")
    if t and t.get("images"):
        lines.append(
            f"teacher, leave-one-out over the supports: {100 * t['accuracy']:.1f}% of "
            f"{t['images']} images"
        )
    h = real.get("holdout")
    if h and h.get("images"):
        lines.append(
            f"on {h['images']} support images held out of every training stage: student "
            f"{100 * h['student']:.1f}%, teacher {100 * h['teacher']:.1f}%"
        )
    if lines:
        parts.append(
            "<p>Accuracy on real images (an estimate from few images): "
            + html.escape("; ".join(lines))
            + ".</p>"
        )
    parts.append("</div>")
    return "".join(parts)
