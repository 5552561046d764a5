"""The statistics of ``bench/proxy_fidelity.py``: rank correlations with the long run, the ablation table, claim
precision of replicated comparisons, and what one rung of the multi-objective ASHA does to configs within the
noise band of the best."""

from __future__ import annotations

import json
import math
import warnings
from itertools import combinations

import pandas as pd

from evaluators.scores import SCORES
from results.noise import paired_difference, pooled_sd, verdict
from results.pareto import OBJECTIVE_DIRECTIONS


def spearman(x: pd.Series, y: pd.Series) -> float:
    return x.rank().corr(y.rank())


def _ranks(x):
    """Average ranks (ties share the mean of their ranks) along the last axis; written out with NumPy because the
    bootstrap needs thousands of resamples at once (pandas ranks one series at a time)."""

    less = (x[..., None, :] < x[..., :, None]).sum(-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(-1)
    return less + (equal + 1) / 2.0


def _rows_spearman(a, b):
    """Spearman of each row of ``a`` with the same row of ``b`` (NaN where a row is constant)."""
    import numpy as np

    ra, rb = _ranks(a), _ranks(b)
    ra = ra - ra.mean(-1, keepdims=True)
    rb = rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def bootstrap_spearman(draws: list[pd.Series] | pd.Series, y: list[pd.Series] | pd.Series, reps: int = 2000,
                       seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """The mean Spearman over every pair of one of ``draws`` and one of ``y`` (series over configs), on the configs
    all share, its percentile bootstrap interval over configs (the same resample of configs for every pair; a
    resample with fewer than 3 distinct configs is skipped), and the number of configs."""
    import numpy as np

    draws = [draws] if isinstance(draws, pd.Series) else list(draws)
    ys = [y] if isinstance(y, pd.Series) else list(y)
    common = ys[0].dropna().index
    for d in [*draws, *ys[1:]]:
        common = common.intersection(d.dropna().index)
    xs = np.array([d[common].to_numpy(dtype=float) for d in draws])
    bs = np.array([v[common].to_numpy(dtype=float) for v in ys])
    n = len(common)

    def rho(picks):  # picks: (m, n) resamples -> (m,) mean Spearman over the pairs
        values = [_rows_spearman(a[picks], b[picks]) for a in xs for b in bs]
        return np.nanmean(np.array(values), axis=0) if values else np.full(len(picks), np.nan)

    point = float(rho(np.arange(n)[None, :])[0]) if n >= 3 else math.nan
    if n < 3:
        return point, math.nan, math.nan, n
    picks = np.random.default_rng(seed).integers(0, n, (reps, n))
    picks = picks[[len(set(p)) >= 3 for p in picks]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where every pair is constant: NaN, left out
        boot = rho(picks)
    boot = boot[~np.isnan(boot)]
    if not len(boot):
        return point, math.nan, math.nan, n
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return point, float(lo), float(hi), n


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties handled); written out because pandas needs SciPy for it, which is not required."""
    conc = disc = tx = ty = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif (dx > 0) == (dy > 0):
            conc += 1
        else:
            disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")


def signed(values: pd.Series, score: str) -> pd.Series:
    """Scores turned so that larger is better (losses negated)."""
    return values if OBJECTIVE_DIRECTIONS[score] == "maximize" else -values


def replicate_draws(df: pd.DataFrame, variant: str, score: str, k: int = 1) -> dict[int, pd.Series]:
    """Per draw (one trial of the variant: ``k`` seeds averaged), the score of every config."""
    rows = df[(df.kind == "proxy") & (df.variant == variant)]
    draws = {}
    for draw, part in rows.groupby(rows.seed.astype(int) // k):
        per_config = part.groupby("config")[score].agg(["mean", "count"])
        draws[draw] = per_config["mean"][per_config["count"] == k]
    return draws


def long_reference(df: pd.DataFrame) -> tuple[pd.Series, float]:
    """Mean long-run accuracy per config, and the long run's own seed-0 vs seed-1 Spearman."""
    long = df[df.kind == "long"]
    by_seed = long.pivot_table(index="config", columns="seed", values="accuracy")
    ceiling = spearman(by_seed[0], by_seed[1]) if {0, 1} <= set(by_seed.columns) else float("nan")
    if {0, 1} <= set(by_seed.columns):
        both = by_seed[[0, 1]].dropna()
        ceiling = spearman(both[0], both[1]) if len(both) >= 3 else float("nan")
    return long.groupby("config").accuracy.mean(), ceiling


def ablation(df: pd.DataFrame, long: pd.Series, variants: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """One row per variant x score: mean Spearman and Kendall of a single trial's score with the long-run mean
    (averaged over draws) with the 95 % bootstrap interval over configs of that Spearman (``lo``, ``hi``), the
    number of draws and configs, and CPU seconds per trial. ``variants``: name -> (knob, seeds averaged per
    trial)."""
    rows = []
    for variant in [v for v in variants if v in set(df.variant)]:
        knob, k = variants[variant]
        cpu = df[(df.kind == "proxy") & (df.variant == variant)].groupby(df.seed.astype(int)).cpu_s.mean().mean()
        cpu *= k
        for score in SCORES:
            rhos, taus, kept = [], [], []
            for s in replicate_draws(df, variant, score, k).values():
                common = long.index.intersection(s.dropna().index)
                if len(common) < 4:
                    continue
                a, b = signed(s[common], score), long[common]
                rhos.append(spearman(a, b))
                taus.append(kendall_tau_b(list(a), list(b)))
                kept.append(a)
            if rhos:
                _, lo, hi, n = bootstrap_spearman(kept, long)
                rows.append({"variant": variant, "knob": knob, "score": score,
                             "rho": sum(rhos) / len(rhos), "rho_min": min(rhos), "rho_max": max(rhos), "lo": lo,
                             "hi": hi, "tau": sum(taus) / len(taus), "draws": len(rhos), "configs": n, "cpu_s": cpu})
    return pd.DataFrame(rows)


def claim_precision(df: pd.DataFrame, long: pd.Series, variant: str, score: str) -> tuple[int, int, int]:
    """Pairs of configs that the replicated comparison (paired seeds, 95 % interval) calls different, how many of
    those the long run orders the same way, and how many pairs were compared."""
    rows = df[(df.kind == "proxy") & (df.variant == variant)]
    table = rows.pivot_table(index="config", columns="seed", values=score)
    called = agree = pairs = 0
    for a, b in combinations([c for c in table.index if c in long.index], 2):
        both = table.loc[[a, b]].dropna(axis=1)
        if both.shape[1] < 2:
            continue
        pairs += 1
        diff = paired_difference(list(both.loc[a]), list(both.loc[b]))
        v = verdict(diff, OBJECTIVE_DIRECTIONS[score])
        if v == "not distinguishable":
            continue
        called += 1
        agree += (v == "better") == (long[a] > long[b])
    return called, agree, pairs


def early_stopping_check(df: pd.DataFrame, variant: str, score: str, eta: int = 3, orders: int = 20,
                         band_sd: float = 2.0, rung_bands: tuple[float, ...] = (0.5, 1.0, 2.0)) -> dict[str, float]:
    """Rung 1 of the multi-objective ASHA (``search.scheduler.promotes``: epoch-1 score and GFLOPs, the top 1/eta
    by non-dominated rank among the trials already at the rung), replayed over the configs of each draw in
    ``orders`` random arrival orders, without and with a noise band at the rung (each of ``rung_bands``, in pooled
    seed sd of the epoch-1 score). Per draw (means): configs stopped among those whose final mean lies within
    ``band_sd`` pooled seed sd of the best (``in_band`` of them), and configs stopped in all; keys ``"0 stopped"``,
    ``"0 stopped in band"`` for plain ASHA, ``"<b> stopped"`` ... for a band of ``b`` sd."""
    import random

    from search.scheduler import promotes

    rows = df[(df.kind == "proxy") & (df.variant == variant)]
    gflops = df[df.kind == "zc_gflops"].groupby("config").accuracy.first()
    rows = rows[rows.config.isin(gflops.index)]
    if rows.empty or rows.epochs.max() < 2 or rows.seed.nunique() < 2:
        return {}
    rows = rows.assign(rung=[float(json.loads(h)[0][score]) for h in rows.history])
    final = signed(rows.groupby("config")[score].mean(), score)
    sd, _ = pooled_sd(signed(g[score], score).tolist() for _, g in rows.groupby("config"))
    rung_sd, _ = pooled_sd(g.rung.tolist() for _, g in rows.groupby("config"))
    in_band = set(final[final >= final.max() - band_sd * sd].index)
    mode = "max" if OBJECTIVE_DIRECTIONS[score] == "maximize" else "min"
    out = {"in_band": len(in_band), "configs": rows.config.nunique(), "draws": rows.seed.nunique(),
           "rung_sd": rung_sd}
    for b in (0.0, *rung_bands):
        band, label = b * rung_sd, f"{b:g}"
        stopped = stopped_in_band = 0
        rng = random.Random(0)
        for _, part in rows.groupby("seed"):
            points = {c: (r, float(gflops[c])) for c, r in zip(part.config, part.rung, strict=True)}
            for _ in range(orders):
                order = list(points)
                rng.shuffle(order)
                for i, c in enumerate(order):
                    if not promotes([points[o] for o in order[:i]], points[c], [mode, "min"], eta, band):
                        stopped += 1
                        stopped_in_band += c in in_band
        per = orders * out["draws"]
        out[f"{label} stopped"], out[f"{label} stopped in band"] = stopped / per, stopped_in_band / per
    return out
