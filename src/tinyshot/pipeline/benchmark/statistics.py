"""Per-method figures of a benchmark: mean with a Student-t CI, the Theorem-1 figures, and paired
differences between methods on the same episodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tinyshot.errors import ConfigError
from tinyshot.utils.logging import get_logger

log = get_logger("pipeline.benchmark")


def method_statistics(
    accs: Sequence[float],
    queries: Sequence[int],
    target_halfwidth: float | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Mean with Student-t half-width, and the Theorem-1 figures from these episodes."""
    from tinyshot.evaluation import stats

    a = np.asarray(accs, dtype=np.float64)
    mean, hw = stats.mean_confidence_interval(a, confidence)
    q = float(np.mean(queries))
    out: dict[str, Any] = {
        "episodes": int(a.size),
        "mean": mean,
        "half_width": hw,
        "confidence": confidence,
        "std": float(a.std(ddof=1)) if a.size > 1 else float("nan"),
        "mean_queries": q,
        "sigma_a": None,
        "theorem1_variance": None,
        "theorem1_half_width": None,
        "target_halfwidth": target_halfwidth,
        "episodes_for_target": None,
    }
    try:
        sigma = stats.estimate_sigma(a, q)
        out["sigma_a"] = sigma
        out["theorem1_variance"] = stats.theorem1_variance(mean, sigma, q, a.size)
        out["theorem1_half_width"] = stats.halfwidth_for(mean, sigma, q, a.size, confidence)
        if target_halfwidth is not None:
            need = stats.episodes_for_halfwidth(mean, sigma, q, target_halfwidth, confidence)
            out["episodes_for_target"] = stats.ceil_episodes(need)
    except ConfigError as e:  # < 2 episodes, 1 query, or a degenerate spread
        log.debug("Theorem-1 figures unavailable: %s", e)
    return _nan_to_none(out)


def paired_differences(
    per_episode: Sequence[dict[str, Any]], methods: Sequence[str], confidence: float = 0.95
) -> list[dict[str, Any]]:
    """Mean accuracy difference (a - b) with a t-interval over the episodes both finished;
    pairing removes the episode-difficulty spread that dominates sigma_a."""
    from tinyshot.evaluation.stats import mean_confidence_interval

    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            d = [
                r["methods"][a]["accuracy"] - r["methods"][b]["accuracy"]
                for r in per_episode
                if a in r["methods"] and b in r["methods"]
            ]
            if not d:
                continue
            mean, hw = mean_confidence_interval(d, confidence)
            out.append(
                _nan_to_none(
                    {"a": a, "b": b, "episodes": len(d), "mean_difference": mean, "half_width": hw}
                )
            )
    return out


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
