"""The efficiency benchmark's arithmetic: hypervolume over the references, anytime curves, time to reach a value."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.search_efficiency import (
    anytime,
    gain_hypervolume,
    plot_anytime,
    ratio_interval,
    summarise_time,
    time_to_reach,
)

OBJ = ["loss", "gflops"]


def _trials(variant: str, rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
    """(reference, loss, gflops, finished_s) per completed trial; the plain backbone first, the paper default next."""
    return pd.DataFrame([dict(variant=variant, seed=0, trial_id=f"t{i}", status="completed", reference=ref,
                              loss=loss, gflops=g, finished_s=t) for i, (ref, loss, g, t) in enumerate(rows)])


REFS = [("baseline", 1.0, 0.30, 10.0), ("paper_default", 0.95, 0.36, 20.0)]


def test_gain_hypervolume_counts_only_what_beats_both_references():
    df = _trials("x", [*REFS, ("", 0.9, 0.33, 30.0), ("", 0.8, 0.35, 40.0), ("", 0.7, 0.40, 50.0)])
    # boxes up to (loss 1.0, 0.36 GFLOPs): 0.1 x 0.03 and 0.2 x 0.01, overlapping in 0.1 x 0.01; the last costs more
    assert gain_hypervolume(df, OBJ) == pytest.approx(0.003 + 0.001)
    assert gain_hypervolume(df.iloc[[0, 2, 3]], OBJ) == 0.0  # the paper default not completed yet: no point


def test_the_anytime_curve_and_the_time_it_takes_to_reach_a_value():
    curve = anytime(_trials("x", [("", 0.8, 0.35, 40.0), *REFS, ("", 0.9, 0.33, 30.0)]), OBJ)
    assert list(curve.index) == [10.0, 20.0, 30.0, 40.0]
    assert curve.tolist() == pytest.approx([0.0, 0.0, 0.003, 0.004])
    assert time_to_reach(curve, 0.003) == 30.0 and time_to_reach(curve, 0.0035) == 40.0
    assert math.isinf(time_to_reach(curve, 0.005))


def test_the_summary_compares_each_variant_with_random_search_seed_by_seed(tmp_path):
    trials = pd.concat([_trials("nsga2-es", [*REFS, ("", 0.9, 0.33, 30.0), ("", 0.8, 0.35, 40.0)]),
                        _trials("random", [*REFS, ("", 0.9, 0.33, 60.0)])], ignore_index=True)
    table = pd.DataFrame([dict(variant=v, seed=0, backbone="mobilenetv2_100", proxy="default", time_budget_min=1.0,
                               objectives="loss,gflops", trials=n, completed=n, stopped=0, wall_s=70.0,
                               overhead_share=0.05, hv_gain=g) for v, n, g in (("nsga2-es", 4, 0.004),
                                                                                ("random", 3, 0.003))])
    text = summarise_time(table, trials)
    # random reached its final 0.003 at 60 s, the default at 30 s: half the time; and it ended 4/3 higher
    assert "seed 0: reached random's final in 0.5 min against random's 1.0 min (x0.50); final x1.33" in text
    assert "time to random's final x0.50" in text and "final hv_gain x1.33" in text
    assert "random / nsga2-es final hv_gain: x0.75, geometric mean x0.75 (no interval from 1 seed)" in text
    assert plot_anytime(table, trials, tmp_path / "anytime.png").stat().st_size > 0


def test_a_ratio_over_seeds_is_a_difference_only_where_its_interval_excludes_1():
    assert ratio_interval([1.3]) == "(no interval from 1 seed)"
    assert ratio_interval([1.3, 1.31, 1.29]).endswith(": higher)")
    assert ratio_interval([0.8, 1.3, 1.05]).endswith(": not distinguishable)")
    assert ratio_interval([1.2, math.inf]).startswith("(no interval")
