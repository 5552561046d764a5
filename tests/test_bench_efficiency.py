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


def test_what_a_run_gives_is_measured_again_on_fresh_paired_seeds():
    from bench.efficiency_verified import MEASURE_SEED_BASE, needed, plain_json, verified
    from bench.search_efficiency import verified_markdown

    plain = plain_json("mobilenetv2_100")
    # the plain backbone, the paper default, A (chosen), B, and C (beyond the paper default's GFLOPs)
    rows = [("baseline", 1.0, 0.30, 10.0, plain), ("paper_default", 0.95, 0.36, 20.0, "Q"),
            ("", 0.9, 0.33, 30.0, "A"), ("", 0.8, 0.35, 40.0, "B"), ("", 0.7, 0.40, 50.0, "C")]
    trials = pd.DataFrame([dict(status="completed", reference=r, loss=q, gflops=g, finished_s=t, config_json=c,
                                chosen=c == "A") for r, q, g, t, c in rows])
    seeds = [MEASURE_SEED_BASE, MEASURE_SEED_BASE + 1]
    # B, then A (best proxy score first); C costs more than the paper default, the paper default is dominated
    assert needed(trials, OBJ, "mobilenetv2_100", 0, 2) == [(c, s) for c in (plain, "A", "B") for s in seeds]
    scores = ((plain, (1.0, 1.2)), ("A", (0.9, 1.0)), ("B", (1.05, 1.25)))
    measured = pd.DataFrame([dict(config_json=c, seed=s, val_loss=v) for c, vs in scores
                             for s, v in zip(seeds, vs, strict=True)])
    got = verified(trials, OBJ, measured, "mobilenetv2_100", 0, 2)
    assert got["v_gain"] == pytest.approx(0.15)  # plain minus A, seed by seed: 0.1 and 0.2
    # box: the plain backbone's verified mean 1.1, the paper default's 0.36 GFLOPs; B verified worse than the plain
    assert got["v_hv_gain"] == pytest.approx((1.1 - 0.95) * (0.36 - 0.33))
    assert list(got["curve"].index) == [30.0, 40.0]
    assert got["curve"].tolist() == pytest.approx([0.0045, 0.0045])
    assert verified(trials, OBJ, measured.iloc[:-1], "mobilenetv2_100", 0, 2) is None  # a row missing: no figure
    # two variants over two seeds: differences from random search, seed by seed, with their interval
    frame = pd.DataFrame([dict(variant=v, seed=s, hv_gain=0.01, v_gain=g, v_hv_gain=h, chosen_is_plain=False,
                               curve=pd.Series([h], index=[30.0 + s])) for v, s, g, h in (("random", 0, 0.1, 0.004),
                                                                        ("random", 1, 0.0, 0.002),
                                                                        ("tpe-es", 0, 0.2, 0.006),
                                                                        ("tpe-es", 1, 0.1, 0.004))])
    md = verified_markdown(frame)
    tpe = next(line for line in md.splitlines() if line.startswith("| tpe-es"))
    assert "+0.1000 ± 0.0000 (better)" in tpe and "+2.00 ± 0.00 (better)" in tpe and "x1.00 (geomean of 2" in tpe
    # a seed whose random search verified nothing better than the plain backbone sets no time to beat: it says so
    frame = pd.concat([frame, pd.DataFrame([dict(variant=v, seed=2, hv_gain=0.01, v_gain=0.0, v_hv_gain=h,
                                                 chosen_is_plain=True, curve=pd.Series([h], index=[32.0]))
                                            for v, h in (("random", 0.0), ("tpe-es", 0.003))])])
    tpe = next(line for line in verified_markdown(frame).splitlines() if line.startswith("| tpe-es"))
    assert "x1.00 (geomean of 2; never on 0 of 2 seeds; random found nothing on 1 of 3)" in tpe


def test_measurements_of_another_recipe_are_never_taken_for_this_one():
    from bench.efficiency_verified import fidelity, measured_at, settings_key

    now = settings_key(fidelity("default", "3x"))
    before = settings_key(fidelity("default", "3x").replace(precise_bn=0))
    assert now != before and "threads" not in now
    rows = pd.DataFrame({"backbone": ["mobilenetv2_100"] * 3 + ["resnet50"], "fidelity": [now, before, now, now],
                         "seed": [1, 2, 3, 4]})
    assert measured_at(rows, "mobilenetv2_100", "default", "3x").seed.tolist() == [1, 3]
    assert measured_at(rows.drop(columns="fidelity"), "mobilenetv2_100", "default", "3x").empty  # unrecorded


def test_rows_that_differ_only_in_a_speed_setting_measured_the_same_recipe():
    """Rows recorded ``eval_batch_size`` before it joined ``SPEED_ONLY``: they still count for the recipe."""
    import json

    from bench.efficiency_verified import fidelity, measured_at, settings_key

    fid = fidelity("default", "3x")
    recorded_then = json.dumps({**fid.to_dict(), "eval_batch_size": 256}, sort_keys=True, separators=(",", ":"))
    other_recipe = json.dumps({**fid.to_dict(), "lr": 0.5}, sort_keys=True, separators=(",", ":"))
    assert "eval_batch_size" not in settings_key(fid) and settings_key(fid) == settings_key(fid.replace(threads=2))
    rows = pd.DataFrame({"backbone": ["mobilenetv2_100"] * 3, "seed": [1, 2, 3],
                         "fidelity": [recorded_then, other_recipe, settings_key(fid)]})
    assert measured_at(rows, "mobilenetv2_100", "default", "3x").seed.tolist() == [1, 3]
