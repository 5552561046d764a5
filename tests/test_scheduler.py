"""The multi-objective ASHA: non-dominated ranking, promotion (with its noise band), rungs, and the scheduler."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from search.scheduler import (
    PROMOTION_BAND_SD,
    ParetoASHAScheduler,
    crowding_distance,
    non_dominated_ranks,
    promotes,
    promotion_band,
    rung_milestones,
)

OBJ, MODES = ["accuracy", "gflops"], ["max", "min"]
CONTINUE, STOP = "CONTINUE", "STOP"


# ------------------------------------------------------------------------------------------------ ranking


def test_non_dominated_ranks_sorts_into_fronts():
    #            A: front 0    B: front 0    C: dominated by A and B    D: dominated by C only
    points = [(0.90, 2.0), (0.80, 1.0), (0.70, 3.0), (0.60, 4.0)]
    assert non_dominated_ranks(points, MODES).tolist() == [0, 0, 1, 2]


def test_non_dominated_ranks_treats_nan_as_worst():
    assert non_dominated_ranks([(np.nan, 1.0), (0.5, 1.0)], MODES).tolist() == [1, 0]


def test_crowding_distance_gives_boundaries_infinity_and_interior_the_normalised_gap():
    front = [(0.70, 1.0), (0.80, 2.0), (0.90, 4.0)]
    d = crowding_distance(front, MODES)
    assert np.isinf(d[0]) and np.isinf(d[2])
    # accuracy gap (0.9 - 0.7)/0.2 = 1, gflops gap (4 - 1)/3 = 1
    assert d[1] == pytest.approx(2.0)
    assert np.isinf(crowding_distance(front[:2], MODES)).all()


def test_promotes_by_non_dominated_rank_not_by_accuracy():
    recorded = [(0.80, 1.0), (0.90, 2.0)]
    # dominated by both: 2 of 3 ahead, keep ceil(3/2)=2 -> stop
    assert not promotes(recorded, (0.70, 3.0), MODES, reduction_factor=2)
    # the least accurate, but the cheapest: on the first front, an extreme (infinite crowding) -> continue
    assert promotes(recorded, (0.60, 0.5), MODES, reduction_factor=2)
    # the first trial at a rung always continues
    assert promotes([], (0.10, 9.0), MODES, reduction_factor=3)


def test_promotes_keeps_one_over_eta():
    # Ten trials on one line of increasing accuracy and cost: all non-dominated, crowding decides.
    recorded = [(0.5 + 0.04 * i, 1.0 + i) for i in range(9)]
    # a dominated newcomer: 9 ahead of it, keep ceil(10/3)=4 -> stop
    assert not promotes(recorded, (0.50, 9.5), MODES, reduction_factor=3)
    # a newcomer that dominates everything continues
    assert promotes(recorded, (0.99, 0.5), MODES, reduction_factor=3)


def test_a_tie_within_the_noise_band_is_promoted():
    recorded = [(0.80, 1.0), (0.90, 2.0), (0.85, 1.5), (0.70, 3.0), (0.60, 3.5)]
    newcomer = (0.84, 2.5)  # dominated by (0.85, 1.5) and (0.90, 2.0): not in the top half by rank
    assert not promotes(recorded, newcomer, ["max", "min"], reduction_factor=3)
    assert not promotes(recorded, newcomer, ["max", "min"], reduction_factor=3, band=0.005)
    assert promotes(recorded, newcomer, ["max", "min"], reduction_factor=3, band=0.07)  # within noise of the best
    # a minimised score is moved down, not up
    losses = [(0.5, 1.0), (0.3, 2.0), (0.4, 1.5)]
    assert not promotes(losses, (0.45, 2.5), ["min", "min"], reduction_factor=3)
    assert promotes(losses, (0.45, 2.5), ["min", "min"], reduction_factor=3, band=0.2)


def test_the_search_band_is_the_presets_measured_noise_of_the_score_it_ranks_by():
    from evaluators.fidelity import preset

    default = preset("default").to_dict()
    assert default["rung_sd"] > 0
    assert promotion_band(default, default["score"]) == pytest.approx(PROMOTION_BAND_SD * default["rung_sd"])
    # another first objective: the preset's noise says nothing about it
    other = "accuracy" if default["score"] != "accuracy" else "loss"
    assert promotion_band(default, other) == 0.0
    assert promotion_band(preset("smoke").to_dict(), preset("smoke").score) == 0.0  # nothing measured


def test_rung_milestones():
    assert rung_milestones(1, 3, 27) == [1, 3, 9]
    assert rung_milestones(1, 2, 8) == [1, 2, 4]
    assert rung_milestones(1, 3, 2) == [1]
    assert rung_milestones(2, 3, 2) == []


# ------------------------------------------------------------------------------------------------ scheduler


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid)


def _result(key: str, epoch: int, acc: float, gflops: float, reference: str = "") -> dict:
    return {"epoch": epoch, "epochs": 4, "accuracy": acc, "gflops": gflops, "trial_key": key, "reference": reference}


def test_scheduler_promotes_by_non_dominated_rank_at_each_rung():
    sched = ParetoASHAScheduler(OBJ, MODES, max_epochs=4, grace_period=1, reduction_factor=2)
    assert sched.milestones == [1, 2]
    decide = lambda key, epoch, acc, gf, ref="": sched.on_trial_result(None, _trial("ray-" + key),  # noqa: E731
                                                                        _result(key, epoch, acc, gf, ref))
    assert decide("a", 1, 0.80, 1.0) == CONTINUE  # first at the rung
    assert decide("b", 1, 0.90, 2.0) == CONTINUE  # non-dominated
    assert decide("c", 1, 0.70, 3.0) == STOP  # dominated by a and b
    # Less accurate than every trial so far, which ASHA on accuracy would stop; the cheapest, so it stays.
    assert decide("d", 1, 0.60, 0.5) == CONTINUE
    assert sched.num_stopped == 1
    # Between rungs nothing is decided; at the next rung the survivors are compared again.
    assert sched.on_trial_result(None, _trial("ray-a"), {**_result("a", 1, 0.80, 1.0), "epoch": 1}) == CONTINUE
    assert decide("a", 2, 0.85, 1.0) == CONTINUE
    assert decide("b", 2, 0.95, 2.0) == CONTINUE
    assert decide("d", 2, 0.55, 0.5) == CONTINUE  # still the cheapest
    # A trial first seen at epoch 2 is ranked at rung 2: dominated by a, behind a, b and d; keep ceil(4/2) = 2.
    assert decide("e", 2, 0.80, 1.5) == STOP
    assert set(sched.rungs[1]) == {"a", "b", "c", "d"} and set(sched.rungs[2]) == {"a", "b", "d", "e"}


def test_scheduler_never_stops_references_and_keeps_decisions_of_retried_trials():
    sched = ParetoASHAScheduler(OBJ, MODES, max_epochs=4, grace_period=1, reduction_factor=2)
    sched.on_trial_result(None, _trial("r1"), _result("a", 1, 0.80, 1.0))
    sched.on_trial_result(None, _trial("r2"), _result("b", 1, 0.90, 2.0))
    # dominated, but the paper's reference config: it runs the full schedule and still counts at the rung
    assert sched.on_trial_result(None, _trial("r3"), _result("p", 1, 0.50, 5.0, "paper_default")) == CONTINUE
    assert "p" in sched.rungs[1] and sched.num_stopped == 0
    # a retried trial replays epoch 1 (a new seed, a worse accuracy): the first decision stands
    assert sched.on_trial_result(None, _trial("r1"), _result("a", 1, 0.10, 1.0)) == CONTINUE
    assert sched.rungs[1]["a"] == (0.80, 1.0)


def test_scheduler_seeded_from_earlier_curves_ranks_newcomers_against_them():
    sched = ParetoASHAScheduler(OBJ, MODES, max_epochs=4, grace_period=1, reduction_factor=2)
    sched.seed("t0000", [0.80, 0.85, 0.9, 0.92], {"gflops": 1.0})
    sched.seed("t0001", [0.90], {"gflops": 2.0})  # stopped at epoch 1: only rung 1
    assert set(sched.rungs[1]) == {"t0000", "t0001"} and set(sched.rungs[2]) == {"t0000"}
    assert sched.on_trial_result(None, _trial("x"), _result("t0002", 1, 0.70, 3.0)) == STOP


def test_scheduler_without_rungs_stops_nothing():
    sched = ParetoASHAScheduler(OBJ, MODES, max_epochs=1)
    assert sched.milestones == []
    assert sched.on_trial_result(None, _trial("x"), _result("a", 1, 0.0, 99.0)) == CONTINUE
