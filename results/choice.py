"""The chosen config and the evidence for it, on the best evidence the search has.

The evidence is, in order of preference: the **verification runs** (the finalists trained again at a higher
fidelity with paired seeds, ``search/finalists.py``), else the **replicates** (the finalists again at the proxy's
fidelity), else the **single draws** of the search. Every comparison is paired over the seeds both configs were
trained with at that fidelity (:func:`results.config_stats.paired_gain`, its seed noise estimated over every
config trained under the same seeds) and stated as a mean gain ± its 95 % interval with a verdict: *better*,
*worse* or *not distinguishable*.

The default rule, ``verified``, recommends what the evidence shows:

1. the configs *tied with the best*: not distinguishable (paired, 95 %) from the config with the best mean score;
2. among those, the cheapest (in the search's first cost objective) that is distinguishably *better than the plain
   backbone*; if none of them is, the best-scoring config that is;
3. the plain backbone only when no config is distinguishably better than it; :attr:`Choice.answer` then names the
   best candidate and its gain.

A knee of the proxy's front decides nothing here. The other rules (``knee``, ``best``, ``best-under``,
``cheapest-over``; ``results.select``) pick from the means of the same evidence; where their pick is not
distinguishably better than the plain backbone and the plain backbone meets the rule too, the plain backbone is
chosen instead, and :attr:`Choice.note` says so.

:attr:`Choice.finalists` lists every config of the evidence against the plain backbone, with the proxy's claim
beside the verified result and whether the claim held, so that no config distinguishably better is hidden.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from results.config_stats import config_means, is_verified, paired_in, seed_table
from results.noise import Interval, paired_words, verdict
from results.pareto import OBJECTIVE_DIRECTIONS, REFERENCE_LABELS, pareto_front
from results.schema import COMPLETED, CONFIG_JSON, SEEDS
from results.select import DEFAULT_RULE, VERIFIED_RULE, parse_select_rule, select_best
from space import ArchConfig

__all__ = ["Choice", "Finalist", "better_than_plain", "choose", "format_gain", "placement"]

BETTER, WORSE, TIED, SAME = "better", "worse", "not distinguishable", "same config"
#: Where the evidence comes from (:attr:`Choice.evidence`).
VERIFIED, REPLICATED, SINGLE = "verified", "replicated", "single draws"


@dataclass(frozen=True)
class Finalist:
    """A config of the evidence: its per-config ``row`` (means at the evidence's fidelity), its paired ``gain``
    over the plain backbone in the first objective with the ``verdict``; the proxy's ``claim`` against the plain
    backbone (paired over the proxy's seeds; one draw's difference, without an interval, where it has one seed)
    with its verdict (a single draw's sign), whether the claim ``held`` (the same verdict at both fidelities;
    None without verification), whether it is ``tied_best`` (not distinguishable from the best mean) and
    ``on_front`` (on the front of the evidence's means)."""

    row: pd.Series
    gain: Interval
    verdict: str
    on_front: bool
    claim: Interval | None = None  # in the proxy's score (Choice.proxy_score)
    claim_verdict: str = ""
    held: bool | None = None
    tied_best: bool = False


@dataclass
class Choice:
    """``best``: the chosen row (means at the evidence's fidelity); ``gains``: reference name -> (paired gain of the
    first objective, verdict); ``answer``: one sentence a user can act on; ``note``: why the rule's pick was set
    aside, or ""; ``evidence``: :data:`VERIFIED`, :data:`REPLICATED` or :data:`SINGLE`."""

    best: pd.Series
    gains: dict[str, tuple[Interval, str]] = field(default_factory=dict)
    note: str = ""
    finalists: list[Finalist] = field(default_factory=list)
    answer: str = ""
    evidence: str = SINGLE
    score: str = "accuracy"  # what the gains are in: the verification's score with verification, else the proxy's
    proxy_score: str = "accuracy"  # what the proxy's claims are in


def format_gain(diff: Interval, objective: str) -> str:
    """``+0.40 ± 1.10 accuracy points`` (accuracy in points) or ``-0.0123 ± 0.0100 val_loss``."""
    if objective == "accuracy":
        return f"{diff.format(100.0, 2)} accuracy points"
    return f"{diff.format(1.0, 4)} {objective}"


def placement(row: pd.Series) -> str:
    """Which attention goes where, in words: ``"scsa@mid/all g4 k3-5-7-9 w7 h1 sigmoid avg in stages 3, 4"``,
    or ``"no attention (the plain backbone)"``."""
    arch = ArchConfig.from_dict(json.loads(row[CONFIG_JSON]))
    groups: dict[str, list[int]] = {}
    for i, stage in enumerate(arch.stages, start=1):
        if stage.attn != "none":
            groups.setdefault(stage.describe(), []).append(i)
    if not groups:
        return "no attention (the plain backbone)"
    return "; ".join(f"{what} in stage{'s' if len(st) > 1 else ''} {', '.join(map(str, st))}"
                     for what, st in groups.items())


def _reference_id(means: pd.DataFrame, name: str) -> str | None:
    rows = means[(means["reference"].astype(str) == name) & (means["status"] == COMPLETED)]
    return str(rows["trial_id"].iloc[0]) if len(rows) else None


def _direction(objective: str) -> str:
    return OBJECTIVE_DIRECTIONS.get(objective, "maximize")


class _Seeds:
    """The seed tables of the proxy's score and of the verification's, pivoted once for every comparison."""

    def __init__(self, df: pd.DataFrame, proxy_score: str, verify_score: str) -> None:
        self.score = {False: proxy_score, True: verify_score}
        self.tables = {verified: seed_table(df, score, verified) for verified, score in self.score.items()}

    def versus(self, trial: str, other: str, verified: bool) -> tuple[Interval, str]:
        """Paired gain of config ``trial`` over config ``other`` (in the score of that fidelity) and its verdict."""
        if trial == other:
            return Interval(0.0, 0.0, 0), SAME
        diff = paired_in(self.tables[verified], trial, other)
        return diff, verdict(diff, _direction(self.score[verified]))


def _claim(seeds: _Seeds, trial: str, base: str) -> tuple[Interval, str]:
    """The proxy's claim against the plain backbone: the paired verdict where the proxy has seeds to pair, else
    the sign of the one draw's difference."""
    objective = seeds.score[False]
    diff, word = seeds.versus(trial, base, verified=False)
    if word == TIED and diff.n == 1 and math.isfinite(diff.mean) and diff.mean != 0.0:
        up = diff.mean > 0
        word = BETTER if up == (_direction(objective) == "maximize") else WORSE
    return diff, word


def _evidence(df: pd.DataFrame, means: pd.DataFrame, objectives: list[str]) -> tuple[pd.DataFrame, str]:
    """The per-config rows the choice is made among, and where they come from (see the module docstring)."""
    if (is_verified(df) & (df["status"] == COMPLETED)).any():
        return config_means(df, objectives, verified=True), VERIFIED
    replicated = _replicated(means)
    replicated = replicated[replicated["status"] == COMPLETED]
    if len(replicated):
        return replicated, REPLICATED
    return means, SINGLE


def _replicated(means: pd.DataFrame) -> pd.DataFrame:
    """The rows of the per-config frame with 2 or more completed seeds (none where it has no seed count)."""
    if SEEDS not in means.columns:
        return means.iloc[:0]
    return means[pd.to_numeric(means[SEEDS], errors="coerce").fillna(0) >= 2]


def choose(df: pd.DataFrame, objectives: Sequence[str], rule: str = DEFAULT_RULE, means: pd.DataFrame | None = None,
           fidelity: str = "the verification fidelity", verify_score: str | None = None) -> Choice:
    """The config ``rule`` picks on the best evidence in ``df`` (the raw trials frame; see the module docstring).
    ``means``: the proxy's per-config means, if computed already; ``fidelity``: the verification fidelity in
    words, for the answer; ``verify_score``: what ranks the verification runs (the verification fidelity's score;
    None: the first objective). ``ValueError`` if nothing can be chosen."""
    objectives = list(objectives)
    means = config_means(df, objectives) if means is None else means
    proxy_score, verify_score = objectives[0], verify_score or objectives[0]
    pool, evidence = _evidence(df, means, [verify_score, *objectives[1:]])
    verified = evidence == VERIFIED
    # the choice is made in the evidence's score: the verification's where there is verification
    objectives = [verify_score if verified else proxy_score, *objectives[1:]]
    pool = pool[pool["status"] == COMPLETED]
    if pool.empty:
        raise ValueError("no completed config to choose from")
    pool = pool.reset_index(drop=True)
    quality = objectives[0]
    seeds = _Seeds(df, proxy_score, verify_score)
    base = _reference_id(pool, "baseline")
    finalists = _finalists(seeds, pool, objectives, base, verified)
    name, _ = parse_select_rule(rule)
    if name == VERIFIED_RULE:
        pick, note = _recommend(pool, objectives, base, finalists)
    else:
        pick, note = _by_rule(seeds, pool, objectives, rule, base, verified)
    where = {VERIFIED: f"verified at {fidelity}", REPLICATED: "at the proxy's fidelity",
             SINGLE: "at the proxy's fidelity, one seed each"}[evidence]
    answer = _answer(pick, pool, objectives, base, finalists, where, verified)
    gains = {ref: seeds.versus(str(pick["trial_id"]), rid, verified)
             for ref in REFERENCE_LABELS if (rid := _reference_id(pool, ref)) is not None}
    # single draws compare nothing: no table of every config against the plain backbone
    shown = [] if evidence == SINGLE else finalists
    return Choice(pick, gains, note, shown, answer, evidence, quality, proxy_score)


def _finalists(seeds: _Seeds, pool: pd.DataFrame, objectives: list[str], base: str | None,
               verified: bool) -> list[Finalist]:
    """Every config of the evidence against the plain backbone, by cost (empty without a plain backbone in it)."""
    if base is None:
        return []
    quality = objectives[0]
    sign = 1.0 if _direction(quality) == "maximize" else -1.0
    best_id = str(pool.loc[(sign * pd.to_numeric(pool[quality], errors="coerce")).idxmax(), "trial_id"])
    front = set(pareto_front(pool, objectives)["trial_id"].astype(str))
    cost = objectives[1] if len(objectives) > 1 else "gflops"
    out = []
    for _, row in pool.sort_values(cost, kind="mergesort").iterrows():
        trial = str(row["trial_id"])
        gain, word = seeds.versus(trial, base, verified)
        claim, claim_word, held = None, "", None
        if verified:
            claim, claim_word = _claim(seeds, trial, base)
            held = None if word == SAME else claim_word == word
        _, to_best = seeds.versus(trial, best_id, verified)
        out.append(Finalist(row, gain, word, trial in front, claim, claim_word, held,
                            tied_best=to_best in (SAME, TIED)))
    return out


def _recommend(pool: pd.DataFrame, objectives: list[str], base: str | None,
               finalists: list[Finalist]) -> tuple[pd.Series, str]:
    """The ``verified`` rule (module docstring): the chosen row and a note."""
    quality = objectives[0]
    if base is None:
        pick = select_best(pool, objectives, "best")
        return pick, ("The plain backbone is not among the configs compared, so no gain over it could be measured; "
                      f"the best {quality} is chosen.")
    better = [f for f in finalists if f.verdict == BETTER]
    tied = [f for f in better if f.tied_best]
    if tied:
        cost = objectives[1] if len(objectives) > 1 else "gflops"
        pick = min(tied, key=lambda f: (float(f.row[cost]), -_signed(f.row, quality))).row
        return pick, ""
    if better:
        pick = max(better, key=lambda f: _signed(f.row, quality)).row
        return pick, ("No config tied with the best mean is distinguishably better than the plain backbone; of those "
                      "that are, the best-scoring is chosen.")
    return pool[pool["trial_id"].astype(str) == base].iloc[0], ""


def _signed(row: pd.Series, objective: str) -> float:
    value = float(row[objective])
    return value if _direction(objective) == "maximize" else -value


def _by_rule(seeds: _Seeds, pool: pd.DataFrame, objectives: list[str], rule: str, base: str | None,
             verified: bool) -> tuple[pd.Series, str]:
    """A rule of ``results.select`` on the evidence's means; the plain backbone instead of a pick that is not
    distinguishably better than it (where the plain backbone meets the rule too)."""
    pick = select_best(pool, objectives, rule)
    name, _ = parse_select_rule(rule)
    if base is None or str(pick["trial_id"]) == base or name == "cheapest-over":
        # cheapest-over picks the cheapest config that reaches the bar: the plain backbone, the cheapest of all,
        # was not picked because it does not reach it.
        return pick, ""
    diff, word = seeds.versus(str(pick["trial_id"]), base, verified)
    if word == BETTER:
        return pick, ""
    measured = "one draw each cannot be told from the seed noise" if math.isnan(diff.half) else \
        f"{format_gain(diff, objectives[0])} over it, {paired_words(diff)}, 95 % interval"
    relation = "worse than" if word == WORSE else "not distinguishable from"
    note = (f"The {rule} rule picked {pick['trial_id']}, but it is {relation} the plain backbone ({measured}); the "
            f"plain backbone is chosen instead: attention must earn its cost by more than the noise.")
    return pool[pool["trial_id"].astype(str) == base].iloc[0], note


def _answer(pick: pd.Series, pool: pd.DataFrame, objectives: list[str], base: str | None,
            finalists: list[Finalist], where: str, verified: bool) -> str:
    """The one sentence a user can act on (see ``best_config.md``)."""
    quality = objectives[0]
    by_id = {str(f.row["trial_id"]): f for f in finalists}
    chosen = str(pick["trial_id"])
    if base is None:
        return f"Use {placement(pick)} ({chosen}); the plain backbone was not measured {where}, so no gain is stated."
    plain = by_id[base].row
    if chosen != base:
        f = by_id[chosen]
        return (f"Use {placement(pick)} ({chosen}): {where} ({paired_words(f.gain)}), its {quality} differs from "
                f"the plain backbone's by {format_gain(f.gain, quality)} (95 % interval), for "
                f"{_cost_over(pick, plain, objectives)}.")
    others = [f for f in finalists if f.verdict != SAME]
    if not others:
        return f"Use the plain backbone: no other config was measured {where}."
    top = max(others, key=lambda f: _signed(f.row, quality))
    why = "one draw each: no interval" if math.isnan(top.gain.half) else f"{paired_words(top.gain)}, 95 % interval"
    return (f"Use the plain backbone: no config beat it {where}; the best candidate was {top.row['trial_id']} "
            f"({placement(top.row)}) at {format_gain(top.gain, quality)} ({why}), for "
            f"{_cost_over(top.row, plain, objectives)}.")


def _cost_over(row: pd.Series, plain: pd.Series, objectives: list[str]) -> str:
    """``"+0.58 % FLOPs (4.1420 GFLOPs)"``: the first cost against the plain backbone's."""
    cost = objectives[1] if len(objectives) > 1 else "gflops"
    label = {"gflops": "FLOPs", "latency_ms": "latency", "params": "parameters"}.get(cost, cost)
    unit = {"gflops": "GFLOPs", "latency_ms": "ms", "params": "parameters"}.get(cost, cost)
    mine, theirs = float(row[cost]), float(plain[cost])
    over = 100.0 * (mine / theirs - 1.0) if theirs else math.nan
    return f"{over:+.2f} % {label} ({mine:.4g} {unit})"


def better_than_plain(choice: Choice) -> str:
    """One sentence naming the configs of the evidence distinguishably better than the plain backbone in its score,
    with their paired gain and FLOPs over it; "" without a plain backbone among them."""
    objective = choice.score
    if not choice.finalists:
        return ""
    base = next((f.row for f in choice.finalists if f.verdict == SAME), None)
    better = [f for f in choice.finalists if f.verdict == BETTER]
    if base is None or not better:
        others = sum(f.verdict != SAME for f in choice.finalists)
        return (f"None of the {others} other configs compared is distinguishably better than the plain backbone "
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
    return f"Distinguishably better than the plain backbone (paired, 95 % interval): {'; '.join(parts)}{tail}."
