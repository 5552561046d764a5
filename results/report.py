"""Everything a search writes into ``--out``, from its trial records.

``update`` is cheap and runs after every finished trial (frames only, atomically); ``finalize`` runs at the end,
and again whenever ``python -m results DIR`` re-renders a directory, also while its search is still running.

``cost_spread.json`` (the spread of each cost objective over the space, written by the search when it starts:
``evaluators.cost_spread``) is carried into ``best_config.md``, so that a flat cost axis is said where the choice
is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from evaluators.data import DEFAULT_DATASET
from results.choice import better_than_plain
from results.config_stats import config_means
from results.export import NUM_CLASSES, export_best
from results.frame import read_trials, trials_frame, write_front, write_trials
from results.io import atomic_write_text
from results.model import search_results
from results.pareto import hypervolume_history, pareto_front, reference_point
from results.plots import param_importances, plot_effects, plot_hypervolume, plot_pareto
from results.schema import (
    BEST_MD,
    COST_SPREAD_JSON,
    EFFECTS_PNG,
    HYPERVOLUME_PNG,
    PARETO_CSV,
    PARETO_PNG,
    STUDY_DB,
    TRIALS_CSV,
)
from results.select import DEFAULT_RULE
from results.tensorboard import TENSORBOARD_DIR, write_search_run


def write_cost_spread(out_dir: str | os.PathLike[str], spread: Mapping) -> Path:
    """``cost_spread.json``: ``evaluators.cost_spread.CostSpread.to_dict()`` (its ``lines`` are what is shown)."""
    path = Path(out_dir) / COST_SPREAD_JSON
    atomic_write_text(path, json.dumps(dict(spread), indent=2, sort_keys=True) + "\n")
    return path


def read_cost_spread(out_dir: str | os.PathLike[str]) -> dict | None:
    """The search's ``cost_spread.json``, or None where there is none (older searches) or it is unreadable."""
    try:
        spread = json.loads((Path(out_dir) / COST_SPREAD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return spread if isinstance(spread, dict) and isinstance(spread.get("lines"), list) else None


def cost_spread_markdown(spread: Mapping) -> str:
    """The spread as a section of ``best_config.md``: the header, one bullet per objective, flat axes in bold."""
    lines = [str(line) for line in spread["lines"]]
    body = [lines[0][:1].upper() + lines[0][1:], ""] if lines else []
    body += [f"- {line.strip()}" for line in lines[1:] if line.startswith("  ")]
    flat = [line for line in lines[1:] if not line.startswith("  ")]
    if flat:
        body += ["", *[f"**{line}**" for line in flat]]
    return "\n".join(["## Cost spread over the space", "", *body]) + "\n"


def _append_cost_spread(out: Path, md_path: Path) -> None:
    spread = read_cost_spread(out)
    if spread is None or not md_path.is_file():
        return
    text = md_path.read_text(encoding="utf-8")
    atomic_write_text(md_path, text.rstrip("\n") + "\n\n" + cost_spread_markdown(spread))


def update(out_dir: str | os.PathLike[str], records: Iterable[Mapping], objectives: Sequence[str]) -> pd.DataFrame:
    """Rewrite ``trials.csv``, ``trials.parquet`` (every trial and replicate) and ``pareto.csv`` (the front of the
    per-config means) from all records so far."""
    df = trials_frame(list(records))
    write_trials(df, out_dir)
    means = config_means(df, objectives)  # no choice while the search runs: the means and their front only
    write_front(pareto_front(means, objectives), out_dir)
    _hypervolumes(out_dir, means, objectives)
    return df


def _hypervolumes(out_dir: str | os.PathLike[str], means: pd.DataFrame,
                  objectives: Sequence[str]) -> tuple[pd.Series, dict[str, float]] | None:
    """The hypervolume after each trial and its reference point, also written as the search's TensorBoard run;
    None while no reference point can be set (nothing completed and no reference costs yet)."""
    try:
        ref = reference_point(means, objectives)
    except ValueError:
        return None
    history = hypervolume_history(means, objectives, ref)
    write_search_run(out_dir, history, ref)
    return history, ref


def finalize(
    out_dir: str | os.PathLike[str],
    records: Iterable[Mapping] | pd.DataFrame,
    objectives: Sequence[str],
    select: str = DEFAULT_RULE,
    *,
    resolution: int = 224,
    dataset: str = DEFAULT_DATASET,
    num_classes: int = NUM_CLASSES,
    fidelity: str = "the verification fidelity",
    verify_score: str | None = None,
) -> dict[str, object]:
    """Frames, plots and the export of the chosen architecture. Returns the paths written and the chosen row
    (``best`` is ``None`` with a ``reason`` when no completed trial satisfies ``select``). Fronts, plots and the
    choice use the per-config means (:func:`results.config_stats.config_means`)."""
    out = Path(out_dir)
    df = records if isinstance(records, pd.DataFrame) else trials_frame(list(records))
    if not isinstance(records, pd.DataFrame):
        write_trials(df, out)
    results = search_results(df, objectives, select, fidelity, verify_score)  # once; everything below reads it
    means, choice = results.means, results.choice
    write_front(results.front, out)
    written: dict[str, object] = {TRIALS_CSV: out / TRIALS_CSV, PARETO_CSV: out / PARETO_CSV}
    if choice is None:
        written["reason"] = results.reason
    best = choice.best if choice is not None else None
    written[PARETO_PNG] = plot_pareto(means, out / PARETO_PNG, objectives, results.chosen_on_proxy,
                                      resolution=resolution,
                                        best_label=f"chosen ({select})")
    hypervolumes = _hypervolumes(out, means, objectives)
    if hypervolumes is not None:
        history, ref = hypervolumes
        written[HYPERVOLUME_PNG] = plot_hypervolume(history, out / HYPERVOLUME_PNG, reference_point=ref)
        written["reference_point"] = ref
        written["tensorboard"] = out / TENSORBOARD_DIR
    importances = param_importances(out / STUDY_DB) if (out / STUDY_DB).is_file() else {}
    written[EFFECTS_PNG] = plot_effects(means, out / EFFECTS_PNG, importances=importances, objective=objectives[0])
    if choice is not None:
        written.update(export_best(out, results, resolution=resolution, dataset=dataset, num_classes=num_classes))
        _append_cost_spread(out, Path(written[BEST_MD]))
        written["note"] = choice.note
        written["answer"] = choice.answer
        written["score"] = choice.score
        written["better_than_plain"] = better_than_plain(choice)
    written["best"] = best
    return written


def render(out_dir: str | os.PathLike[str], objectives: Sequence[str], select: str = DEFAULT_RULE,
           **kwargs) -> dict:
    """Re-render plots and exports of an existing ``--out`` from its ``trials`` files."""
    return finalize(out_dir, read_trials(out_dir), objectives, select, **kwargs)
