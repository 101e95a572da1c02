"""Evaluation statistics: Theorem 1 of the paper (Sec. 3.3, App. A.3) and t-intervals.

Theorem 1: with P episodes of Q i.i.d. queries each, per-episode true accuracy a_p with
mean a and variance sigma^2, the mean of the per-episode empirical accuracies is unbiased
and

    Var = (1/P) * ( a(1-a)/Q + (1 - 1/Q) sigma^2 ).

It trades episodes (expensive: each needs a specialised generator) against queries
(cheap), and plans how many episodes an evaluation needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tinyshot.errors import ConfigError


def _check(acc: float, sigma: float, queries: float) -> None:
    if not 0.0 <= acc <= 1.0:
        raise ConfigError(f"--acc must lie in [0, 1], got {acc}")
    if sigma < 0:
        raise ConfigError(f"--sigma must be >= 0, got {sigma}")
    if sigma**2 > acc * (1 - acc) + 1e-12:
        raise ConfigError(
            f"--sigma {sigma} is impossible with --acc {acc}: the variance of a per-episode "
            f"accuracy in [0, 1] with mean {acc} is at most a(1-a) = {acc * (1 - acc):.4g} "
            f"(sigma <= {math.sqrt(acc * (1 - acc)):.4g})"
        )
    if queries < 1:
        raise ConfigError(
            f"--queries must be >= 1 (queries per episode, all classes), got {queries}"
        )


def episode_variance(acc: float, sigma: float, queries: float) -> float:
    """Var of one episode's empirical accuracy: a(1-a)/Q + (1-1/Q) sigma^2 (Eq. 14)."""
    _check(acc, sigma, queries)
    return acc * (1 - acc) / queries + (1 - 1 / queries) * sigma**2


def theorem1_variance(acc: float, sigma: float, queries: float, episodes: float) -> float:
    """Var of the mean accuracy over `episodes` episodes of `queries` queries (Eq. 6/15)."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    return episode_variance(acc, sigma, queries) / episodes


def episodes_for_variance(acc: float, sigma: float, queries: float, target_var: float) -> float:
    """Episodes P (unrounded; callers take the ceiling) for Var <= target_var."""
    if target_var <= 0:
        raise ConfigError(f"--target-var must be > 0, got {target_var}")
    return episode_variance(acc, sigma, queries) / target_var


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must lie in (0, 1), got {confidence}")


def _z(confidence: float) -> float:
    from scipy.stats import norm

    _check_confidence(confidence)
    return float(norm.ppf(0.5 + confidence / 2))


def episodes_for_halfwidth(
    acc: float, sigma: float, queries: float, halfwidth: float, confidence: float = 0.95
) -> float:
    """Episodes (unrounded) for a normal-approximation CI of +-halfwidth (accuracy units)."""
    if halfwidth <= 0:
        raise ConfigError(f"--target-halfwidth must be > 0, got {halfwidth}")
    return episodes_for_variance(acc, sigma, queries, (halfwidth / _z(confidence)) ** 2)


def halfwidth_for(
    acc: float, sigma: float, queries: float, episodes: float, confidence: float = 0.95
) -> float:
    """Expected CI half-width (normal approximation) for a planned evaluation."""
    return _z(confidence) * math.sqrt(theorem1_variance(acc, sigma, queries, episodes))


def t_halfwidth_for(
    acc: float, sigma: float, queries: float, episodes: int, confidence: float = 0.95
) -> float:
    """Expected half-width of the Student-t interval that reports compute from P episodes;
    wider than the normal one for small P (t(7) = 2.36 against 1.96)."""
    from scipy.stats import t

    if episodes < 2:
        return math.inf
    _check_confidence(confidence)
    q = float(t.ppf(0.5 + confidence / 2, episodes - 1))
    return q * math.sqrt(theorem1_variance(acc, sigma, queries, episodes))


def episodes_for_t_halfwidth(
    acc: float, sigma: float, queries: float, halfwidth: float, confidence: float = 0.95
) -> int:
    """Smallest P whose expected Student-t half-width is <= halfwidth."""
    p = max(2, ceil_episodes(episodes_for_halfwidth(acc, sigma, queries, halfwidth, confidence)))
    while t_halfwidth_for(acc, sigma, queries, p, confidence) > halfwidth:
        p += 1
    return p


def ceil_episodes(p: float) -> int:
    """Round a planned episode count up, ignoring float noise (121.0000000001 -> 121)."""
    return max(1, math.ceil(round(p, 9)))


def estimate_sigma(episode_accs: Sequence[float], queries: float) -> float:
    """Inter-episode sigma from pilot per-episode accuracies, by inverting Eq. 14."""
    a = np.asarray(episode_accs, dtype=np.float64)
    if a.size < 2:
        raise ConfigError("need at least 2 pilot episodes to estimate sigma")
    _check(float(a.mean()), 0.0, queries)
    if queries == 1:
        raise ConfigError("sigma is not identifiable from 1 query per episode")
    m = float(a.mean())
    var = float(a.var(ddof=1))
    s2 = (var - m * (1 - m) / queries) / (1 - 1 / queries)
    return math.sqrt(max(s2, 0.0))


def mean_confidence_interval(
    accs: Sequence[float], confidence: float = 0.95
) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval over per-episode accuracies.

    The half-width is nan for a single episode (no spread to estimate)."""
    from scipy.stats import t

    a = np.asarray(accs, dtype=np.float64)
    if a.size == 0:
        raise ConfigError("no episode accuracies to summarise")
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence must lie in (0, 1), got {confidence}")
    mean = float(a.mean())
    if a.size == 1:
        return mean, float("nan")
    sem = float(a.std(ddof=1)) / math.sqrt(a.size)
    return mean, float(t.ppf(0.5 + confidence / 2, a.size - 1)) * sem


@dataclass
class AccuracySummary:
    """Mean accuracy over episodes with its t-interval; accuracies are fractions in [0, 1]."""

    mean: float
    half_width: float
    std: float
    episodes: int
    confidence: float = 0.95

    @classmethod
    def from_accuracies(cls, accs: Sequence[float], confidence: float = 0.95) -> AccuracySummary:
        a = np.asarray(accs, dtype=np.float64)
        mean, hw = mean_confidence_interval(a, confidence)
        std = float(a.std(ddof=1)) if a.size > 1 else float("nan")
        return cls(mean=mean, half_width=hw, std=std, episodes=int(a.size), confidence=confidence)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    def __str__(self) -> str:
        hw = "n/a" if math.isnan(self.half_width) else f"{100 * self.half_width:.2f}"
        return (
            f"{100 * self.mean:.2f} +- {hw} % ({100 * self.confidence:g}% CI, "
            f"{self.episodes} episode{'s' if self.episodes != 1 else ''})"
        )
