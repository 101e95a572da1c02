"""Theorem 1 against simulation and the paper's worked examples; t-intervals against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from tinyshot.cli import main
from tinyshot.errors import ConfigError
from tinyshot.evaluation.stats import (
    AccuracySummary,
    ceil_episodes,
    episodes_for_halfwidth,
    episodes_for_variance,
    estimate_sigma,
    halfwidth_for,
    mean_confidence_interval,
    theorem1_variance,
)


def simulate(acc, sigma, queries, episodes, reps, seed=0):
    """reps evaluations: per-episode true accuracy ~ Beta(mean acc, sd sigma), Q Bernoulli queries."""
    rng = np.random.default_rng(seed)
    k = acc * (1 - acc) / sigma**2 - 1
    a_p = rng.beta(acc * k, (1 - acc) * k, size=(reps, episodes))
    return rng.binomial(queries, a_p) / queries  # empirical per-episode accuracies


@pytest.mark.parametrize(
    "acc, sigma, queries, episodes",
    [(0.7, 0.2, 3, 10), (0.9, 0.05, 1, 5), (0.5, 0.1, 20, 4), (0.93, 0.028, 75, 6)],
)
def test_theorem1_matches_monte_carlo(acc, sigma, queries, episodes):
    reps = 40_000
    per_ep = simulate(acc, sigma, queries, episodes, reps, seed=queries)
    est = per_ep.mean(axis=1)  # the estimator: mean over P episodes
    var = theorem1_variance(acc, sigma, queries, episodes)
    # sampling error of a variance estimate from `reps` draws: ~sqrt(2/reps) = 0.7%
    assert est.var(ddof=1) == pytest.approx(var, rel=0.04)
    assert est.mean() == pytest.approx(acc, abs=4 * math.sqrt(var / reps))  # unbiased (Eq. 5)
    approx = (acc * (1 - acc) / queries + sigma**2) / episodes  # large-Q form (Eq. 7)
    if approx / var - 1 > 0.1:  # where they differ, the simulation tells them apart
        assert abs(est.var(ddof=1) / approx - 1) > 0.06


def test_worked_examples_of_method_md():
    lh = theorem1_variance(0.87, 0.05, 75, 600)  # LabelHalluc, 15 queries x 5 classes
    assert lh == pytest.approx(6.6244e-6, rel=1e-4) and round(lh, 7) == 6.6e-6
    assert theorem1_variance(0.87, 0.05, 25, 600) == pytest.approx(1.154e-5, rel=1e-3)
    p = episodes_for_variance(0.93, 0.028, 2975, 7e-6)  # TINT, 595 queries x 5 classes
    assert round(p, 1) == 115.1 and ceil_episodes(p) == 116
    # "a target of 6.62e-6 needs P=121.6": the LabelHalluc variance unrounded (6.6244e-6)
    assert round(episodes_for_variance(0.93, 0.028, 2975, lh), 1) == 121.6
    assert round(episodes_for_variance(0.93, 0.028, 2975, 6.62e-6), 1) == 121.7
    assert theorem1_variance(0.93, 0.028, 2975, p) == pytest.approx(7e-6)


def test_halfwidth_planning_round_trip():
    p = episodes_for_halfwidth(0.93, 0.028, 2975, 0.005)
    assert halfwidth_for(0.93, 0.028, 2975, p) == pytest.approx(0.005)
    assert p == pytest.approx(
        episodes_for_variance(0.93, 0.028, 2975, (0.005 / sps.norm.ppf(0.975)) ** 2)
    )
    assert episodes_for_halfwidth(0.93, 0.028, 2975, 0.005, confidence=0.99) > p
    assert ceil_episodes(121.0000000001) == 121 and ceil_episodes(121.01) == 122


def test_estimate_sigma_inverts_eq14():
    per_ep = simulate(0.8, 0.06, 50, 20_000, 1, seed=3)[0]
    assert estimate_sigma(per_ep, 50) == pytest.approx(0.06, rel=0.05)


def test_t_interval_matches_scipy():
    rng = np.random.default_rng(1)
    for n in (2, 5, 120):
        accs = rng.uniform(0.6, 1.0, size=n)
        mean, hw = mean_confidence_interval(accs, 0.95)
        lo, hi = sps.t.interval(0.95, n - 1, loc=accs.mean(), scale=sps.sem(accs))
        assert mean == pytest.approx(accs.mean()) and hw == pytest.approx((hi - lo) / 2)
        lo, hi = sps.t.interval(0.9, n - 1, loc=accs.mean(), scale=sps.sem(accs))
        assert mean_confidence_interval(accs, 0.9)[1] == pytest.approx((hi - lo) / 2)
    assert math.isnan(mean_confidence_interval([0.9])[1])


def test_t_interval_covers_95_percent():
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(2000):
        accs = rng.normal(0.8, 0.05, size=8)
        m, hw = mean_confidence_interval(accs)
        hits += abs(m - 0.8) <= hw
    assert abs(hits / 2000 - 0.95) < 0.015  # binomial sd ~0.005


def test_accuracy_summary():
    s = AccuracySummary.from_accuracies([0.9, 0.95, 1.0, 0.85])
    assert s.episodes == 4 and s.mean == pytest.approx(0.925)
    assert s.std == pytest.approx(np.std([0.9, 0.95, 1.0, 0.85], ddof=1))
    d = s.to_dict()
    assert set(d) == {"mean", "half_width", "std", "episodes", "confidence"}
    assert json.loads(json.dumps(d))["half_width"] == pytest.approx(s.half_width)
    assert str(s).startswith("92.50 +- ") and "(95% CI, 4 episodes)" in str(s)
    one = AccuracySummary.from_accuracies([0.5])
    assert one.to_dict()["half_width"] is None and "n/a" in str(one)


@pytest.mark.parametrize(
    "call, option",
    [
        (lambda: theorem1_variance(1.2, 0.0, 10, 5), "--acc"),
        (lambda: theorem1_variance(0.9, 0.5, 10, 5), "--sigma 0.5 is impossible"),
        (lambda: theorem1_variance(0.9, -0.1, 10, 5), "--sigma must be >= 0"),
        (lambda: theorem1_variance(0.9, 0.1, 0, 5), "--queries"),
        (lambda: theorem1_variance(0.9, 0.1, 10, 0), "--episodes"),
        (lambda: episodes_for_variance(0.9, 0.1, 10, 0), "--target-var"),
        (lambda: episodes_for_halfwidth(0.9, 0.1, 10, -1), "--target-halfwidth"),
        (lambda: episodes_for_halfwidth(0.9, 0.1, 10, 0.01, confidence=1.5), "--confidence"),
        (lambda: mean_confidence_interval([]), "no episode accuracies"),
    ],
)
def test_bad_inputs_name_the_option(call, option):
    with pytest.raises(ConfigError, match=option):
        call()


def test_plan_eval_cli(capsys):
    base = ["plan-eval", "--acc", "0.93", "--sigma", "0.028", "--queries", "2975"]
    assert main([*base, "--target-var", "7e-6"]) == 0
    out = capsys.readouterr().out
    assert "episodes for Var <= 7e-06: 115.1 -> 116" in out
    assert main([*base, "--target-var", "7e-6", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["episodes"] == 116 and round(r["episodes_exact"], 1) == 115.1
    assert r["variance"] == pytest.approx(theorem1_variance(0.93, 0.028, 2975, 116))
    assert (
        main(
            [
                "plan-eval",
                "--acc",
                "0.87",
                "--sigma",
                "0.05",
                "--queries",
                "75",
                "--episodes",
                "600",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["variance"] == pytest.approx(6.6244e-6, rel=1e-4) and "episodes_exact" not in r
    assert main([*base, "--target-halfwidth", "0.005", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["halfwidth"] <= 0.005 and r["episodes"] == ceil_episodes(r["episodes_exact"])
    assert (
        main(["plan-eval", "--acc", "0.9", "--sigma", "0.4", "--queries", "5", "--episodes", "3"])
        == 2
    )
    assert "error: --sigma 0.4 is impossible" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # exactly one goal is required
        main(base)


def test_t_planner_is_wider_than_normal_and_meets_its_target():
    from scipy.stats import t

    from tinyshot.evaluation.stats import (
        episodes_for_t_halfwidth,
        t_halfwidth_for,
        theorem1_variance,
    )

    a, s, q = 0.86, 0.0344, 5000
    # closed form: t(7, 0.975) * sqrt(Var_1 / 8)
    want = t.ppf(0.975, 7) * (theorem1_variance(a, s, q, 8)) ** 0.5
    assert t_halfwidth_for(a, s, q, 8) == pytest.approx(want, rel=1e-12)
    assert t_halfwidth_for(a, s, q, 8) == pytest.approx(0.0290, abs=5e-5)
    p = episodes_for_t_halfwidth(a, s, q, 0.025)
    assert p == 10  # the normal approximation says 8
    assert t_halfwidth_for(a, s, q, p) <= 0.025 < t_halfwidth_for(a, s, q, p - 1)
