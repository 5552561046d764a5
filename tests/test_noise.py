"""results.noise (intervals, t quantiles, pooled sd, verdicts) and results.config_stats (per-config means of
replicated trials, the noise estimate, paired gains, finalists), and the replicate plan of search.finalists."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from results.config_stats import config_means, finalists, noise_estimate, paired_gain, rule_order
from results.frame import trials_frame
from results.noise import (
    blocked_sd,
    interval,
    paired_difference,
    paired_words,
    pooled_difference,
    pooled_sd,
    t_quantile,
    verdict,
)
from results.pareto import pareto_front
from space import ArchConfig, SearchSpace

# Student's t 97.5 % quantiles from printed tables (df 1, 2, 3, 5, 10, 30) and the normal limit.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042, 10_000: 1.960}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-T_TABLE[df], abs=1e-3)
    assert t_quantile(0.5, df) == pytest.approx(0.0, abs=1e-9)


def test_interval_is_mean_plus_minus_t_times_standard_error():
    xs = [0.80, 0.83, 0.81, 0.86]
    iv = interval(xs)
    assert iv.mean == pytest.approx(statistics.mean(xs)) and iv.n == 4
    assert iv.half == pytest.approx(3.182446 * statistics.stdev(xs) / 2, rel=1e-6)
    assert iv.low < iv.mean < iv.high
    assert math.isnan(interval([0.8]).half) and interval([0.8]).n == 1
    assert interval([0.8, float("nan"), None]).n == 1  # missing values are not seeds
    assert iv.format(100, 2, "points") == f"+{100 * iv.mean:.2f} ± {100 * iv.half:.2f} points"


def test_paired_difference_cancels_what_each_seed_does_to_both():
    a, b = [0.70, 0.80, 0.90], [0.69, 0.79, 0.89]  # seeds vary a lot; the difference not at all
    paired = paired_difference(a, b)
    assert paired.mean == pytest.approx(0.01) and paired.half == pytest.approx(0.0, abs=1e-12)
    assert verdict(paired) == "better" and verdict(paired, "minimize") == "worse"
    assert verdict(interval(a)) == "better"  # excludes 0
    unpaired = interval(x - y for x, y in zip(a, reversed(b), strict=True))
    assert verdict(unpaired) == "not distinguishable"
    assert verdict(interval([0.01])) == "not distinguishable"  # no interval, no claim
    with pytest.raises(ValueError, match="same seeds on both sides"):
        paired_difference([1, 2], [1])


def test_pooled_sd_weights_groups_by_their_degrees_of_freedom():
    groups = [[1.0, 2.0, 3.0], [5.0, 5.0], [7.0]]
    sd, dof = pooled_sd(groups)
    assert dof == 3 and sd == pytest.approx(math.sqrt((2.0 + 0.0) / 3))
    assert pooled_sd([[1.0], [2.0]]) == (pytest.approx(math.nan, nan_ok=True), 0)


def _additive_fit_residual(rows: list[list[float]]) -> tuple[float, int]:
    """The residual sd of configs × seeds by least squares on indicator columns: the model fitted the long way."""
    k, n = len(rows), len(rows[0])
    design, y = [], []
    for i in range(k):
        for j in range(n):
            design.append([1.0] + [float(i == c) for c in range(1, k)] + [float(j == s) for s in range(1, n)])
            y.append(rows[i][j])
    x, target = np.array(design), np.array(y)
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    dof = k * n - x.shape[1]
    return math.sqrt(float(((target - x @ coef) ** 2).sum()) / dof), dof


def test_blocked_sd_is_the_residual_of_the_additive_model():
    rows = [[0.80, 0.83, 0.78, 0.81], [0.82, 0.84, 0.81, 0.80], [0.79, 0.85, 0.76, 0.84]]
    sd, dof = blocked_sd(rows)
    want_sd, want_dof = _additive_fit_residual(rows)
    assert dof == want_dof == 6 and sd == pytest.approx(want_sd, rel=1e-9)
    # what every seed does to all configs alike, and what every config does under every seed, is no noise
    additive = [[c + s for s in (0.0, 0.3, -0.2)] for c in (0.5, 0.7, 0.6)]
    assert blocked_sd(additive)[0] == pytest.approx(0.0, abs=1e-12)
    assert blocked_sd([[0.8, 0.9]]) == (pytest.approx(math.nan, nan_ok=True), 0)  # one config: no residual
    with pytest.raises(ValueError, match="every config under every seed"):
        blocked_sd([[0.8, 0.9], [0.7]])
    with pytest.raises(ValueError, match="finite value"):
        blocked_sd([[0.8, 0.9], [0.7, math.nan]])


def test_a_pooled_difference_of_two_configs_is_their_paired_t_interval():
    a, b = [0.81, 0.85, 0.80], [0.79, 0.80, 0.80]
    sd, dof = blocked_sd([a, b])
    pooled, paired = pooled_difference(a, b, sd, dof, 2), paired_difference(a, b)
    assert pooled.mean == pytest.approx(paired.mean) and pooled.half == pytest.approx(paired.half, rel=1e-9)
    assert paired_words(pooled) == "3 paired seeds"
    # more configs under the same seeds: more degrees of freedom, said so
    more = pooled_difference(a, b, 0.01, 6, 4)
    assert more.half == pytest.approx(t_quantile(0.975, 6) * 0.01 * math.sqrt(2 / 3)) and more.pooled == 4
    assert paired_words(more) == "3 paired seeds, seed noise pooled over 4 configs"
    assert math.isnan(pooled_difference([0.8], [0.7], math.nan, 0, 3).half)
    with pytest.raises(ValueError, match="same seeds on both sides"):
        pooled_difference([1, 2], [1], 0.1, 2, 3)


def _frame(accs: dict[int, list[float]], gflops=(1.82, 1.83, 1.825, 1.826)) -> pd.DataFrame:
    """Configs 0..3 (plain, paper default, two samples); config i trained with len(accs[i]) seeds."""
    archs = [ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"),
             SearchSpace("resnet18").sample(1), SearchSpace("resnet18").sample(2)]
    refs = ["baseline", "paper_default", "", ""]
    recs, number = [], len(accs)
    for i in sorted(accs):
        for k, acc in enumerate(accs[i]):
            rec = dict(trial_id=f"t{i}" + (f"r{k}" if k else ""), number=number if k else i, seed=1000 * k,
                       status="completed", reference=refs[i], accuracy=acc, gflops=gflops[i], params=1,
                       config=archs[i].to_dict())
            if k:
                rec["replicate_of"] = f"t{i}"
                number += 1
            recs.append(rec)
    return trials_frame(recs)


def test_config_means_one_row_per_config_with_seeds_and_interval():
    df = _frame({0: [0.80, 0.82, 0.78], 1: [0.81, 0.79, 0.83], 2: [0.85, 0.87, 0.86], 3: [0.70]})
    means = config_means(df, ["accuracy", "gflops"])
    assert list(means["trial_id"]) == ["t0", "t1", "t2", "t3"]
    assert list(means["accuracy"]) == pytest.approx([0.80, 0.81, 0.86, 0.70])
    assert list(means["seeds"]) == [3, 3, 3, 1]
    assert means["accuracy_ci95"].iloc[0] == pytest.approx(interval([0.80, 0.82, 0.78]).half)
    assert math.isnan(means["accuracy_ci95"].iloc[3])
    # a frame without replicates keeps its rows and values
    plain = config_means(_frame({0: [0.8], 1: [0.81]}), ["accuracy", "gflops"])
    assert list(plain["accuracy"]) == [0.8, 0.81] and list(plain["seeds"]) == [1, 1]


def test_noise_estimate_and_paired_gain_from_the_replicates():
    df = _frame({0: [0.80, 0.82, 0.78], 1: [0.81, 0.79, 0.83], 2: [0.85, 0.87, 0.83], 3: [0.70]})
    sd, dof = noise_estimate(df, "accuracy")
    assert dof == 6 and sd == pytest.approx(0.02)
    gain = paired_gain(df, "t2", "t0", "accuracy")
    # t2 is t0 + 0.05 on every seed, but the seed noise is that of t0, t1 and t2, all under the same 3 seeds
    sd, dof = blocked_sd([[0.80, 0.82, 0.78], [0.81, 0.79, 0.83], [0.85, 0.87, 0.83]])
    assert gain.mean == pytest.approx(0.05) and gain.n == 3 and gain.pooled == 3 and dof == 4
    assert gain.half == pytest.approx(t_quantile(0.975, 4) * sd * math.sqrt(2 / 3)) and gain.half > 0.0
    assert paired_gain(df, "t3", "t0", "accuracy").n == 1  # one shared seed: no interval
    assert math.isnan(paired_gain(df, "t9", "t0", "accuracy").mean)


def test_finalists_are_references_front_and_configs_within_the_band():
    df = _frame({0: [0.80], 1: [0.81], 2: [0.86], 3: [0.845]})
    means = config_means(df, ["accuracy", "gflops"])
    # front: t0 (cheapest) and t2 (best); t3 costs more than t2 and is 1.5 points below it
    assert finalists(means, ["accuracy", "gflops"], band=0.0) == ["t0", "t1", "t2"]
    assert finalists(means, ["accuracy", "gflops"], band=0.02) == ["t0", "t1", "t2", "t3"]
    assert finalists(means, ["accuracy", "gflops"], band=0.01) == ["t0", "t1", "t2"]


def test_the_front_comes_in_the_order_the_selection_rule_prefers_it():
    df = _frame({0: [0.80], 1: [0.81], 2: [0.84], 3: [0.86]})
    means = config_means(df, ["accuracy", "gflops"])
    # front by GFLOPs: t0 (1.82), t2 (1.825), t3 (1.826); t1 (1.83, 0.81) is dominated by t3
    assert finalists(means, ["accuracy", "gflops"], band=0.0) == ["t0", "t1", "t2", "t3"]
    assert finalists(means, ["accuracy", "gflops"], band=0.0, rule="max-accuracy") == ["t0", "t1", "t3", "t2"]
    front = pareto_front(means, ["accuracy", "gflops"])
    # under 1.8255 GFLOPs the rule picks t2, then t0; t3 it can never pick, so it comes last
    assert rule_order(front, ["accuracy", "gflops"], "max-accuracy-under:1.8255") == ["t2", "t0", "t3"]


def test_the_replicate_phase_is_bounded_by_a_share_of_the_budget():
    from search.finalists import MIN_FINALISTS, max_finalists

    assert max_finalists(200) == 4 and max_finalists(300) == 6 and max_finalists(6) == MIN_FINALISTS
