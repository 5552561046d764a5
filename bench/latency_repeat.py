"""Can the latency objective rank configs? The same configs measured twice, independently, on one machine.

Twelve resnet50 configs: the two references (plain backbone, paper default), SCSA with the paper's settings in one
stage at a time, timm's SE / ECA / CBAM at their own slot in every block, and three samples of the default
SearchSpace. Each is measured as a latency ratio to the plain backbone (``evaluators.latency.latency_ratio``:
interleaved rounds, no cache), all configs once, then all again in reverse order (so that a drift over the run
does not line up with the config order twice). With ``--absolute`` the absolute median forward time
(``measure_latency``, each config on its own) is measured the same way, for comparison.

Printed: per config both ratios and their relative difference; then the run-to-run spread (median and max of
``|a - b| / mean(a, b)`` over the configs other than the plain backbone, whose ratio is 1 by definition) and the
Spearman correlation between the two runs with its 95 % bootstrap interval over configs. ``--summary-only``
prints the same from the rows of ``--csv``.

    python bench/latency_repeat.py                                      # full size: 224 px, 10 rounds, 12 configs
    python bench/latency_repeat.py --resolution 32 --repeats 3 --configs 4 --warmup 1      # a wiring check
    python bench/latency_repeat.py --csv docs/bench/latency_repeat.csv --summary-only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity_stats import bootstrap_spearman  # noqa: E402

from evaluators.latency import latency_ratio, measure_latency  # noqa: E402
from space import ArchConfig, SearchSpace, StageConfig  # noqa: E402
from space.backbones import num_stages  # noqa: E402


def configs(backbone: str) -> list[tuple[str, ArchConfig]]:
    """The twelve configs, references first."""
    n = num_stages(backbone)
    plain = ArchConfig.baseline(backbone)
    out = [("plain", plain), ("paper_default", ArchConfig.paper_default(backbone))]
    for i in range(n):
        stages = list(plain.stages)
        stages[i] = StageConfig.scsa()
        out.append((f"scsa_stage{i + 1}", ArchConfig(backbone, tuple(stages))))
    for attn in ("se", "eca", "cbam"):
        out.append((f"{attn}_end_all", ArchConfig(backbone, (StageConfig(attn, "end", "all"),) * n)))
    space = SearchSpace(backbone)
    out += [(f"sample{seed}", space.sample(seed)) for seed in range(3)]
    return out


def spread(a: pd.Series, b: pd.Series, names: pd.Series) -> tuple[float, float, float, float, float]:
    """Median and max relative difference (plain backbone left out), and the Spearman correlation with its 95 %
    bootstrap interval over configs."""
    rel = ((a - b).abs() / ((a + b) / 2))[names != "plain"]
    rho, lo, hi, _ = bootstrap_spearman(a, b)
    return float(rel.median()), float(rel.max()), rho, lo, hi


def summarise(df: pd.DataFrame) -> None:
    print(f"{'config':<14} {'ratio a':>8} {'ratio b':>8} {'rel diff':>9}")
    for _, row in df.iterrows():
        rel = abs(row.ratio_a - row.ratio_b) / ((row.ratio_a + row.ratio_b) / 2)
        print(f"{row.config:<14} {row.ratio_a:8.4f} {row.ratio_b:8.4f} {100 * rel:8.2f}%")
    kinds = [("ratio to the plain backbone (interleaved)", "ratio")]
    if "median_ms_a" in df:
        kinds.append(("absolute median ms (each config alone)", "median_ms"))
    for label, col in kinds:
        med, worst, rho, lo, hi = spread(df[f"{col}_a"], df[f"{col}_b"], df["config"])
        print(f"{label}: run-to-run difference median {100 * med:.2f} %, max {100 * worst:.2f} %; "
              f"Spearman {rho:+.3f} (95 % bootstrap interval over configs {lo:+.2f} .. {hi:+.2f}, n={len(df)})")
    ratios = [r for r in df["ratio_a"].tolist() + df["ratio_b"].tolist() if r != 1.0]
    if ratios:
        print(f"ratios span {min(ratios):.4f} .. {max(ratios):.4f} (median {statistics.median(ratios):.4f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds per measurement (default 10)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="as a search's trials run (1 CPU each by default)")
    ap.add_argument("--configs", type=int, default=12, help="measure only the first N of the twelve configs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--absolute", action="store_true", help="also measure absolute medians twice, for comparison")
    ap.add_argument("--csv", default=None, help="write the raw rows here (e.g. docs/bench/latency_repeat.csv)")
    ap.add_argument("--summary-only", action="store_true", help="measure nothing: summarise the rows of --csv")
    args = ap.parse_args(argv)
    if args.summary_only:
        if not args.csv or not Path(args.csv).exists():
            ap.error("--summary-only needs --csv FILE with the rows of an earlier run")
        summarise(pd.read_csv(args.csv))
        return 0
    chosen = configs(args.backbone)[: max(1, args.configs)]
    kw = dict(resolution=args.resolution, batch=args.batch, device=args.device, repeats=args.repeats,
              warmup=args.warmup, threads=args.threads)
    start = time.perf_counter()
    rows = {name: {"config": name, "config_json": arch.to_json()} for name, arch in chosen}
    for run, order in (("a", chosen), ("b", chosen[::-1])):
        for name, arch in order:
            r = latency_ratio(arch, use_cache=False, **kw)
            rows[name].update({f"ratio_{run}": r.ratio, f"ratio_iqr_{run}": r.ratio_iqr, f"plain_ms_{run}": r.plain_ms})
            if args.absolute:
                rows[name][f"median_ms_{run}"] = measure_latency(arch, **kw).median_ms
            print(f"run {run}: {name:<14} ratio {r.ratio:.4f} (iqr {r.ratio_iqr:.4f}, plain {r.plain_ms:.1f} ms)",
                  flush=True)
    df = pd.DataFrame(list(rows.values()))
    print(f"\n{args.backbone} at {args.resolution} px, batch {args.batch}, {args.threads} thread(s), "
          f"{args.repeats} rounds + {args.warmup} warm-up, torch {torch.__version__}, "
          f"{time.perf_counter() - start:.0f} s")
    summarise(df)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        df.assign(backbone=args.backbone, resolution=args.resolution, batch=args.batch, threads=args.threads,
                  repeats=args.repeats, device=args.device).to_csv(args.csv, index=False)
        print(f"rows: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
