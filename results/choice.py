"""The chosen config and the evidence for it: gains over both references with their intervals, and a verdict.

``--select`` picks a row from the per-config means (:func:`results.select.select_best`). A mean is not a
difference, though: the choice is compared with each reference seed by seed (paired, over the seeds both were
trained with; see :mod:`results.replicates`), and stated as a mean gain ± its 95 % interval with a verdict,
*better*, *worse* or *not distinguishable at this fidelity*. Where the rule picked a config that is not
distinguishably better than the plain backbone, and the plain backbone meets the rule too, the plain backbone is
chosen instead: attention that costs FLOPs must earn them by more than the noise. :attr:`Choice.note` says when
that decided the choice.

Once a search has replicates, the rule picks among the replicated configs only (the references and the front's
members the replicate phase could afford, see ``search/replicates.py``): a config with one draw cannot be told
from the noise, so picking it would hand the choice to the plain backbone however well the replicated
candidates did. The note names the single-draw config the rule would otherwise have picked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from results.noise import Interval, verdict
from results.pareto import OBJECTIVE_DIRECTIONS, REFERENCE_LABELS
from results.replicates import SEEDS, config_means, paired_gain
from results.schema import COMPLETED
from results.select import parse_select_rule, select_best

__all__ = ["Choice", "choose", "format_gain"]


@dataclass
class Choice:
    """``best``: the chosen row of the per-config frame; ``gains``: reference name -> (paired gain of the first
    objective, verdict); ``note``: which single draw the rule set aside for a replicated config, and why the plain
    backbone was chosen over the rule's pick, or ""."""

    best: pd.Series
    gains: dict[str, tuple[Interval, str]] = field(default_factory=dict)
    note: str = ""
    rule_pick: pd.Series | None = None


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
    direction = OBJECTIVE_DIRECTIONS.get(objective, "maximize")
    out = {}
    for name in REFERENCE_LABELS:
        ref = _reference_id(means, name)
        if ref is None:
            continue
        diff = Interval(0.0, 0.0, 0) if ref == str(row["trial_id"]) else \
            paired_gain(df, str(row["trial_id"]), ref, objective)
        out[name] = (diff, "same config" if ref == str(row["trial_id"]) else verdict(diff, direction))
    return out


def choose(df: pd.DataFrame, objectives: Sequence[str], rule: str = "knee",
           means: pd.DataFrame | None = None) -> Choice:
    """The config ``rule`` picks from the per-config means of ``df`` (the raw trials frame), unless it is not
    distinguishably better than the plain backbone (see the module docstring). ``ValueError`` if nothing can be
    chosen."""
    objectives = list(objectives)
    means = config_means(df, objectives) if means is None else means
    pick, aside = _pick(means, objectives, rule)
    quality = objectives[0]
    evidence = gains(df, means, pick, quality)
    base = evidence.get("baseline")
    name, _ = parse_select_rule(rule)
    # min-gflops-over picks the cheapest config that reaches the bar: the plain backbone, the cheapest of all,
    # was not picked because it does not reach it.
    if base is None or base[1] in ("better", "same config") or name == "min-gflops-over":
        return Choice(pick, evidence, aside)
    baseline = means[means["trial_id"].astype(str) == _reference_id(means, "baseline")].iloc[0]
    diff, word = base
    measured = "no replicates to measure the noise with" if math.isnan(diff.half) else \
        f"{format_gain(diff, quality)} over it, {diff.n} paired seeds, 95 % interval"
    note = (f"{'Among them, the' if aside else 'The'} {rule} rule picked {pick['trial_id']}, but it is {word} from "
            f"the plain backbone ({measured}); "
            f"the plain backbone is chosen instead: attention must earn its cost by more than the noise.")
    return Choice(baseline, gains(df, means, baseline, quality), " ".join(filter(None, [aside, note])), pick)


def _pick(means: pd.DataFrame, objectives: list[str], rule: str) -> tuple[pd.Series, str]:
    """The rule's pick among the replicated configs where there are any (see the module docstring), and a note
    naming the single-draw config it would have picked among all; among all configs where none is replicated or
    none of the replicated meets the rule."""
    pick = select_best(means, objectives, rule)
    seeds = pd.to_numeric(means[SEEDS], errors="coerce") if SEEDS in means.columns else pd.Series(1, means.index)
    replicated = means[seeds >= 2]
    if replicated.empty or seeds[pick.name] >= 2:
        return pick, ""
    try:
        among = select_best(replicated, objectives, rule)
    except ValueError:
        return pick, ""
    return among, (f"The {rule} rule picks among the {len(replicated)} configs trained with replicates; over all "
                   f"configs it would have picked {pick['trial_id']}, which has a single draw that cannot be told "
                   f"from the seed noise.")
