"""Per-config statistics over seeds, at the proxy's fidelity or at the verification fidelity.

A search trains each config once (the sampler's trials); the finalists are then trained again, with further seeds
at the proxy's fidelity (replicates) and with paired seeds at a higher one (verification; see
``search/finalists.py``). Such a row names the trial it repeats in :data:`REPLICATE_OF` and its phase in
:data:`PHASE`; every finalist gets the same seeds, so two configs can be compared seed by seed (paired). This
module turns the raw rows into one row per config (:func:`config_means`: the objectives are means over the config's
completed seeds at one fidelity, ``verified`` or not, with the seed count and a 95 % interval of the first
objective), estimates the seed noise (:func:`noise_estimate`), compares two configs (:func:`paired_gain`), and
orders the finalists (:func:`finalists`). Fronts, hypervolumes, plots and the export read the per-config frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from results.noise import Interval, blocked_sd, interval, paired_difference, pooled_difference, pooled_sd
from results.pareto import OBJECTIVE_DIRECTIONS, pareto_front
from results.schema import COMPLETED, PHASE, REPLICATE_OF, SEEDS, VERIFY, interval_column
from results.select import select_best

__all__ = ["REPLICATE_OF", "SEEDS", "config_means", "finalists", "interval_column", "is_verified",
           "noise_estimate", "paired_gain", "paired_in", "rule_order", "seed_table"]

def _config_of(df: pd.DataFrame) -> pd.Series:
    """Per row, the trial id of its config's first trial."""
    if REPLICATE_OF not in df.columns:
        return df["trial_id"].astype(str)
    of = df[REPLICATE_OF].astype("string").fillna("").astype(str)
    return of.where(of != "", df["trial_id"].astype(str))


def is_verified(df: pd.DataFrame) -> pd.Series:
    """Per row, whether it is a verification run (trained at the verification fidelity, not the proxy's)."""
    if PHASE not in df.columns:
        return pd.Series(False, index=df.index)
    return df[PHASE].astype("string").fillna("").astype(str) == VERIFY


def _completed_seeds(df: pd.DataFrame, verified: bool = False) -> pd.DataFrame:
    rows = df[(df["status"] == COMPLETED) & (is_verified(df) == verified)].copy()
    rows["_config"] = _config_of(rows)
    return rows


def seed_table(df: pd.DataFrame, column: str, verified: bool = False) -> pd.DataFrame:
    """Completed values of ``column`` at the proxy's fidelity (or the verification fidelity): one row per config
    (its first trial's id), one column per seed."""
    rows = _completed_seeds(df, verified)
    if rows.empty or column not in rows.columns:
        return pd.DataFrame()
    rows["_seed"] = pd.to_numeric(rows["seed"], errors="coerce") if "seed" in rows.columns else 0
    values = pd.to_numeric(rows[column], errors="coerce")
    return rows.assign(_value=values).pivot_table(index="_config", columns="_seed", values="_value", aggfunc="mean")


def config_means(df: pd.DataFrame, objectives: Sequence[str], verified: bool = False) -> pd.DataFrame:
    """One row per config: its first trial's row, with each objective (and every other proxy score and cost the
    frame holds) replaced by the mean over the config's completed seeds at the proxy's fidelity, :data:`SEEDS`
    (how many), and the 95 % half-width of the first objective's mean (:func:`interval_column`; NaN below 2 seeds).
    Replicate rows themselves are dropped; a frame without any is returned with just the two columns added.
    ``verified``: the means over the verification runs instead, for the configs that have completed ones only."""
    first = df[_config_of(df) == df["trial_id"].astype(str)].copy()
    rows = _completed_seeds(df, verified)
    if verified:
        first = first[first["trial_id"].astype(str).isin(set(rows["_config"]))]
    quality = objectives[0]
    seeds = rows.groupby("_config").size()
    ids = first["trial_id"].astype(str)
    for objective in dict.fromkeys([*objectives, *OBJECTIVE_DIRECTIONS]):
        # integer columns (params) are the same for every seed of a config; a column with no number has no mean
        column = first[objective] if objective in first.columns else None
        if column is not None and pd.api.types.is_float_dtype(column):
            means = pd.to_numeric(rows[objective], errors="coerce").groupby(rows["_config"]).mean()
            done = first["status"] == COMPLETED
            first.loc[done, objective] = ids[done].map(means).astype(float)
    halves = {c: interval(g).half for c, g in pd.to_numeric(rows[quality], errors="coerce").groupby(rows["_config"])}
    first[SEEDS] = ids.map(seeds).fillna(0).astype(int)
    first[interval_column(quality)] = ids.map(halves).astype(float)
    return first


def noise_estimate(df: pd.DataFrame, column: str, verified: bool = False) -> tuple[float, int]:
    """The pooled within-config standard deviation of ``column`` over configs with 2 or more completed seeds at the
    proxy's fidelity (or the verification fidelity), and its degrees of freedom (NaN, 0 without such seeds)."""
    rows = _completed_seeds(df, verified)
    if rows.empty:
        return math.nan, 0
    values = pd.to_numeric(rows[column], errors="coerce")
    return pooled_sd(list(g) for _, g in values.groupby(rows["_config"]))


def paired_gain(df: pd.DataFrame, trial: str, other: str, column: str, verified: bool = False) -> Interval:
    """Mean of ``column`` of config ``trial`` minus that of config ``other`` over the seeds both completed (at the
    proxy's fidelity, or the verification fidelity), with its 95 % interval (both named by their first trial's
    id)."""
    return paired_in(seed_table(df, column, verified), trial, other)


def paired_in(table: pd.DataFrame, trial: str, other: str) -> Interval:
    """:func:`paired_gain` from a :func:`seed_table` built once, for callers that compare many pairs.

    The seed noise is that of every config of ``table`` trained under all the seeds the pair shares
    (:func:`results.noise.blocked_sd`): the finalists share their seeds, and 2 seeds give a pair alone 1 degree of
    freedom. With no other config under those seeds it is the pair's own paired t-interval."""
    if trial not in table.index or other not in table.index:
        return Interval(math.nan, math.nan, 0)
    both = table.loc[[trial, other]].dropna(axis=1)
    a, b = list(both.loc[trial]), list(both.loc[other])
    block = table[both.columns].dropna()
    if len(block) <= 2 or len(a) < 2:
        return paired_difference(a, b)
    sd, dof = blocked_sd(block.to_numpy().tolist())
    return pooled_difference(a, b, sd, dof, len(block))


def rule_order(front: pd.DataFrame, objectives: Sequence[str], rule: str) -> list[str]:
    """The front's trial ids in the order the selection ``rule`` prefers them: its pick, then its pick among the
    rest, and so on (what the rule cannot pick, e.g. above a GFLOPs bound, last, cheapest first)."""
    rest, order = front.reset_index(drop=True), []
    while len(rest):
        try:
            label = select_best(rest, objectives, rule).name
        except ValueError:
            break
        order.append(str(rest.loc[label, "trial_id"]))
        rest = rest.drop(index=label)
    return order + list(rest["trial_id"].astype(str))


def finalists(means: pd.DataFrame, objectives: Sequence[str], band: float, rule: str | None = None) -> list[str]:
    """Configs (first trial ids) worth replicating: the references, the front of the means, and every completed
    config whose first objective is within ``band`` of the front at no more cost (``band``: an absolute
    difference in that objective's units, e.g. 2.8 seed sd for the difference of two single draws; ``math.inf``:
    every completed config, nearest the front first).

    The configs within the band come nearest the front first: where configs differ by less than the seed noise,
    nearly every config is within the band, and a caller that can afford only the first few (the replicate phase's
    limit, :func:`search.finalists.plan_replicates`) takes those. The front comes in the order the selection
    ``rule`` prefers (:func:`rule_order`; by GFLOPs without one), so that the first few are those the choice will
    be made among."""
    quality, costs = objectives[0], list(objectives[1:])
    done = means[means["status"] == COMPLETED]
    picked = list(done.loc[done["reference"].fillna("").astype(str) != "", "trial_id"].astype(str))
    front = pareto_front(done, objectives)
    picked += rule_order(front, objectives, rule) if rule else list(front["trial_id"].astype(str))
    picked = list(dict.fromkeys(picked))
    near: list[tuple[float, str]] = []
    if band > 0 and not math.isnan(band) and len(front):
        sign = 1.0 if OBJECTIVE_DIRECTIONS.get(quality, "maximize") == "maximize" else -1.0
        q_front = sign * front[quality].to_numpy(dtype=float)
        c_front = front[costs].to_numpy(dtype=float)
        for _, row in done.iterrows():
            cheaper = np.all(c_front <= row[costs].to_numpy(dtype=float), axis=1)
            # the best the front reaches at no more cost; nothing on the front that cheap: it is within the band
            best = q_front[cheaper].max() if cheaper.any() else -math.inf
            gap = best - sign * float(row[quality])
            if gap <= band and str(row["trial_id"]) not in picked:
                near.append((max(gap, 0.0), str(row["trial_id"])))
    near.sort(key=lambda g: g[0])  # stable: equal gaps stay in trial order
    return picked + [trial_id for _, trial_id in near]
