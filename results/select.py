"""The rules that pick one architecture: ``--select verified | knee | best | best-under C | cheapest-over Q``.

Every rule is written for the search's objectives, whatever they are: the *score* is the first objective (a loss
or an accuracy; better is lower or higher by ``results.pareto.OBJECTIVE_DIRECTIONS``) and the *cost* the second
(GFLOPs by default, or latency or parameters).

- ``verified`` (the default): the choice of ``results.choice``, on paired seeds at the verification fidelity;
  given only the per-config means, as here, it is ``best``.
- ``knee``: the knee of the front (:func:`knee_point`).
- ``best``: the best score; ``best-under C``: the best score at a cost of at most ``C``; ``cheapest-over Q``: the
  cheapest config whose score is at least as good as ``Q`` (an accuracy may be given in percent).

``max-accuracy``, ``max-accuracy-under G`` and ``min-gflops-over A``, the names from when the score was always
accuracy and the cost GFLOPs, are read as ``best``, ``best-under`` and ``cheapest-over``.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"status": ["completed"] * 3, "accuracy": [0.90, 0.92, 0.91],
    ...                    "gflops": [4.0, 4.5, 5.0], "reference": ["baseline", "", ""]})
    >>> select_best(df, ["accuracy", "gflops"], "best-under:4.2").name
    0
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from results.pareto import DEFAULT_OBJECTIVES, OBJECTIVE_DIRECTIONS, completed_rows, pareto_front, to_loss

__all__ = ["DEFAULT_RULE", "RULE_ALIASES", "SELECT_RULES", "SELECT_RULE_FORMS", "VERIFIED_RULE", "knee_front",
           "knee_point", "parse_select_rule", "select_best"]

VERIFIED_RULE = "verified"
SELECT_RULES: tuple[str, ...] = (VERIFIED_RULE, "knee", "best", "best-under", "cheapest-over")
#: Older names, read as the rules they became.
RULE_ALIASES = {"max-accuracy": "best", "max-accuracy-under": "best-under", "min-gflops-over": "cheapest-over"}
DEFAULT_RULE = VERIFIED_RULE  # what a search selects by unless told otherwise
SELECT_RULE_FORMS = (
    "verified | knee | best | best-under:C (at most C in the first cost, e.g. best-under:4.5 GFLOPs) | "
    "cheapest-over:Q (a score at least as good as Q, e.g. cheapest-over:0.9 accuracy or cheapest-over:1.2 loss)"
)


def knee_point(front_df: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> Hashable:
    """Index label of the knee of a front (pass :func:`pareto_front`'s output).

    Each objective is turned into a loss and min-max normalised to [0, 1] over the given rows (a constant
    objective becomes 0), so GFLOPs and accuracy weigh the same whatever their units.

    - 2 objectives: the point farthest from the straight line joining the two extremes (best accuracy, least
      GFLOPs), on the side of the ideal point: where giving up a little of one objective buys the most of the other.
      If no point lies on that side (a straight or concave front), the rule below is used instead.
    - otherwise: the point closest (Euclidean) to the ideal point, the per-objective best, i.e. the origin.

    Ties go to the earlier row, i.e. the cheaper one for a front sorted by GFLOPs.
    """
    objectives = list(objectives)
    # The caller passes a front, so status is not re-checked: a hand-made front without a status column works too.
    rows = completed_rows(front_df.drop(columns="status", errors="ignore"), objectives)
    if rows.empty:
        raise ValueError("knee_point needs at least one row with all objective values")
    if len(rows) == 1:
        return rows.index[0]
    loss = to_loss(rows[objectives].to_numpy(dtype=float), objectives)
    lo, hi = loss.min(axis=0), loss.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = (loss - lo) / span
    closest_to_ideal = int(np.argmin(np.linalg.norm(norm, axis=1)))
    if len(objectives) != 2:
        return rows.index[closest_to_ideal]
    # Extremes: best in objective 0 (ties -> best in 1), and best in objective 1 (ties -> best in 0).
    a = norm[np.lexsort((norm[:, 1], norm[:, 0]))[0]]
    b = norm[np.lexsort((norm[:, 0], norm[:, 1]))[0]]
    chord = b - a
    length = float(np.hypot(*chord))
    if length == 0.0:
        return rows.index[closest_to_ideal]
    # 2-D cross product = signed distance x length; orient it so that the ideal point (origin) is positive.
    cross = chord[0] * (norm[:, 1] - a[1]) - chord[1] * (norm[:, 0] - a[0])
    ideal_side = chord[0] * (0.0 - a[1]) - chord[1] * (0.0 - a[0])
    signed = cross * (1.0 if ideal_side >= 0 else -1.0) / length
    best = int(np.argmax(signed))
    if signed[best] <= 1e-12:
        return rows.index[closest_to_ideal]
    return rows.index[best]


def knee_front(df: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """The front :func:`knee_point` picks from: :func:`~results.pareto.pareto_front` ordered by the cost objectives
    (``objectives[1:]``, cheapest first), so that a tie goes to the cheaper config in the search's own cost, e.g.
    latency (``pareto_front`` orders by GFLOPs)."""
    front = pareto_front(df, objectives)
    costs = list(objectives[1:])
    if not costs or front.empty:
        return front
    ascending = [OBJECTIVE_DIRECTIONS.get(c, "minimize") == "minimize" for c in costs]
    return front.sort_values(costs, ascending=ascending, kind="mergesort")


def parse_select_rule(text: str) -> tuple[str, float | None]:
    """Parse a selection rule (see the module docstring) into its name and threshold.

    The threshold may follow a space, ``:`` or ``=``. Raises ``ValueError`` with the valid forms.

    >>> parse_select_rule("max-accuracy-under:4.5")
    ('best-under', 4.5)
    >>> parse_select_rule("cheapest-over 92.5")
    ('cheapest-over', 92.5)
    """

    def fail(why: str) -> ValueError:
        return ValueError(f"invalid selection rule {text!r} ({why}); valid forms: {SELECT_RULE_FORMS}")

    if not isinstance(text, str):
        raise fail("not a string")
    match = re.fullmatch(r"\s*([a-z][a-z-]*[a-z])\s*(?:[:=\s]\s*(\S+))?\s*", text.strip().lower())
    if match is None:
        raise fail("unrecognised")
    name, arg = match.group(1), match.group(2)
    name = RULE_ALIASES.get(name, name)
    if name not in SELECT_RULES:
        raise fail(f"unknown rule {name!r}")
    if name in (VERIFIED_RULE, "knee", "best"):
        if arg is not None:
            raise fail(f"{name} takes no value")
        return name, None
    if arg is None:
        raise fail(f"{name} needs a value")
    try:
        value = float(arg)
    except ValueError:
        raise fail(f"{arg!r} is not a number") from None
    if not math.isfinite(value):
        raise fail(f"{arg!r} is not a finite number")
    if name == "best-under" and value <= 0:
        raise fail("the cost bound must be positive")
    return name, value


def _score_bound(value: float, score: str) -> float:
    """A ``cheapest-over`` threshold in the score's units: an accuracy above 1 is a percentage."""
    if score == "accuracy":
        value = value / 100.0 if value > 1.0 else value
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"cheapest-over: an accuracy must be in [0, 1] or a percentage in (1, 100], got {value}")
    return value


def select_best(df: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES,
                rule: str = DEFAULT_RULE) -> pd.Series:
    """The completed row chosen by ``rule`` (see the module docstring) from per-config rows; its ``.name`` is the
    index label. ``verified`` reads as ``best`` here (the paired choice needs the seeds: ``results.choice``).

    Score ties go to the cheaper config and cost ties to the better score, then to the earlier trial. Raises
    ``ValueError`` if the rule is invalid or no completed row satisfies it.
    """
    name, value = parse_select_rule(rule)
    objectives = list(objectives)
    if not df.index.is_unique:
        # The chosen row is reported by index label; with duplicate labels that would be ambiguous.
        raise ValueError("select_best needs a frame with a unique index (use df.reset_index(drop=True))")
    score, cost = objectives[0], objectives[1] if len(objectives) > 1 else "gflops"
    needed = objectives if name == "knee" else [score, cost]
    rows = completed_rows(df, needed)
    if rows.empty:
        raise ValueError(f"no completed trial with {', '.join(needed)} to select from (rule {rule!r})")
    if name == "knee":
        front = knee_front(rows, objectives)
        return front.loc[knee_point(front, objectives)].copy()

    sign = 1.0 if OBJECTIVE_DIRECTIONS.get(score, "maximize") == "maximize" else -1.0
    good = sign * pd.to_numeric(rows[score], errors="coerce").to_numpy(dtype=float)  # larger is better
    price = pd.to_numeric(rows[cost], errors="coerce").to_numpy(dtype=float)
    if OBJECTIVE_DIRECTIONS.get(cost, "minimize") == "maximize":
        price = -price
    if name == "best-under":
        assert value is not None
        keep = price <= value
        if not keep.any():
            raise ValueError(f"no completed trial has {cost} <= {value:g} (the cheapest has {price.min():.4g})")
    elif name == "cheapest-over":
        assert value is not None
        bound = sign * _score_bound(value, score)
        keep = good >= bound
        if not keep.any():
            raise ValueError(f"no completed trial has {score} at least as good as {sign * bound:.4g} (the best has "
                             f"{sign * good.max():.4g})")
    else:
        keep = np.ones(len(rows), dtype=bool)
    number = (
        pd.to_numeric(rows["number"], errors="coerce").to_numpy(dtype=float)
        if "number" in rows.columns
        else np.arange(len(rows), dtype=float)
    )
    # np.lexsort sorts by the last key first.
    if name == "cheapest-over":
        order = np.lexsort((number, -good, price))
    else:
        order = np.lexsort((number, price, -good))
    position = next(int(i) for i in order if keep[i])
    return rows.iloc[position].copy()
