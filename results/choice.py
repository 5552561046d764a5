"""The chosen config and the evidence for it: gains over both references with their intervals, and a verdict.

``--select`` picks a row from the per-config means (:func:`results.select.select_best`). A mean is not a
difference, though: the choice is compared with each reference seed by seed (paired, over the seeds both were
trained with; see :mod:`results.config_stats`), and stated as a mean gain ± its 95 % interval with a verdict,
*better*, *worse* or *not distinguishable at this fidelity*. Where the rule picked a config that is not
distinguishably better than the plain backbone, and the plain backbone meets the rule too, the plain backbone is
chosen instead: attention that costs FLOPs must earn them by more than the noise. :attr:`Choice.note` says when
that decided the choice.

Once a search has replicates, the rule picks among the replicated configs only (the references and the front's
members the replicate phase could afford, see ``search/replicate_phase.py``): a config with one draw cannot be told
from the noise, so picking it would hand the choice to the plain backbone however well the replicated
candidates did. The note names the single-draw config the rule would otherwise have picked, and says when the
knee was a tie: the knee of a two-point front is equally far from both ends, and goes to the cheaper one (in the
first cost objective).

Whatever the rule picks, :attr:`Choice.finalists` compares every replicated config with the plain backbone seed by
seed, so that a config the rule passed over but that is distinguishably better is not hidden
(:func:`better_than_plain` says which).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from results.config_stats import config_means, paired_gain
from results.noise import Interval, verdict
from results.pareto import OBJECTIVE_DIRECTIONS, REFERENCE_LABELS, pareto_front
from results.schema import COMPLETED, SEEDS
from results.select import DEFAULT_RULE, knee_front, parse_select_rule, select_best

__all__ = ["Choice", "Finalist", "better_than_plain", "choose", "compare_finalists", "format_gain"]


@dataclass(frozen=True)
class Finalist:
    """A config trained with more than one seed: its per-config ``row``, its paired ``gain`` over the plain backbone
    in the first objective with the ``verdict``, and whether it is ``on_front``: on the front of the replicated
    configs' means."""

    row: pd.Series
    gain: Interval
    verdict: str
    on_front: bool


@dataclass
class Choice:
    """``best``: the chosen row of the per-config frame; ``gains``: reference name -> (paired gain of the first
    objective, verdict); ``note``: which single draw the rule set aside for a replicated config, and why the plain
    backbone was chosen over the rule's pick, or ""."""

    best: pd.Series
    gains: dict[str, tuple[Interval, str]] = field(default_factory=dict)
    note: str = ""
    finalists: list[Finalist] = field(default_factory=list)


def format_gain(diff: Interval, objective: str) -> str:
    """``+0.40 ± 1.10 accuracy points`` (accuracy in points) or ``-0.0123 ± 0.0100 val_loss``."""
    if objective == "accuracy":
        return f"{diff.format(100.0, 2)} accuracy points"
    return f"{diff.format(1.0, 4)} {objective}"


def _reference_id(means: pd.DataFrame, name: str) -> str | None:
    rows = means[(means["reference"].astype(str) == name) & (means["status"] == COMPLETED)]
    return str(rows["trial_id"].iloc[0]) if len(rows) else None


def gains(df: pd.DataFrame, means: pd.DataFrame, row: pd.Series, objective: str) -> dict[str, tuple[Interval, str]]:
    """Paired gain of ``row``'s config over each completed reference in ``objective``, with its verdict."""
    out = {}
    for name in REFERENCE_LABELS:
        ref = _reference_id(means, name)
        if ref is not None:
            out[name] = _versus(df, str(row["trial_id"]), ref, objective)
    return out


def _versus(df: pd.DataFrame, trial: str, other: str, objective: str) -> tuple[Interval, str]:
    """Paired gain of config ``trial`` over config ``other`` in ``objective`` and its verdict."""
    if trial == other:
        return Interval(0.0, 0.0, 0), "same config"
    diff = paired_gain(df, trial, other, objective)
    return diff, verdict(diff, OBJECTIVE_DIRECTIONS.get(objective, "maximize"))


def choose(df: pd.DataFrame, objectives: Sequence[str], rule: str = DEFAULT_RULE,
           means: pd.DataFrame | None = None) -> Choice:
    """The config ``rule`` picks from the per-config means of ``df`` (the raw trials frame), unless it is not
    distinguishably better than the plain backbone (see the module docstring). ``ValueError`` if nothing can be
    chosen."""
    objectives = list(objectives)
    means = config_means(df, objectives) if means is None else means
    pick, aside, pool = _pick(means, objectives, rule)
    quality = objectives[0]
    evidence = gains(df, means, pick, quality)
    base = evidence.get("baseline")
    name, _ = parse_select_rule(rule)
    tie = _knee_tie(pool, objectives, str(pick["trial_id"])) if name == "knee" else ""
    compared = compare_finalists(df, means, objectives)
    # min-gflops-over picks the cheapest config that reaches the bar: the plain backbone, the cheapest of all,
    # was not picked because it does not reach it.
    if base is None or base[1] in ("better", "same config") or name == "min-gflops-over":
        return Choice(pick, evidence, " ".join(filter(None, [aside, tie])), finalists=compared)
    baseline = means[means["trial_id"].astype(str) == _reference_id(means, "baseline")].iloc[0]
    diff, word = base
    measured = "no replicates to measure the noise with" if math.isnan(diff.half) else \
        f"{format_gain(diff, quality)} over it, {diff.n} paired seeds, 95 % interval"
    lead = "Among them, the" if aside and not tie else "The"
    relation = "worse than" if word == "worse" else f"{word} from"
    note = (f"{lead} {rule} rule picked {pick['trial_id']}, but it is {relation} the plain backbone ({measured}); "
            f"the plain backbone is chosen instead: attention must earn its cost by more than the noise.")
    return Choice(baseline, gains(df, means, baseline, quality), " ".join(filter(None, [aside, tie, note])),
                  finalists=compared)


def compare_finalists(df: pd.DataFrame, means: pd.DataFrame, objectives: Sequence[str]) -> list[Finalist]:
    """Every completed config with 2 or more seeds, by GFLOPs, against the plain backbone (see :class:`Finalist`);
    empty without replicates or without a completed plain backbone."""
    objectives = list(objectives)
    base = _reference_id(means, "baseline")
    replicated = _replicated(means)
    replicated = replicated[replicated["status"] == COMPLETED]
    if base is None or replicated.empty:
        return []
    front = set(pareto_front(replicated, objectives)["trial_id"].astype(str))
    out = []
    for _, row in replicated.sort_values("gflops", kind="mergesort").iterrows():
        trial = str(row["trial_id"])
        out.append(Finalist(row, *_versus(df, trial, base, objectives[0]), on_front=trial in front))
    return out


def better_than_plain(choice: Choice, objective: str) -> str:
    """One sentence naming the replicated configs distinguishably better than the plain backbone in ``objective``,
    with their paired gain and FLOPs over it; "" without replicates."""
    if not choice.finalists:
        return ""
    base = next((f.row for f in choice.finalists if f.verdict == "same config"), None)
    better = [f for f in choice.finalists if f.verdict == "better"]
    if base is None or not better:
        others = sum(f.verdict != "same config" for f in choice.finalists)
        return (f"None of the {others} other replicated configs is distinguishably better than the plain backbone "
                f"in {objective}.")
    parts = []
    for f in better:
        ref = str(f.row.get("reference", "") or "")
        name = (f"the {REFERENCE_LABELS[ref]}, " if ref in REFERENCE_LABELS else "") + str(f.row["trial_id"])
        over = 100.0 * (float(f.row["gflops"]) / float(base["gflops"]) - 1.0)
        parts.append(f"{name}: {format_gain(f.gain, objective)} at {over:+.2f} % FLOPs")
    chosen = str(choice.best["trial_id"])
    tail = "" if any(str(f.row["trial_id"]) == chosen for f in better) else \
        "; the rule did not choose any of them"
    return (f"Distinguishably better than the plain backbone (paired, 95 % interval): {'; '.join(parts)}{tail}.")


def _knee_tie(pool: pd.DataFrame, objectives: list[str], picked: str) -> str:
    """The note for a knee that was a tie: a front of two points under two objectives, whose normalised ends are
    equally far from the ideal point (see :func:`results.select.knee_point`)."""
    front = knee_front(pool, objectives)
    if len(front) != 2 or len(objectives) != 2:
        return ""
    a, b = front["trial_id"].astype(str)
    if picked != a:
        return ""
    cost = "GFLOPs" if objectives[1] == "gflops" else objectives[1]
    return (f"The front it picks from has two points, {a} and {b}; its knee is a tie between them, which goes to "
            f"the cheaper in {cost}, {a}.")


def _replicated(means: pd.DataFrame) -> pd.DataFrame:
    """The rows of the per-config frame with 2 or more completed seeds (none where it has no seed count)."""
    if SEEDS not in means.columns:
        return means.iloc[:0]
    return means[pd.to_numeric(means[SEEDS], errors="coerce").fillna(0) >= 2]


def _pick(means: pd.DataFrame, objectives: list[str], rule: str) -> tuple[pd.Series, str, pd.DataFrame]:
    """The rule's pick among the replicated configs where there are any (see the module docstring), a note naming
    the single-draw config it would have picked among all, and the configs it picked from; among all configs where
    none is replicated or none of the replicated meets the rule."""
    pick = select_best(means, objectives, rule)
    replicated = _replicated(means)
    if replicated.empty or pick.name in replicated.index:
        return pick, "", means
    try:
        among = select_best(replicated, objectives, rule)
    except ValueError:
        return pick, "", means
    return among, (f"The {rule} rule picks among the {len(replicated)} configs trained with replicates; over all "
                   f"configs it would have picked {pick['trial_id']}, which has a single draw that cannot be told "
                   f"from the seed noise."), replicated
