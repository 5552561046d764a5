"""``python -m results DIR``: re-render plots, summary and exports of a search directory (also mid-search)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from results.manifest import read_manifest, render_settings
from results.report import render
from results.schema import MANIFEST, TRIALS_CSV, TRIALS_PARQUET
from results.select import SELECT_RULE_FORMS, parse_select_rule


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m results", description=__doc__)
    ap.add_argument("out", help="a search's --out directory")
    ap.add_argument("--select", default=None, help=f"{SELECT_RULE_FORMS} (default: the search's)")
    ap.add_argument("--objectives", default=None, help="default: those the search used")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not (out / TRIALS_CSV).exists() and not (out / TRIALS_PARQUET).exists():
        print(f"error: {out} holds no trials.csv: not a search directory (or no trial has finished yet)",
              file=sys.stderr)
        return 2
    try:
        settings = render_settings(read_manifest(out))
    except FileNotFoundError:
        print(f"error: {out} holds no {MANIFEST} to read the search's settings from", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    objectives = args.objectives.split(",") if args.objectives else settings.pop("objectives")
    settings.pop("objectives", None)
    select = args.select or settings.pop("select")
    settings.pop("select", None)
    try:
        parse_select_rule(select)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = render(out, objectives, select, **settings)
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
