"""``python -m results DIR``: re-render plots, summary and exports of a search directory (also mid-search)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluators.data import DEFAULT_DATASET
from results.export import NUM_CLASSES
from results.report import render
from results.schema import MANIFEST, TRIALS_CSV, TRIALS_PARQUET
from results.select import DEFAULT_RULE, parse_select_rule


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m results", description=__doc__)
    ap.add_argument("out", help="a search's --out directory")
    ap.add_argument("--select", default=None, help="knee | max-accuracy | max-accuracy-under G | min-gflops-over A")
    ap.add_argument("--objectives", default=None, help="default: those the search used")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not (out / TRIALS_CSV).exists() and not (out / TRIALS_PARQUET).exists():
        print(f"error: {out} holds no trials.csv: not a search directory (or no trial has finished yet)",
              file=sys.stderr)
        return 2
    manifest = {}
    if (out / MANIFEST).exists():
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    if not args.objectives and "objectives" not in manifest:
        print(f"error: {out} holds no search.json to read the objectives from; give --objectives", file=sys.stderr)
        return 2
    objectives = (args.objectives or ",".join(manifest["objectives"])).split(",")
    select = args.select or manifest.get("select", DEFAULT_RULE)
    try:
        parse_select_rule(select)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = render(out, objectives, select, resolution=manifest.get("resolution", 224),
                     dataset=manifest.get("dataset", DEFAULT_DATASET),
                     num_classes=manifest.get("num_classes", NUM_CLASSES))
    for name, value in written.items():
        if isinstance(value, Path):
            print(f"{name:>16}: {value}")
    if written.get("best") is None:
        print(f"no architecture chosen: {written.get('reason')}")
    else:
        print(f"chosen ({select}): trial {written['best']['trial_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
