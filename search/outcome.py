"""What a session of the search did and where its results are (:class:`SearchOutcome`), and how the command line
says so (:func:`print_outcome`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results.schema import BEST_JSON, BEST_MD, PARETO_CSV, PARETO_PNG, SEEDS, TRIALS_CSV
from space import ArchConfig

from .settings import SearchSettings

__all__ = ["SearchOutcome", "print_outcome"]


@dataclass
class SearchOutcome:
    """What a session did and where its results are."""

    out: Path
    launched_total: int
    budget: int
    counts: dict[str, int]
    interrupted: bool = False
    timed_out: bool = False
    exhausted: bool = False
    duplicates: int = 0
    replicate_counts: dict[str, int] = field(default_factory=dict)
    noise: str = ""
    note: str = ""  # why the choice differs from what the --select rule picked (results.choice)
    answer: str = ""  # the one sentence a user can act on (results.choice.Choice.answer)
    score: str = ""  # what the chosen row's score is in (the verification's, once verified)
    better_than_plain: str = ""  # the replicated configs distinguishably better than the plain backbone
    written: dict[str, Any] = field(default_factory=dict)
    best: Any = None
    reason: str = ""


def print_outcome(outcome: SearchOutcome, settings: SearchSettings) -> None:
    """The end of a search, for the terminal: what was recorded, the noise, where the files are, the choice."""
    out = outcome.out
    c = outcome.counts
    print(f"\n{sum(c.values())} trial(s) recorded of a budget of {outcome.budget}: completed {c['completed']}, "
          f"stopped {c['stopped']}, failed {c['failed']}"
          + (f"; {outcome.duplicates} duplicate suggestion(s) answered from earlier trials" if outcome.duplicates
             else ""))
    r = outcome.replicate_counts
    if r and sum(r.values()):
        print(f"{sum(r.values())} run(s) of the finalists (replicates and verification): completed "
              f"{r['completed']}, failed "
              f"{r['failed']}" + (f", cut short {r['stopped']}" if r["stopped"] else ""))
    if outcome.noise:
        print(outcome.noise)
    if outcome.exhausted:
        print("the sampler kept proposing configs tried already: the space looks exhausted")
    if outcome.timed_out:
        print(f"time budget of {settings.time_budget_min:g} min reached")
    print(f"results in {out}:")
    shown = {TRIALS_CSV, PARETO_CSV, PARETO_PNG, BEST_JSON, BEST_MD}
    for name, path in sorted(outcome.written.items()):
        if name in shown or "mmpretrain" in str(path):
            print(f"  {name:<18} {path}")
    print(f"  {'study.db':<18} {out / 'study.db'}  (optuna-dashboard sqlite:///{out / 'study.db'})")
    best = outcome.best
    if best is not None:
        if outcome.answer:
            print(f"\n{outcome.answer}")
        seeds, score = int(best.get(SEEDS, 1) or 1), outcome.score or settings.objectives[0]
        print(f"  chosen by {settings.select}: {best['trial_id']} {score} {float(best[score]):.4f}"
              + (f" (mean of {seeds} seeds)" if seeds > 1 else "") + f", {float(best['gflops']):.3f} GFLOPs")
        if outcome.note:
            print(f"  {outcome.note}")
        if outcome.better_than_plain:
            print(f"  {outcome.better_than_plain}")
        try:
            print(f"  {ArchConfig.from_dict(json.loads(best['config_json'])).describe()}")
        except Exception:  # the id and numbers above are what matter
            pass
        print(f"  the finalists' table: {out / BEST_MD}")
    elif outcome.reason:
        print(f"no config chosen: {outcome.reason}")
