"""Everything a search writes into ``--out``, from its trial records.

``update`` is cheap and runs after every finished trial (frames only, atomically); ``finalize`` runs at the end,
and again whenever ``python -m results DIR`` re-renders a directory, also while its search is still running.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from results.export import export_best
from results.frame import read_trials, trials_frame, write_pareto, write_trials
from results.pareto import hypervolume_history, reference_point, select_best
from results.plots import plot_effects, plot_hypervolume, plot_pareto

PARETO_PNG = "pareto.png"
HYPERVOLUME_PNG = "hypervolume.png"
EFFECTS_PNG = "effects.png"


def update(out_dir: str | os.PathLike[str], records: Iterable[Mapping], objectives: Sequence[str]) -> pd.DataFrame:
    """Rewrite ``trials.csv``, ``trials.parquet`` and ``pareto.csv`` from all records so far."""
    df = trials_frame(list(records))
    write_trials(df, out_dir)
    write_pareto(df, out_dir, objectives)
    return df


def finalize(
    out_dir: str | os.PathLike[str],
    records: Iterable[Mapping] | pd.DataFrame,
    objectives: Sequence[str],
    select: str = "knee",
    *,
    resolution: int = 224,
    dataset: str = "fashion-mnist",
    num_classes: int = 1000,
) -> dict[str, object]:
    """Frames, plots and the export of the chosen architecture. Returns the paths written and the chosen row
    (``best`` is ``None`` with a ``reason`` when no completed trial satisfies ``select``)."""
    out = Path(out_dir)
    df = records if isinstance(records, pd.DataFrame) else trials_frame(list(records))
    if not isinstance(records, pd.DataFrame):
        write_trials(df, out)
    write_pareto(df, out, objectives)
    written: dict[str, object] = {"trials.csv": out / "trials.csv", "pareto.csv": out / "pareto.csv"}
    best = None
    try:
        best = select_best(df, objectives, select)
    except ValueError as e:
        written["reason"] = str(e)
    written["pareto.png"] = plot_pareto(df, out / PARETO_PNG, objectives, best, resolution=resolution,
                                        best_label=f"chosen ({select})")
    try:
        ref = reference_point(df, objectives)
        written["hypervolume.png"] = plot_hypervolume(hypervolume_history(df, objectives, ref),
                                                      out / HYPERVOLUME_PNG, reference_point=ref)
        written["reference_point"] = ref
    except ValueError as e:  # nothing completed and no reference costs yet
        written.setdefault("reason", str(e))
    written["effects.png"] = plot_effects(df, out / EFFECTS_PNG)
    if best is not None:
        written.update(export_best(out, best, df, objectives, select, resolution=resolution, dataset=dataset,
                                   num_classes=num_classes))
    written["best"] = best
    return written


def render(out_dir: str | os.PathLike[str], objectives: Sequence[str], select: str = "knee", **kwargs) -> dict:
    """Re-render plots and exports of an existing ``--out`` from its ``trials`` files."""
    return finalize(out_dir, read_trials(out_dir), objectives, select, **kwargs)
