"""Tests for results.pareto: dominance and hypervolume checked against Optuna itself, knee and selection rules."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna._hypervolume import compute_hypervolume

from results import pareto
from results.pareto import (
    OBJECTIVE_DIRECTIONS,
    hypervolume,
    hypervolume_history,
    pareto_front,
    pareto_mask,
    reference_point,
)
from results.select import knee_point, parse_select_rule, select_best

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _optuna_front(values: np.ndarray, directions: list[str]) -> set[int]:
    study = optuna.create_study(directions=directions)
    study.add_trials([optuna.trial.create_trial(values=[float(v) for v in row]) for row in values])
    return {t.number for t in study.best_trials}


def _points_with_ties(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    # Small integer grid -> many equal coordinates; then exact duplicates of some rows, including front rows.
    pts = rng.integers(0, 6, size=(n, k)).astype(float)
    dup = pts[rng.integers(0, n, size=n // 4)]
    return rng.permutation(np.vstack([pts, dup]))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_pareto_mask_matches_optuna_best_trials(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = _points_with_ties(rng, 40, k)
    directions = ["maximize", "minimize", "minimize"][:k]
    mask = pareto_mask(values, directions)
    assert set(np.flatnonzero(mask)) == _optuna_front(values, directions)
    # Identical points are all kept (Optuna's best_trials semantics), so the front has duplicates here.
    front = values[mask]
    assert len(np.unique(front, axis=0)) <= len(front)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_numpy_fallback_front_matches_optuna(k: int) -> None:
    rng = np.random.default_rng(k)
    loss = _points_with_ties(rng, 60, k)
    assert set(np.flatnonzero(pareto._is_pareto_front(loss))) == _optuna_front(loss, ["minimize"] * k)


def test_pareto_mask_duplicates_kept_and_nan_excluded() -> None:
    values = np.array([[0.9, 4.0], [0.9, 4.0], [0.8, 5.0], [np.nan, 1.0], [0.95, 6.0]])
    assert pareto_mask(values, ["maximize", "minimize"]).tolist() == [True, True, False, False, True]
    assert pareto_mask(np.empty((0, 2)), ["maximize", "minimize"]).tolist() == []
    with pytest.raises(ValueError, match="columns"):
        pareto_mask(values, ["maximize"])
    with pytest.raises(ValueError, match="direction"):
        pareto_mask(values, ["up", "down"])


def _frame() -> pd.DataFrame:
    # number, status, accuracy, gflops, params, reference
    rows = [
        (0, "completed", 0.80, 4.0, 100, "baseline"),
        (1, "completed", 0.85, 4.4, 120, "paper_default"),
        (2, "completed", 0.84, 4.1, 110, ""),
        (3, "stopped", 0.99, 3.0, 90, ""),  # would dominate everything, but is not comparable
        (4, "failed", np.nan, 2.0, 80, ""),
        (5, "completed", 0.83, 4.2, 105, ""),  # dominated by #2
        (6, "completed", 0.84, 4.1, 110, ""),  # duplicate of #2
        (7, "completed", 0.86, 5.0, 130, ""),
    ]
    df = pd.DataFrame(rows, columns=["number", "status", "accuracy", "gflops", "params", "reference"])
    df.insert(0, "trial_id", [f"t{n}" for n in df["number"]])
    return df


def test_pareto_front_only_completed_sorted_by_gflops() -> None:
    df = _frame()
    front = pareto_front(df, ["accuracy", "gflops"])
    assert front["number"].tolist() == [0, 2, 6, 1, 7]
    assert set(front["status"]) == {"completed"}
    assert front["gflops"].is_monotonic_increasing
    # With params as a third objective nothing new enters here, and stopped/failed still never do.
    front3 = pareto_front(df, ["accuracy", "gflops", "params"])
    assert 3 not in front3["number"].tolist() and 4 not in front3["number"].tolist()
    assert pareto_front(df[df["status"] != "completed"], ["accuracy", "gflops"]).empty


def test_hypervolume_hand_computed_2d() -> None:
    # Loss points (error, gflops): (0.1, 3), (0.2, 2), (0.3, 1); reference (1, 4).
    # Slices along error: [0.1,0.2) x 1 + [0.2,0.3) x 2 + [0.3,1.0] x 3 = 0.1 + 0.2 + 2.1 = 2.4.
    pts = np.array([[0.9, 3.0], [0.8, 2.0], [0.7, 1.0], [0.75, 2.5], [0.99, 5.0]])  # 4th dominated, 5th outside
    ref = {"error": 1.0, "gflops": 4.0}
    assert hypervolume(pts, ["accuracy", "gflops"], ref) == pytest.approx(2.4)
    assert hypervolume(pts, ["accuracy", "gflops"], [1.0, 4.0]) == pytest.approx(2.4)
    assert pareto._hypervolume_numpy(np.array([[0.1, 3.0], [0.2, 2.0], [0.3, 1.0]]), np.array([1.0, 4.0])) == (
        pytest.approx(2.4)
    )
    assert hypervolume(np.empty((0, 2)), ["accuracy", "gflops"], ref) == 0.0


@pytest.mark.parametrize("objectives", [["accuracy", "gflops"], ["accuracy", "gflops", "params"]])
def test_hypervolume_matches_optuna_and_fallback(objectives: list[str]) -> None:
    rng = np.random.default_rng(7)
    n = 50
    raw = np.column_stack([rng.uniform(0.5, 1.0, n), rng.uniform(1, 5, n), rng.uniform(10, 30, n)])[
        :, : len(objectives)
    ]
    raw = np.vstack([raw, raw[:5]])  # duplicates must not change anything
    ref_arr = np.array([1.0, 6.0, 40.0])[: len(objectives)]
    loss = raw.copy()
    loss[:, 0] = 1.0 - loss[:, 0]
    expected = compute_hypervolume(loss, ref_arr)
    assert hypervolume(raw, objectives, ref_arr) == pytest.approx(expected, rel=1e-12)
    assert pareto._hypervolume_numpy(loss, ref_arr) == pytest.approx(expected, rel=1e-9)


def test_reference_point_convention() -> None:
    df = _frame()
    ref = reference_point(df, ["accuracy", "gflops", "params"])
    # error 1.0; costs: 1.1 x the larger of baseline / paper default, not of all trials (#7 has 5.0 GFLOPs).
    assert ref == {"error": 1.0, "gflops": pytest.approx(4.84), "params": pytest.approx(132.0)}
    no_refs = df.assign(reference="")
    assert reference_point(no_refs, ["accuracy", "gflops"])["gflops"] == pytest.approx(5.5)  # completed max x 1.1
    # A failed paper-default row still fixes the cost bound: FLOPs do not depend on training.
    failed_ref = df.assign(status=np.where(df["reference"] == "paper_default", "failed", df["status"]))
    assert reference_point(failed_ref, ["accuracy", "gflops"])["gflops"] == pytest.approx(4.84)
    assert hypervolume(df, ["accuracy", "gflops"]) == hypervolume(df, ["accuracy", "gflops"], ref)
    with pytest.raises(KeyError, match="reference point lacks"):
        hypervolume(df, ["accuracy", "gflops", "params"], {"error": 1.0, "gflops": 5.0})


def test_hypervolume_ignores_stopped_and_failed() -> None:
    df = _frame()
    ref = reference_point(df)
    completed_only = df[df["status"] == "completed"]
    assert hypervolume(df, reference_point=ref) == pytest.approx(hypervolume(completed_only, reference_point=ref))


def test_hypervolume_history() -> None:
    df = _frame().sample(frac=1.0, random_state=0)  # row order must not matter, only `number`
    ref = reference_point(df)
    hist = hypervolume_history(df, ["accuracy", "gflops"], ref)
    assert hist.index.tolist() == list(range(8))
    assert np.all(np.diff(hist.to_numpy()) >= -1e-15)
    assert hist.iloc[-1] == pytest.approx(hypervolume(df, ["accuracy", "gflops"], ref))
    # The stopped (#3) and failed (#4) trials do not move it; the dominated #5 and duplicate #6 neither.
    assert hist[3] == hist[2] and hist[4] == hist[2] and hist[5] == hist[2] and hist[6] == hist[2]
    # After the baseline alone: error 0.20 .. 1.0 by 4.0 .. 4.84 GFLOPs.
    assert hist[0] == pytest.approx((1.0 - 0.20) * (4.84 - 4.0))


def test_no_completed_trial_means_zero_volume() -> None:
    df = _frame().assign(status="failed", reference="")
    assert hypervolume(df, ["accuracy", "gflops"]) == 0.0
    hist = hypervolume_history(df, ["accuracy", "gflops"])
    assert hist.index.tolist() == list(range(8)) and (hist == 0.0).all()
    with pytest.raises(ValueError, match="cannot set a reference point"):
        reference_point(df, ["accuracy", "gflops"])


def test_knee_point_convex_front() -> None:
    front = pd.DataFrame({"accuracy": [0.50, 0.80, 0.88, 0.90, 0.91], "gflops": [1.0, 2.0, 3.0, 4.0, 5.0]})
    assert knee_point(front, ["accuracy", "gflops"]) == 1
    # Unit-free: rescaling GFLOPs does not move the knee.
    assert knee_point(front.assign(gflops=front["gflops"] * 1000), ["accuracy", "gflops"]) == 1
    assert knee_point(front.iloc[[2]], ["accuracy", "gflops"]) == 2


def test_knee_point_concave_or_3d_uses_closest_to_ideal() -> None:
    # Points on a straight line: no point bulges toward the ideal, so the closest to the ideal wins (the middle).
    line = pd.DataFrame({"accuracy": [0.6, 0.7, 0.8], "gflops": [1.0, 2.0, 3.0]})
    assert knee_point(line, ["accuracy", "gflops"]) == 1
    three = pd.DataFrame({"accuracy": [0.9, 0.7, 0.85, 0.6], "gflops": [5.0, 1.0, 2.0, 1.5], "params": [10, 30, 12, 5]})
    # Normalised losses: #2 is (0.17, 0.25, 0.28), the only one not at the worst end of some objective.
    assert knee_point(three, ["accuracy", "gflops", "params"]) == 2
    with pytest.raises(ValueError):
        knee_point(line.iloc[:0], ["accuracy", "gflops"])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("knee", None),
        ("best", 7),
        ("verified", 7),  # from means alone, the verified rule is best (results.choice pairs the seeds)
        ("best-under:4.2", 2),  # #2 and #6 tie; the earlier trial wins
        ("best-under 4.05", 0),
        ("cheapest-over:0.845", 1),
        ("cheapest-over 84.5", 1),  # an accuracy in percent
        ("cheapest-over:0.84", 2),
        ("cheapest-over=0", 0),
        # the older names read as the rules they became
        ("max-accuracy", 7),
        ("max-accuracy-under:4.2", 2),
        ("min-gflops-over 84.5", 1),
    ],
)
def test_select_best_rules(rule: str, expected: int | None) -> None:
    df = _frame()
    row = select_best(df, ["accuracy", "gflops"], rule)
    assert row["status"] == "completed"
    if expected is None:
        front = pareto_front(df, ["accuracy", "gflops"])
        assert row.name == knee_point(front, ["accuracy", "gflops"])
        assert row.name in front.index
    else:
        assert row["number"] == expected


def test_the_rules_are_written_for_a_loss_and_the_first_cost_objective() -> None:
    df = pd.DataFrame({"status": ["completed"] * 4, "loss": [0.50, 0.40, 0.45, 0.40],
                       "latency_ms": [10.0, 14.0, 12.0, 13.0], "gflops": [4.0, 3.0, 5.0, 6.0], "number": range(4)})
    objectives = ["loss", "latency_ms"]
    assert select_best(df, objectives, "best")["number"] == 3  # the lowest loss; of the tie, the lower latency
    assert select_best(df, objectives, "best-under:12.5")["number"] == 2  # a bound in the first cost: latency
    assert select_best(df, objectives, "cheapest-over:0.45")["number"] == 2  # a loss at most 0.45, least latency
    with pytest.raises(ValueError, match=r"no completed trial has loss at least as good as 0.3"):
        select_best(df, objectives, "cheapest-over:0.3")


def test_select_best_errors() -> None:
    df = _frame()
    with pytest.raises(ValueError, match=r"no completed trial has gflops <= 3"):
        select_best(df, ["accuracy", "gflops"], "best-under:3")  # the stopped #3 would fit, but is stopped
    with pytest.raises(ValueError, match=r"no completed trial has accuracy at least as good as 0.9"):
        select_best(df, ["accuracy", "gflops"], "cheapest-over:90")
    with pytest.raises(ValueError, match=r"an accuracy must be in \[0, 1\] or a percentage"):
        select_best(df, ["accuracy", "gflops"], "cheapest-over:150")
    with pytest.raises(ValueError, match="no completed trial"):
        select_best(df[df["status"] != "completed"], ["accuracy", "gflops"], "knee")
    with pytest.raises(ValueError, match="valid forms"):
        select_best(df, ["accuracy", "gflops"], "fastest")
    with pytest.raises(ValueError, match="unique index"):
        select_best(pd.concat([df, df]), ["accuracy", "gflops"], "best")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("knee", ("knee", None)),
        ("verified", ("verified", None)),
        ("  BEST ", ("best", None)),
        ("  MAX-ACCURACY ", ("best", None)),
        ("best-under 4.5", ("best-under", 4.5)),
        ("max-accuracy-under:4.5", ("best-under", 4.5)),
        ("cheapest-over 0.9", ("cheapest-over", 0.9)),
        ("min-gflops-over:92.5", ("cheapest-over", 92.5)),  # in the score's units: select_best reads percent
        ("cheapest-over=-0.1", ("cheapest-over", -0.1)),  # a score may be negative
    ],
)
def test_parse_select_rule(text: str, expected: tuple[str, float | None]) -> None:
    name, value = parse_select_rule(text)
    assert name == expected[0]
    assert value == (pytest.approx(expected[1]) if expected[1] is not None else None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fastest",
        "knee:3",
        "verified 2",
        "best 1",
        "best-under",
        "best-under:abc",
        "max-accuracy-under:-1",
        "best-under:nan",
        "cheapest-over",
        "best-under 4.5 extra",
    ],
)
def test_parse_select_rule_errors(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_select_rule(text)
    message = str(info.value)
    assert "\n" not in message
    for form in ("verified", "knee", "best", "best-under:C", "cheapest-over:Q"):
        assert form in message


def test_objective_directions() -> None:
    assert OBJECTIVE_DIRECTIONS == {
        "accuracy": "maximize",
        "val_loss": "minimize",
        "loss": "minimize",
        "tse": "minimize",
        "tse_ema": "minimize",
        "gflops": "minimize",
        "params": "minimize",
        "latency_ms": "minimize",
    }
    assert math.isfinite(hypervolume(_frame(), ["accuracy", "gflops", "params"]))
