"""Is the search worth its machinery? Hypervolume against random search at equal wall time, and how fast it gets there.

Runs real searches through the command line (``run_search.py``, Fashion-MNIST, the search's default objectives:
the preset's score and GFLOPs), for several seeds, in the variants of :data:`RUN_VARIANTS`:

* ``nsga2-es``: the tool's default (NSGA-II proposing, the multi-objective ASHA stopping weak trials), its population
  sized for the trials a run completes (``--population-size``);
* ``tpe-es``: Optuna's multi-objective TPE with the same early stopping;
* ``tpe-es-warm``: the same, the single-stage configs trained first (``--warm-start``);
* ``random``: Optuna's random sampler without early stopping (what the others must beat);
* ``nsga2`` (earlier rows only): NSGA-II without early stopping.

**What the user gets** (the equal-time form): after its time budget each search verifies its finalists at
``--verify`` and chooses on those numbers, as a user's search does once its trials are done (resumed for that
alone, outside the equal wall time); then the chosen config, the front and the plain backbone are trained again
with fresh paired seeds (:mod:`efficiency_verified`), and the variants are compared on those verified figures,
seed by seed, with 95 % intervals over seeds. The single-draw ``hv_gain`` below is kept beside them, labelled so.

Every variant gets the same wall time (``--time-budget MIN``, passed to the search, whose trial budget is then
too large to be reached), or, with ``--budget N`` alone, the same number of trials (the earlier form of this
benchmark; its resnet18 rows are kept). ``--replicates 0``: the benchmark compares what the searches find, not
the replicate phase that follows them.

For each run: ``hv_gain``, the hypervolume of what beats both references (reference point: the plain backbone's
score and the paper default's GFLOPs of the same run; both are trained first, with the run's seed, so every variant
of a seed shares the point), the anytime curve (``hv_gain`` of the trials completed by each moment, counted from
the start of the command, so Ray's start-up and every overhead is paid), the wall time, and the share of it not
spent inside proxy trainings. One row per trial goes to ``<out stem>_trials.csv`` (status, objectives, seconds
from the start of the command to the trial's last report) so that the curves can be recomputed; one row per run
to ``--out``. Finished runs are skipped when the benchmark is run again, so an interrupted benchmark resumes.

The targets (issue "Is the search worth it where the cost is real"): the default reaches random search's final
``hv_gain`` in <= 0.6 x the time random search took to reach it (geometric mean over seeds), and ends with >= 1.2 x
random's final ``hv_gain``.

    python bench/search_efficiency.py --backbone mobilenetv2_100 --time-budget 10 --seeds 0 1 2 \\
        --out docs/bench/search_efficiency_time.csv --png docs/search-efficiency-anytime.png
    python bench/search_efficiency.py --backbone resnet18 --budget 50     # the earlier, equal-trials form
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling efficiency_verified, also when imported
from efficiency_verified import (  # noqa: E402
    canonical,
    measured_at,
    needed,
    recorded_keys,
    run_measurements,
    settings_key,
    verified,
)

from evaluators.fidelity import preset  # noqa: E402
from results.config_stats import is_verified  # noqa: E402
from results.frame import read_trials  # noqa: E402
from results.noise import interval, verdict  # noqa: E402
from results.pareto import hypervolume, loss_name, pareto_front, reference_point, to_loss  # noqa: E402
from results.schema import BEST_JSON, CONFIG_JSON  # noqa: E402
from space import ArchConfig  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
VARIANTS = {
    "nsga2-es": ["--sampler", "nsga2", "--early-stopping"],
    "nsga2": ["--sampler", "nsga2", "--no-early-stopping"],
    "tpe-es": ["--sampler", "tpe", "--early-stopping"],
    "tpe-es-warm": ["--sampler", "tpe", "--early-stopping", "--warm-start"],
    "random": ["--sampler", "random", "--no-early-stopping"],
}
#: What a benchmark runs unless told: the candidates for the default (``nsga2`` without early stopping is in the
#: earlier rows only).
RUN_VARIANTS = ["random", "nsga2-es", "tpe-es", "tpe-es-warm"]
DEFAULT_VARIANT, RANDOM_VARIANT = "nsga2-es", "random"
#: Trial budget of a time-budgeted run: more than any run can launch in its time, so the time budget ends it.
UNREACHED_BUDGET = 10_000
#: Identifies one run in the rows (with ``variant`` and ``seed``).
#: The earlier form of the benchmark fixed the objectives (validation accuracy and GFLOPs); rows without an
#: ``objectives`` column are those.
EARLIER_OBJECTIVES = ["accuracy", "gflops"]


def finish_times(run_dir: Path, started: float) -> dict[str, float]:
    """Seconds from ``started`` (Unix time) to each trial's last report, by trial id (Ray's result.json files,
    every session)."""
    out: dict[str, float] = {}
    for result in run_dir.glob("ray/session-*/*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        if lines:
            last = json.loads(lines[-1])
            key = last.get("trial_key") or (last.get("config") or {}).get("trial_key")
            if key:
                out[str(key)] = max(out.get(str(key), 0.0), float(last["timestamp"]) - started)
    return out


def proxy_seconds(run_dir: Path) -> float:
    """Sum over trials of the proxy time of their last report (model build, data subset, training, validation)."""
    total = 0.0
    for result in run_dir.glob("ray/session-*/*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        if lines:
            total += float(json.loads(lines[-1]).get("train_time_s", 0.0))
    return total


def run_objectives(run_dir: Path) -> list[str]:
    return list(json.loads((run_dir / "search.json").read_text())["objectives"])


def gain_hypervolume(df: pd.DataFrame, objectives: list[str]) -> float:
    """Hypervolume of what beats the references: reference point (the plain backbone's score, the paper
    default's GFLOPs) of the same run, in the minimisation space of :func:`results.pareto.hypervolume`.

    A point that credits every front with the plain backbone's whole score (error 1, say) is swamped by that
    constant when the attention costs almost nothing; this box counts only what is gained over the plain backbone
    at no more than the paper's cost. 0 until both references have completed.
    """
    refs = df[df["status"] == "completed"]
    refs = refs.set_index(refs["reference"].astype("string").fillna(""))
    if "baseline" not in refs.index or "paper_default" not in refs.index:
        return 0.0
    quality, cost = objectives[0], objectives[1]
    point = [float(refs.loc["baseline", quality]), float(refs.loc["paper_default", cost])]
    loss = to_loss(np.array([point]), [quality, cost])[0]
    return hypervolume(df, [quality, cost], {loss_name(quality): float(loss[0]), loss_name(cost): float(loss[1])})


def anytime(trials: pd.DataFrame, objectives: list[str]) -> pd.Series:
    """``hv_gain`` after each completed trial, indexed by its finish time (seconds from the command's start)."""
    done = trials[trials["status"] == "completed"].sort_values("finished_s", kind="mergesort")
    values = [gain_hypervolume(done.iloc[: i + 1], objectives) for i in range(len(done))]
    return pd.Series(values, index=done["finished_s"].to_numpy(dtype=float), dtype=float)


def time_to_reach(curve: pd.Series, target: float) -> float:
    """First moment the curve reaches ``target`` (> 0), or inf."""
    hit = curve[curve >= target - 1e-15]
    return float(hit.index[0]) if len(hit) else math.inf


def run_one(variant: str, seed: int, args: argparse.Namespace, recipe: str) -> tuple[dict, pd.DataFrame]:
    """One search of ``variant`` with ``seed``, its trials' rows and its own, both labelled with ``recipe`` (the
    preset's :func:`~efficiency_verified.settings_key`)."""
    tag = f"t{args.time_budget:g}min" if args.time_budget else f"b{args.budget}"
    run_dir = OUT / "search_efficiency" / f"{args.backbone}-{args.proxy}-{tag}-{variant}-s{seed}"
    if run_dir.exists():  # an interrupted earlier attempt: start again, its timing would be wrong
        shutil.rmtree(run_dir)
    budget = UNREACHED_BUDGET if args.time_budget else args.budget
    cmd = [sys.executable, str(ROOT / "run_search.py"), "--backbone", args.backbone, "--proxy", args.proxy,
           "--budget", str(budget), "--seed", str(seed), "--max-concurrent", str(args.max_concurrent),
           "--out", str(run_dir), "--replicates", "0", "--verify", args.verify if args.time_budget else "off",
           *VARIANTS[variant]]
    if variant.startswith("nsga2") and args.population_size:
        cmd += ["--population-size", str(args.population_size)]
    if args.time_budget:
        cmd += ["--time-budget", f"{args.time_budget:g}"]
    if args.objectives:
        cmd += ["--objectives", args.objectives]
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    ends = finish_times(run_dir, started)
    useful = proxy_seconds(run_dir)
    verify_s = 0.0
    if args.time_budget:
        # What a user's search does once its trials are done: the finalists verified at --verify, the choice made on
        # those numbers. The time budget ended the session before that, so the search is resumed for it alone
        # (its budget: the trials it launched), outside the equal wall time the samplers are compared at.
        launched = len(read_trials(run_dir))
        t1 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--resume", "--out", str(run_dir),
                               "--budget", str(launched), "--max-concurrent", str(args.max_concurrent)],
                              cwd=ROOT, capture_output=True, text=True)
        verify_s = time.perf_counter() - t1
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} seed {seed}: verification failed ({proc.returncode}): {proc.stderr[-2000:]}")
    df = read_trials(run_dir)
    df = df[~is_verified(df)].reset_index(drop=True)  # the search's trials, at the proxy's fidelity
    objectives = run_objectives(run_dir)
    configs = df[CONFIG_JSON].map(canonical)
    chosen = canonical(ArchConfig.from_dict(json.loads((run_dir / BEST_JSON).read_text())))
    trials = pd.DataFrame({
        "variant": variant, "seed": seed, "backbone": args.backbone, "proxy": args.proxy, "fidelity": recipe,
        "budget": budget,
        "time_budget_min": args.time_budget, "trial_id": df["trial_id"].astype(str), "status": df["status"],
        "reference": df["reference"].astype("string").fillna(""), objectives[0]: df[objectives[0]],
        objectives[1]: df[objectives[1]], "finished_s": df["trial_id"].astype(str).map(ends).round(1),
        "chosen": configs == chosen, CONFIG_JSON: configs,
    })
    counts = df["status"].value_counts().to_dict()
    row = {
        "variant": variant, "seed": seed, "backbone": args.backbone, "proxy": args.proxy, "fidelity": recipe,
        "budget": budget,
        "time_budget_min": args.time_budget, "objectives": ",".join(objectives),
        "trials": len(df), "completed": counts.get("completed", 0), "stopped": counts.get("stopped", 0),
        "failed": counts.get("failed", 0), "wall_s": round(wall, 1), "proxy_s": round(useful, 1),
        "max_concurrent": args.max_concurrent, "verify_s": round(verify_s, 1),
        "population_size": args.population_size if variant.startswith("nsga2") else None,
        "overhead_share": round(1 - useful / (wall * args.max_concurrent), 4),
        "front_size": len(pareto_front(df, objectives[:2])), "hv_gain": gain_hypervolume(df, objectives[:2]),
        "run_dir": str(run_dir.relative_to(ROOT)),
    }
    return row, trials


def _objectives_of(row: pd.Series) -> list[str]:
    text = row.get("objectives")
    return str(text).split(",")[:2] if isinstance(text, str) and text else EARLIER_OBJECTIVES


def add_hypervolumes(table: pd.DataFrame) -> pd.DataFrame:
    """Equal-trials rows: the hypervolume of every run against one reference point (error 1, 1.1 x the larger
    reference GFLOPs; the same in every run on a backbone, which is checked) and ``hv_gain``; in ``attrs`` the
    pooled ceiling (the front of every run's trials together, :func:`pooled_hypervolume`)."""
    trials = [read_trials(ROOT / d if not Path(d).is_absolute() else Path(d)) for d in table.run_dir]
    objectives = _objectives_of(table.iloc[0])
    points = {json.dumps(reference_point(df, objectives), sort_keys=True) for df in trials}
    if len(points) != 1:
        raise RuntimeError(f"runs disagree on the reference point: {points}")
    ref = json.loads(points.pop())
    table = table.copy()
    table["hypervolume"] = [hypervolume(df, objectives, ref) for df in trials]
    table["hv_gain"] = [gain_hypervolume(df, objectives) for df in trials]
    table.attrs["reference_point"] = ref
    table.attrs["pooled_hypervolume"] = pooled_hypervolume(trials, ref, objectives)
    return table


def pooled_hypervolume(trials: list[pd.DataFrame], ref: dict[str, float], objectives: list[str]) -> float:
    """Hypervolume of the front of every run's trials pooled, against the shared reference point ``ref``: what a
    search would reach had it found the best of everything all the benchmarked searches found together."""
    return hypervolume(pd.concat(trials, ignore_index=True), objectives, ref)


def _common_seeds(table: pd.DataFrame, a: str, b: str) -> list[int]:
    """The seeds both variants ran: comparisons are seed by seed (both runs of a seed train the same references)."""
    return sorted(set(table[table.variant == a].seed) & set(table[table.variant == b].seed))


def ratio_interval(ratios: list[float]) -> str:
    """The 95 % t-interval of the geometric mean of per-seed ratios (on their logarithms), and whether it tells
    the two variants apart: a ratio is a difference only where its interval excludes 1."""
    if any(r <= 0 or not math.isfinite(r) for r in ratios):
        return "(no interval: a ratio is 0 or infinite)"
    logs = interval([math.log(r) for r in ratios])
    if math.isnan(logs.half):
        return "(no interval from 1 seed)"
    low, high = math.exp(logs.low), math.exp(logs.high)
    word = "not distinguishable" if low <= 1.0 <= high else ("higher" if low > 1.0 else "lower")
    return f"(95 % interval x{low:.2f}-x{high:.2f}: {word})"


def _geomean(values: list[float]) -> float:
    if not values or any(v <= 0 for v in values):
        return math.nan
    return math.exp(statistics.mean(math.log(v) for v in values))


def summarise_budget(table: pd.DataFrame) -> str:
    """The equal-trials summary (the earlier form)."""
    lines = [f"reference point (error, GFLOPs): {table.attrs.get('reference_point')}"]
    for variant, rows in table.groupby("variant", sort=False):
        hv = rows.hypervolume.tolist()
        sd = statistics.stdev(hv) if len(hv) > 1 else float("nan")
        gain = ", ".join(f"{1e4 * g:.2f}" for g in rows.hv_gain)
        lines.append(f"{variant:>9}: HV {statistics.mean(hv):.4f} ± {sd:.4f} over seeds {rows.seed.tolist()} "
                     f"(over the references, x1e-4: {gain}); "
                     f"wall {rows.wall_s.mean() / 60:.1f} min; overhead {100 * rows.overhead_share.mean():.1f} %; "
                     f"stopped {rows.stopped.mean():.1f} of {rows.trials.mean():.0f}")
    by = table.set_index(["variant", "seed"])
    for a, b in (("nsga2-es", "random"), ("nsga2", "random"), ("nsga2-es", "nsga2")):
        ratios = [by.loc[(a, s), "hypervolume"] / by.loc[(b, s), "hypervolume"] for s in _common_seeds(table, a, b)]
        if ratios:
            lines.append(f"HV {a} / {b}: " + ", ".join(f"{r:.3f}" for r in ratios)
                         + f" (geomean {_geomean(ratios):.3f})")
    random_rows = table[table.variant == RANDOM_VARIANT]
    if len(random_rows):
        ceiling = table.attrs["pooled_hypervolume"]
        lines.append(f"ceiling: the {len(table)} runs' trials pooled have HV {ceiling:.4f}, "
                     + ", ".join(f"{ceiling / hv:.3f}" for hv in random_rows.hypervolume)
                     + f" x random's (seeds {random_rows.seed.tolist()})")
    return "\n".join(lines)


def time_markdown(table: pd.DataFrame) -> str:
    """The equal-wall-time rows as one markdown table: per variant, ``hv_gain`` per seed, trials per run (stopped
    among them) and the share of the wall time outside the trials."""
    seeds = sorted(table.seed.astype(int).unique())
    lines = [f"| variant | hv_gain x1e-3, seeds {', '.join(map(str, seeds))} | trials per run (stopped) | "
             "orchestration share |", "|---|---|---:|---:|"]
    for variant, rows in table.groupby("variant", sort=False):
        by_seed = dict(zip(rows.seed.astype(int), rows.hv_gain, strict=True))
        gains = ", ".join(f"{1e3 * by_seed[s]:.2f}" if s in by_seed else "—" for s in seeds)
        lines.append(f"| {variant} | {gains} | {rows.trials.mean():.0f} ({rows.stopped.mean():.0f}) | "
                     f"{100 * rows.overhead_share.mean():.1f} % |")
    return "\n".join(lines) + "\n"


def curves(table: pd.DataFrame, trials: pd.DataFrame) -> dict[tuple[str, int], pd.Series]:
    """The anytime curve of every run of ``table`` (rows of one time-budgeted benchmark)."""
    out = {}
    for row in table.itertuples(index=False):
        mine = trials[(trials.variant == row.variant) & (trials.seed == row.seed)]
        out[(row.variant, int(row.seed))] = anytime(mine, str(row.objectives).split(",")[:2])
    return out


def summarise_time(table: pd.DataFrame, trials: pd.DataFrame) -> str:
    """The equal-wall-time summary: per variant, final ``hv_gain`` and trial counts; per seed, the default's time to
    reach random's final ``hv_gain`` against random's own, and the ratio of the final values."""
    runs = curves(table, trials)
    lines = [f"{len(table)} runs of {table.time_budget_min.iloc[0]:g} min each, objectives "
             f"{table.objectives.iloc[0]}; hv_gain x1e-3 (point: plain backbone's score, paper default's GFLOPs)"]
    for variant, rows in table.groupby("variant", sort=False):
        gain = ", ".join(f"{1e3 * g:.3f}" for g in rows.hv_gain)
        lines.append(f"{variant:>9}: hv_gain {gain} (seeds {rows.seed.tolist()}); trials "
                     f"{rows.trials.mean():.1f} ({rows.completed.mean():.1f} completed, {rows.stopped.mean():.1f} "
                     f"stopped); wall {rows.wall_s.mean() / 60:.1f} min; overhead "
                     f"{100 * rows.overhead_share.mean():.1f} %")
    by = table.set_index(["variant", "seed"])
    for variant in [v for v in VARIANTS if v != RANDOM_VARIANT and v in set(table.variant)]:
        speed, final, words = [], [], []
        for s in _common_seeds(table, variant, RANDOM_VARIANT):
            target = float(by.loc[(RANDOM_VARIANT, s), "hv_gain"])
            mine = float(by.loc[(variant, s), "hv_gain"])
            if target <= 0:
                words.append(f"seed {s}: random found nothing over the references (hv_gain 0); {variant} "
                             f"{1e3 * mine:.3f}")
                continue
            theirs = time_to_reach(runs[(RANDOM_VARIANT, s)], target)
            reach = time_to_reach(runs[(variant, s)], target)
            speed.append(reach / theirs)
            final.append(mine / target)
            when = f"{reach / 60:.1f} min" if math.isfinite(reach) else "never"
            words.append(f"seed {s}: reached random's final in {when} against random's {theirs / 60:.1f} min "
                         f"(x{reach / theirs:.2f}); final x{mine / target:.2f}")
        if words:
            lines.append(f"{variant} vs random: " + "; ".join(words))
        if speed:
            lines.append(f"  geometric mean over {len(speed)} seed(s): time to random's final x{_geomean(speed):.2f} "
                         f"(target <= 0.6 for the default), final hv_gain x{_geomean(final):.2f} "
                         f"{ratio_interval(final)} (target >= 1.2)")
    # "If a variant beats the default, make it the default": each against the default, seed by seed
    for variant in [v for v in VARIANTS if v != DEFAULT_VARIANT and v in set(table.variant)]:
        ratios = [float(by.loc[(variant, s), "hv_gain"]) / float(by.loc[(DEFAULT_VARIANT, s), "hv_gain"])
                  for s in _common_seeds(table, variant, DEFAULT_VARIANT)
                  if float(by.loc[(DEFAULT_VARIANT, s), "hv_gain"]) > 0]
        if ratios:
            lines.append(f"{variant} / {DEFAULT_VARIANT} final hv_gain: " + ", ".join(f"x{r:.2f}" for r in ratios)
                         + f", geometric mean x{_geomean(ratios):.2f} {ratio_interval(ratios)}")
    return "\n".join(lines)


def _measurable(rows: pd.DataFrame) -> bool:
    """Whether one run's trial rows name their configs (rows of the earlier benchmark do not: nothing to measure)."""
    return CONFIG_JSON in rows and not rows.empty and not rows[CONFIG_JSON].isna().any()


def verified_frame(table: pd.DataFrame, trials: pd.DataFrame, measured: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per run of ``table``: its verified figures (:func:`efficiency_verified.verified`) beside its single-draw
    ``hv_gain``; runs whose measurements are incomplete are left out."""
    rows = []
    for row in table.itertuples(index=False):
        mine = trials[(trials.variant == row.variant) & (trials.seed == row.seed)]
        if not _measurable(mine):
            continue
        got = verified(mine, str(row.objectives).split(",")[:2], measured, row.backbone, int(row.seed), k)
        if got is not None:
            rows.append({"variant": row.variant, "seed": int(row.seed), "hv_gain": float(row.hv_gain), **got})
    return pd.DataFrame(rows)


def _verdict(iv) -> str:
    """:func:`results.noise.verdict` of a gain, saying so where one seed gives no interval."""
    return "one seed: no interval" if math.isnan(iv.half) else verdict(iv)


def verified_markdown(v: pd.DataFrame, against: str = RANDOM_VARIANT) -> str:
    """The verified comparison as markdown: per variant, the verified gain of its chosen config and the verified
    ``hv_gain`` of its front (means over seeds with 95 % t-intervals), their paired differences from ``against``
    (same seeds), the time to reach ``against``'s final verified ``hv_gain``, and the single-draw ``hv_gain``."""
    lines = ["| variant | seeds | chosen config's verified gain (val_loss) | verified hv_gain x1e-3 | "
             f"gain − {against}'s | hv_gain − {against}'s (x1e-3) | time to {against}'s final verified hv_gain | "
             "plain backbone chosen | single-draw hv_gain x1e-3 |", "|---|---:|---|---|---|---|---|---:|---|"]
    base = v[v.variant == against].set_index("seed")
    for variant in [x for x in VARIANTS if x in set(v.variant)]:
        rows = v[v.variant == variant].sort_values("seed")
        gain, hv, single = interval(rows.v_gain), interval(rows.v_hv_gain), interval(rows.hv_gain)
        common = [s for s in rows.seed if s in base.index]
        mine = rows.set_index("seed")
        if variant == against or not common:
            d_gain = d_hv = reach = "—"
        else:
            dg = interval([mine.loc[s, "v_gain"] - base.loc[s, "v_gain"] for s in common])
            dh = interval([mine.loc[s, "v_hv_gain"] - base.loc[s, "v_hv_gain"] for s in common])
            d_gain, d_hv = f"{dg.format(digits=4)} ({_verdict(dg)})", f"{dh.format(1e3)} ({_verdict(dh)})"
            ratios = []
            for s in common:
                target = float(base.loc[s, "v_hv_gain"])
                theirs = time_to_reach(base.loc[s, "curve"], target)
                if target > 0 and math.isfinite(theirs):
                    ratios.append(time_to_reach(mine.loc[s, "curve"], target) / theirs)
            finite = [r for r in ratios if math.isfinite(r)]
            never = f"never on {len(ratios) - len(finite)} of {len(ratios)} seeds"
            if len(ratios) < len(common):  # no time to beat where the baseline's front verified nothing better
                never += f"; {against} found nothing on {len(common) - len(ratios)} of {len(common)}"
            reach = (f"— ({against} found nothing)" if not ratios else never if not finite else
                     f"x{_geomean(finite):.2f} (geomean of {len(finite)}; {never})")
        lines.append(f"| {variant} | {len(rows)} | {gain.format(digits=4)} | {hv.format(1e3)} | {d_gain} | {d_hv} | "
                     f"{reach} | {int(rows.chosen_is_plain.sum())} of {len(rows)} | {single.format(1e3)} |")
    return "\n".join(lines) + "\n"


def plot_anytime(table: pd.DataFrame, trials: pd.DataFrame, path: Path) -> Path:
    """``hv_gain`` against wall time, each run's curve divided by random search's final ``hv_gain`` of the same
    seed (the seeds' boxes differ in size: each is set by that seed's draw of the plain backbone), so 1 is where
    random search ended and the targets read off directly. Per variant: the geometric mean over seeds (step curves
    on a common grid) and the band between the lowest and highest seed. Without random search's runs, raw values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = curves(table, trials)
    finals = {int(r.seed): float(r.hv_gain) for r in table.itertuples(index=False) if r.variant == RANDOM_VARIANT}
    relative = bool(finals) and all(v > 0 for v in finals.values())
    horizon = float(table.wall_s.max())
    grid = np.linspace(0.0, horizon, 200)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant in [v for v in VARIANTS if v in set(table.variant)]:
        stacked = []
        for (v, seed), curve in runs.items():
            if v != variant or (relative and seed not in finals):
                continue
            idx = np.searchsorted(curve.index.to_numpy(), grid, side="right") - 1
            values = curve.to_numpy()[np.clip(idx, 0, None)] if len(curve) else np.zeros_like(grid)
            values = np.where(idx >= 0, values, 0.0)
            stacked.append(values / finals[seed] if relative else 1e3 * values)
        if not stacked:
            continue
        stacked = np.array(stacked)
        # geometric mean of ratios (0 before a run's first gain: the arithmetic mean there)
        middle = np.exp(np.log(np.where(stacked > 0, stacked, np.nan)).mean(axis=0)) if relative else \
            stacked.mean(axis=0)
        middle = np.where(np.isnan(middle), stacked.mean(axis=0), middle)
        minutes = grid / 60
        label = f"{variant} ({len(stacked)} seed{'s' if len(stacked) != 1 else ''})"
        line, = ax.step(minutes, middle, where="post", label=label)
        ax.fill_between(minutes, stacked.min(axis=0), stacked.max(axis=0), step="post", alpha=0.12,
                        color=line.get_color())
    first = table.iloc[0]
    if relative:
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("wall time of the whole command (min)")
    ax.set_ylabel("hv_gain / random search's final (same seed)" if relative else "hv_gain (x1e-3)")
    ax.set_title(f"{first.backbone}, {first.proxy} proxy, {first.time_budget_min:g} min per run: "
                 "geometric mean over seeds, band min-max", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def measure(table: pd.DataFrame, trials: pd.DataFrame, key: dict, args: argparse.Namespace, out: Path) -> None:
    """Train again what one run's answer rests on (:mod:`efficiency_verified`), unless ``--no-measure``."""
    if args.no_measure:
        return
    mine = trials[_same_run(trials, key)]
    if not _measurable(mine):
        return
    objectives = str(table[_same_run(table, key)].objectives.iloc[0]).split(",")[:2]
    todo = needed(mine, objectives, args.backbone, int(key["seed"]), args.measure_seeds)
    run_measurements(todo, args.proxy, args.verify, args.backbone, out, args.max_concurrent)


def _same_run(table: pd.DataFrame, key: dict) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for column, value in key.items():
        if column not in table.columns:
            return pd.Series(False, index=table.index)
        recorded = recorded_keys(table[column]) if column == "fidelity" else table[column]
        mask &= recorded.isna() if value is None else (recorded == value)
    return mask


def _write(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenetv2_100")
    ap.add_argument("--proxy", default="default")
    ap.add_argument("--time-budget", type=float, metavar="MIN", help="wall time of every run (equal-time form)")
    ap.add_argument("--budget", type=int, default=50, help="trials per run, without --time-budget")
    ap.add_argument("--objectives", help="passed to the search (default: its own, the preset's score and GFLOPs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=RUN_VARIANTS)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--population-size", type=int, default=12,
                    help="NSGA-II's population in the nsga2 variants (default 12: about 10 generations in the "
                         "110-160 trials a 10-minute mobilenetv2_100 run completes; 0: the search's own default)")
    ap.add_argument("--verify", default="3x", help="fidelity the runs' answers are measured at (default 3x)")
    ap.add_argument("--measure-seeds", type=int, default=2, help="fresh paired seeds per measured config")
    ap.add_argument("--no-measure", action="store_true", help="single-draw figures only (the earlier form)")
    ap.add_argument("--out", default=str(OUT / "search_efficiency.csv"))
    ap.add_argument("--png", help="the anytime curve (equal-time form)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--any-recipe", action="store_true",
                    help="with --summary-only: summarise the runs whatever their preset's settings (the files from "
                         "before runs recorded them)")
    args = ap.parse_args()
    if args.any_recipe and not args.summary_only:
        ap.error("--any-recipe only summarises: runs of different recipes are not resumed together")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trials_out = out.with_name(f"{out.stem}_trials.csv")
    measured_out = out.with_name(f"{out.stem}_measured.csv")
    table = pd.read_csv(out) if out.exists() else pd.DataFrame()
    trials = pd.read_csv(trials_out) if trials_out.exists() else pd.DataFrame()
    # The preset's settings are part of a run's key: runs of a recipe that has changed since (rows without the
    # column, from before it was recorded, included) are neither resumed nor compared with the new ones.
    key = {"backbone": args.backbone, "proxy": args.proxy,
           **({} if args.any_recipe else {"fidelity": settings_key(preset(args.proxy))}),
           **({"time_budget_min": args.time_budget} if args.time_budget else {"budget": args.budget})}
    if not args.summary_only:
        for seed in args.seeds:  # seed-major: a partial benchmark still compares the variants on the same seeds
            for variant in args.variants:
                if len(table) and _same_run(table, {**key, "variant": variant, "seed": seed}).any():
                    measure(table, trials, {**key, "variant": variant, "seed": seed}, args, measured_out)
                    continue
                row, rows = run_one(variant, seed, args, key["fidelity"])
                print(f"{variant:>9} seed {seed}: {row['trials']} trials ({row['completed']} completed, "
                      f"{row['stopped']} stopped) in {row['wall_s'] / 60:.1f} min, hv_gain "
                      f"{1e3 * row['hv_gain']:.3f}e-3, overhead {100 * row['overhead_share']:.1f} %", flush=True)
                table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
                trials = pd.concat([trials, rows], ignore_index=True)
                _write(trials, trials_out)  # the trials first: a row in ``out`` promises its trials
                _write(table, out)
                measure(table, trials, {**key, "variant": variant, "seed": seed}, args, measured_out)
    sel = table[_same_run(table, key)].reset_index(drop=True) if len(table) else table
    if sel.empty:
        print("no runs yet")
        return
    if args.time_budget:
        mine = trials[_same_run(trials, key)]
        print(summarise_time(sel, mine))
        md = out.with_suffix(".md")  # the table the docs link to: its numbers live here only
        text = time_markdown(sel)
        if measured_out.exists():
            measured = pd.read_csv(measured_out)
            if not args.any_recipe:
                measured = measured_at(measured, args.backbone, args.proxy, args.verify)
            v = verified_frame(sel, mine, measured, args.measure_seeds)
            if len(v):
                table_md = verified_markdown(v)
                text = (f"Measured again ({args.verify} the proxy's images, {args.measure_seeds} fresh paired seeds "
                        f"per config; 95 % t-intervals over benchmark seeds):\n\n{table_md}\n"
                        f"Single draws, as the searches saw them:\n\n{text}")
                print(table_md)
        md.write_text(f"<!-- written by `python bench/search_efficiency.py --backbone {args.backbone} --time-budget "
                      f"{args.time_budget:g} --out {out} --summary-only{' --any-recipe' * args.any_recipe}` -->\n\n"
                      f"{text}")
        print(f"table: {md}")
        if args.png:
            print(f"anytime curve: {plot_anytime(sel, mine, Path(args.png))}")
    else:
        print(summarise_budget(add_hypervolumes(sel)))


if __name__ == "__main__":
    main()
