"""Is the search worth its machinery? Hypervolume against random search, early stopping on and off, overhead share.

Runs real searches through the command line (``run_search.py``, Fashion-MNIST) at the same budget, for several
seeds, in three variants:

* ``nsga2-es``: the tool's default (NSGA-II proposing, multi-objective ASHA stopping weak trials);
* ``nsga2``: the same without early stopping (the ablation: does stopping lose the front?);
* ``random``: Optuna's random sampler without early stopping (the baseline the issue asks to beat).

For each run: the hypervolume of the completed trials in (error, GFLOPs) against one reference point shared by
every run (error 1, 1.1 x the larger GFLOPs of the two reference configs, which every run trains first), the
wall time of the whole command (imports, Ray start-up, every trial, result files), and the share of that wall
time not spent inside proxy trainings: ``1 - sum(trial proxy time) / (wall x concurrent trials)``, where a
trial's proxy time is the ``time_s`` of its last report (model build, data subset, training and validation).
Ray, Optuna, FLOP counting, scheduling and idle slots are what is left.
A second hypervolume, ``hv_gain``, counts only what beats the references (point: the plain backbone's error, the
paper default's GFLOPs; see :func:`gain_hypervolume`).
The summary also prints a ceiling: the hypervolume of every completed trial of every run pooled, divided by each
random run's. No search at this budget can expect to beat random search by more than that ratio unless it finds
configs better than all the runs together found (see :func:`pooled_hypervolume`).

Results: ``bench/out/search_efficiency.csv`` (one row per run; finished runs are skipped when re-run, so an
interrupted benchmark resumes) and a summary on stdout.

    python bench/search_efficiency.py [--backbone resnet18] [--proxy default] [--budget 50] [--seeds 0 1 2]

The issue's figure is for resnet50 with the ``default`` preset; several seeds of that do not fit one sitting on
2 cores, so resnet18 with the same ``default`` preset (2 epochs, so early stopping has a rung to act on; the
``fast`` preset has a single epoch) stands in by default.
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

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results.frame import read_trials  # noqa: E402
from results.pareto import hypervolume, pareto_front, reference_point  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
VARIANTS = {
    "nsga2-es": ["--sampler", "nsga2", "--early-stopping"],
    "nsga2": ["--sampler", "nsga2", "--no-early-stopping"],
    "random": ["--sampler", "random", "--no-early-stopping"],
}
OBJECTIVES = ["accuracy", "gflops"]


def proxy_seconds(run_dir: Path) -> float:
    """Sum over trials of the proxy time of their last report (Ray's result.json files, every session)."""
    total = 0.0
    for result in run_dir.glob("ray/session-*/*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        if lines:
            total += float(json.loads(lines[-1]).get("train_time_s", 0.0))
    return total


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = OUT / "search_efficiency" / f"{args.backbone}-{args.proxy}-{variant}-s{seed}"
    if run_dir.exists():  # an interrupted earlier attempt: start again, its timing would be wrong
        shutil.rmtree(run_dir)
    cmd = [sys.executable, str(ROOT / "run_search.py"), "--backbone", args.backbone, "--proxy", args.proxy,
           "--budget", str(args.budget), "--seed", str(seed), "--max-concurrent", str(args.max_concurrent),
           "--out", str(run_dir), "--objectives", ",".join(OBJECTIVES), "--replicates", "0", *VARIANTS[variant]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    df = read_trials(run_dir)
    counts = df["status"].value_counts().to_dict()
    useful = proxy_seconds(run_dir)
    return {
        "variant": variant, "seed": seed, "backbone": args.backbone, "proxy": args.proxy, "budget": args.budget,
        "trials": len(df), "completed": counts.get("completed", 0), "stopped": counts.get("stopped", 0),
        "failed": counts.get("failed", 0), "wall_s": round(wall, 1), "proxy_s": round(useful, 1),
        "max_concurrent": args.max_concurrent,
        "overhead_share": round(1 - useful / (wall * args.max_concurrent), 4),
        "best_accuracy": float(df.loc[df.status == "completed", "accuracy"].max()),
        "front_size": len(pareto_front(df, OBJECTIVES)), "run_dir": str(run_dir),
    }


def add_hypervolumes(table: pd.DataFrame) -> pd.DataFrame:
    """Hypervolume of every run against one reference point (the two reference configs' GFLOPs are the same in
    every run on a backbone, so the point is too; it is checked), and in ``attrs`` the pooled ceiling
    (:func:`pooled_hypervolume`)."""
    trials = [read_trials(d) for d in table.run_dir]
    points = {json.dumps(reference_point(df, OBJECTIVES), sort_keys=True) for df in trials}
    if len(points) != 1:
        raise RuntimeError(f"runs disagree on the reference point: {points}")
    ref = json.loads(points.pop())
    table = table.copy()
    table["hypervolume"] = [hypervolume(df, OBJECTIVES, ref) for df in trials]
    table["hv_gain"] = [gain_hypervolume(df) for df in trials]
    table.attrs["reference_point"] = ref
    table.attrs["pooled_hypervolume"] = pooled_hypervolume(trials, ref)
    return table


def gain_hypervolume(df: pd.DataFrame) -> float:
    """Hypervolume of what beats the references: reference point (the plain backbone's error, the paper
    default's GFLOPs) of the same run.

    The shared point above (error 1) credits every front with the plain backbone's whole accuracy, which every
    run trains first; when the attention costs almost no FLOPs that constant swamps the differences between
    searches. This box counts only accuracy gained over the plain backbone at no more than the paper's cost.
    """
    refs = df.set_index(df["reference"].astype("string").fillna(""))
    base, paper = refs.loc["baseline"], refs.loc["paper_default"]
    return hypervolume(df, OBJECTIVES, {"error": 1.0 - float(base["accuracy"]), "gflops": float(paper["gflops"])})


def pooled_hypervolume(trials: list[pd.DataFrame], ref: dict[str, float]) -> float:
    """Hypervolume of the front of every run's trials pooled, against the shared reference point ``ref``.

    A ceiling for the comparison with random search: it is what a search would reach had it found, within its
    budget, the best of everything that all the benchmarked searches (every variant and seed) found together.
    """
    return hypervolume(pd.concat(trials, ignore_index=True), OBJECTIVES, ref)


def summarise(table: pd.DataFrame) -> str:
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

    def paired(a: str, b: str, column: str) -> list[float]:
        seeds = sorted(set(table[table.variant == a].seed) & set(table[table.variant == b].seed))
        return [by.loc[(a, s), column] / by.loc[(b, s), column] for s in seeds]

    for a, b in (("nsga2-es", "random"), ("nsga2", "random"), ("nsga2-es", "nsga2")):
        ratios = paired(a, b, "hypervolume")
        if ratios:
            geo = math.exp(statistics.mean(math.log(r) for r in ratios))
            lines.append(f"HV {a} / {b}: " + ", ".join(f"{r:.3f}" for r in ratios) + f" (geomean {geo:.3f})")
        gains = paired(a, b, "hv_gain")
        if gains:  # a zero gain (nothing beat the plain backbone) makes a ratio meaningless: inf or nan
            lines.append(f"HV over the references {a} / {b}: " + ", ".join(f"{r:.2f}" for r in gains))
    baseline = table[table.variant == "random"]
    if len(baseline):
        ceiling = table.attrs["pooled_hypervolume"]
        lines.append(f"ceiling: the {len(table)} runs' trials pooled have HV {ceiling:.4f}, "
                     + ", ".join(f"{ceiling / hv:.3f}" for hv in baseline.hypervolume)
                     + f" x random's (seeds {baseline.seed.tolist()})")
    times = paired("nsga2-es", "nsga2", "wall_s")
    if times:
        lines.append("wall time with / without early stopping: " + ", ".join(f"{r:.2f}" for r in times))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--proxy", default="default")
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--out", default=str(OUT / "search_efficiency.csv"))
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(out) if out.exists() else pd.DataFrame()
    if not args.summary_only:
        for seed in args.seeds:  # seed-major: a partial benchmark still compares the variants on the same seeds
            for variant in args.variants:
                key = (args.backbone, args.proxy, args.budget, variant, seed)
                if len(table) and any(tuple(r) == key for r in
                                      table[["backbone", "proxy", "budget", "variant", "seed"]].itertuples(
                                          index=False)):
                    continue
                row = run_one(variant, seed, args)
                print(f"{variant:>9} seed {seed}: {row['trials']} trials ({row['stopped']} stopped) in "
                      f"{row['wall_s'] / 60:.1f} min, overhead {100 * row['overhead_share']:.1f} %", flush=True)
                table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
                tmp = out.with_suffix(".tmp")
                table.to_csv(tmp, index=False)
                tmp.replace(out)
    sel = table[(table.backbone == args.backbone) & (table.proxy == args.proxy) & (table.budget == args.budget)]
    print(summarise(add_hypervolumes(sel.reset_index(drop=True))))


if __name__ == "__main__":
    main()
