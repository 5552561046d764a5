"""What recomputing BatchNorm's statistics before validating (``precise_bn``) costs a ``default`` proxy trial.

Per backbone (default resnet50 and mobilenetv2_100) and config (the plain backbone and the paper default), one
``default`` trial with the preset's ``precise_bn`` and one with ``precise_bn=0``, back to back in interleaved rounds
(the order alternates from round to round, so that a drift of the machine's speed falls on both), the same seed,
one thread. The two trainings are the same step for step; the difference is the recomputation alone.

Rows (one per backbone, config and round; appended as they finish, so an interrupted run resumes) go to ``--out``;
the summary, the median ratio with its range over the rounds, is written as markdown beside them::

    python bench/precise_bn_cost.py --out docs/bench/precise_bn_cost.csv [--rounds 3]
    python bench/precise_bn_cost.py --out docs/bench/precise_bn_cost.csv --summary-only
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling trial_time
from trial_time import trial_seconds  # noqa: E402

from evaluators.proxy import preset  # noqa: E402
from space import ArchConfig  # noqa: E402

COLUMNS = ["backbone", "config", "round", "off_s", "on_s", "ratio", "precise_bn", "torch", "date"]
CONFIGS = {"plain": ArchConfig.baseline, "paper_default": ArchConfig.paper_default}


def _trial_s(arch: ArchConfig, precise_bn: int) -> float:
    return trial_seconds(arch, fidelity=preset("default", precise_bn=precise_bn))


def measure_round(backbone: str, config: str, round_: int) -> dict:
    """One round: the trial with and without the recomputation, back to back, the order alternating."""
    arch, on = CONFIGS[config](backbone), preset("default").precise_bn
    if round_ % 2:
        on_s, off_s = _trial_s(arch, on), _trial_s(arch, 0)
    else:
        off_s, on_s = _trial_s(arch, 0), _trial_s(arch, on)
    return {"backbone": backbone, "config": config, "round": round_, "off_s": off_s, "on_s": on_s,
            "ratio": on_s / off_s, "precise_bn": on, "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}


def summary(df: pd.DataFrame) -> str:
    lines = ["| backbone | config | rounds | without (s, median) | with (s, median) | ratio, median [min, max] |",
             "|---|---|---:|---:|---:|---:|"]
    for (backbone, config), g in df.groupby(["backbone", "config"], sort=False):
        lines.append(f"| {backbone} | {config} | {len(g)} | {g.off_s.median():.4g} | {g.on_s.median():.4g} | "
                     f"{g.ratio.median():.3f}× [{g.ratio.min():.3f}, {g.ratio.max():.3f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "mobilenetv2_100"])
    ap.add_argument("--rounds", type=int, default=3, help="rows per backbone and config (default 3)")
    ap.add_argument("--out", default="bench/out/precise_bn_cost.csv", help="raw rows (appended; resumed from)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    out = Path(args.out)
    torch.set_num_threads(1)  # as a search's trials run: one CPU each
    df = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=COLUMNS)
    if not args.summary_only:
        out.parent.mkdir(parents=True, exist_ok=True)
        for backbone in args.backbones:
            for config in CONFIGS:
                done = set(df[(df.backbone == backbone) & (df.config == config)]["round"].astype(int))
                for r in (r for r in range(args.rounds) if r not in done):
                    row = measure_round(backbone, config, r)
                    print(f"{backbone:<16} {config:<13} round {r}: without {row['off_s']:.4g} s, with "
                          f"{row['on_s']:.4g} s, ratio {row['ratio']:.3f}", flush=True)
                    pd.DataFrame([row], columns=COLUMNS).to_csv(out, mode="a", header=not out.exists(), index=False)
                    df = pd.concat([df, pd.DataFrame([row])], ignore_index=True)
    if df.empty:
        print(f"no rows yet in {out}")
        return 0
    md = summary(df)
    out.with_suffix(".md").write_text(f"<!-- written by `python bench/precise_bn_cost.py --out {out} --summary-only` "
                                      f"-->\n\n{md}\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
