"""PNG figures of a search: the accuracy/GFLOPs front, the hypervolume history, per-stage effects.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly rather than through
``pyplot``: no global backend switch, no figure registry to leak from, safe to call from a worker thread while a
search runs. Files are written atomically (see :mod:`results.io`), so ``pareto.png`` is never half-written.

Example::

    from results.frame import read_trials
    from results.select import select_best
    from results.plots import plot_pareto

    df = read_trials("runs/resnet50")
    plot_pareto(df, "runs/resnet50/pareto.png", best=select_best(df))
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from results.io import atomic_path
from results.pareto import (
    DEFAULT_OBJECTIVES,
    OBJECTIVE_DIRECTIONS,
    OBJECTIVE_LABELS,
    REFERENCE_LABELS,
    pareto_front,
)
from results.schema import COMPLETED, FAILED, SEEDS, STOPPED, interval_column, stage_numbers

__all__ = ["cost_axis", "param_importances", "plot_effects", "plot_hypervolume", "plot_pareto"]

logger = logging.getLogger(__name__)

_REFERENCE_STYLE = {
    "baseline": {"marker": "s", "color": "#222222"},
    "paper_default": {"marker": "D", "color": "#c0392b"},
}
_DPI = 150
# `vert=False` is deprecated from matplotlib 3.10 in favour of `orientation`, which older releases (setup.cfg allows
# >= 3.8) do not know.
_HORIZONTAL = {"orientation": "horizontal"} if matplotlib.__version_info__ >= (3, 10) else {"vert": False}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        # The temporary name ends in .tmp, so the format must be explicit.
        fig.savefig(tmp, format="png", dpi=_DPI)
    return target


def _status(df: pd.DataFrame) -> pd.Series:
    if "status" not in df.columns:
        return pd.Series(COMPLETED, index=df.index)
    return df["status"].astype("string").fillna("")


def _finite_xy(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    vals = df[[x, y]].apply(pd.to_numeric, errors="coerce")
    return df[np.isfinite(vals.to_numpy(dtype=float)).all(axis=1)]


def _backbone(df: pd.DataFrame) -> str:
    if "backbone" in df.columns:
        names = [b for b in df["backbone"].astype("string").fillna("").unique() if b]
        if names:
            return ", ".join(sorted(names))
    return "backbone"


def _resolve_best(df: pd.DataFrame, best: pd.Series | Hashable | None) -> pd.Series | None:
    if best is None:
        return None
    if isinstance(best, pd.Series):
        return best
    return df.loc[best]


# ------------------------------------------------------------------------------------------------------ front


def _quality_scale(objective: str) -> tuple[float, str]:
    """How the first objective is drawn: accuracy in %, any other score as it is (and which way is better)."""
    if objective == "accuracy":
        return 100.0, "proxy validation accuracy (%)"
    better = "higher" if OBJECTIVE_DIRECTIONS.get(objective) == "maximize" else "lower"
    return 1.0, f"{OBJECTIVE_LABELS.get(objective, objective)}, {better} is better"


def plot_pareto(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    best: pd.Series | Hashable | None = None,
    *,
    resolution: int = 224,
    best_label: str = "chosen",
    title: str | None = None,
) -> Path:
    """The first objective (the proxy score; accuracy in %) against the first cost objective (GFLOPs at
    ``resolution`` px, or latency, or parameters) for every config, with the front, the references and the
    finalists' intervals marked.

    Completed configs are filled dots (means over their seeds, with 95 % interval bars where replicates exist);
    trials stopped early are faint hollow dots (their score is from a lower fidelity, so they are shown but never on
    the front). The score/GFLOPs front of completed configs is drawn as a step line (best score reachable at each
    GFLOPs budget); with more than two ``objectives`` the configs on the full multi-objective front are ringed as
    well. The rows with ``reference`` ``"baseline"`` and ``"paper_default"`` get their own markers and labels, and
    ``best`` (a row from :func:`results.select.select_best`, or an index label of ``df``) a star. A second cost
    scale on top reads in % over the plain backbone. Returns the path written.
    """
    y = objectives[0]
    x, xname, xlabel, xunit = cost_axis(objectives, resolution)
    scale, ylabel = _quality_scale(y)
    status = _status(df)
    completed = _finite_xy(df[status == COMPLETED], x, y)
    stopped = _finite_xy(df[status == STOPPED], x, y)
    n_failed = int((status == FAILED).sum())

    fig = _new_figure(8.0, 5.6)
    ax = fig.add_subplot()
    if len(stopped):
        ax.scatter(stopped[x], scale * stopped[y], s=28, facecolors="none", edgecolors="#999999", alpha=0.6,
                   linewidths=0.9, label=f"stopped early ({len(stopped)})", zorder=2)
    if len(completed):
        ax.scatter(completed[x], scale * completed[y], s=30, color="#4c72b0", alpha=0.55, linewidths=0,
                   label=f"completed ({len(completed)})", zorder=3)
        front = pareto_front(completed, [y, x]).sort_values(x, kind="mergesort")
        # "post" steps: at a cost budget between two front points the best reachable score is the left one's.
        ax.step(front[x], scale * front[y], where="post", color="#dd8452", linewidth=1.8, zorder=4,
                label=f"front: {y} vs {xname} ({len(front)})")
        ax.scatter(front[x], scale * front[y], s=34, color="#dd8452", zorder=5)
        if len(objectives) > 2:
            full = pareto_front(completed, objectives)
            ax.scatter(full[x], scale * full[y], s=110, facecolors="none", edgecolors="#55a868",
                       linewidths=1.3, zorder=5, label=f"non-dominated in {', '.join(objectives)} ({len(full)})")

    _interval_bars(ax, completed, y, scale, x)
    _percent_axis(ax, df, x)
    labels = _mark_references(ax, df, y, scale, x)
    chosen = _resolve_best(df, best)
    if chosen is not None and np.isfinite(float(chosen.get(x, np.nan))):
        gx, ay = float(chosen[x]), scale * float(chosen[y])
        value = f"{ay:.2f}%" if y == "accuracy" else f"{y} {ay:.4g}"
        ax.scatter([gx], [ay], s=320, marker="*", color="#f1c40f", edgecolors="black", linewidths=0.8, zorder=7,
                   label=f"{best_label}: {value} at {gx:.3g} {xunit}")
        # First in the list, so the chosen row gets the best label spot.
        labels.insert(0, (gx, ay, best_label, "#7d6608"))

    counts = f"{len(df)} configs: {len(completed)} completed, {len(stopped)} stopped, {n_failed} failed"
    ax.set_title(title or f"{_backbone(df)}: {OBJECTIVE_LABELS.get(y, y)} vs {xname}\n{counts}", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.1)
    _place_labels(ax, labels)
    if ax.get_legend_handles_labels()[0]:
        corner = "lower right" if y == "accuracy" else "best"
        ax.legend(loc=corner, fontsize=8, framealpha=0.9, markerscale=0.8)
    return _save(fig, path)


def _interval_bars(ax: Axes, completed: pd.DataFrame, objective: str, scale: float, x: str = "gflops") -> None:
    """95 % interval bars on the configs trained with several seeds (the finalists; see results.config_stats)."""
    column = interval_column(objective)
    if column not in completed.columns:
        return
    rows = completed[pd.to_numeric(completed[column], errors="coerce").notna()]
    if rows.empty:
        return
    seeds = int(rows[SEEDS].max()) if SEEDS in rows.columns else 0
    ax.errorbar(rows[x], scale * rows[objective], yerr=scale * rows[column].astype(float), fmt="none",
                ecolor="#333333", elinewidth=1.0, capsize=3, zorder=4,
                label=f"finalists: mean of up to {seeds} seeds, 95 % interval ({len(rows)})")


def _percent_axis(ax: Axes, df: pd.DataFrame, x: str = "gflops") -> None:
    """A second cost scale on top, in % over the plain backbone: how much of the cost the range really spans."""
    if "reference" not in df.columns or x not in df.columns:
        return
    plain = pd.to_numeric(df.loc[df["reference"].astype("string") == "baseline", x], errors="coerce").dropna()
    if plain.empty or not plain.iloc[0] > 0:
        return
    base = float(plain.iloc[0])
    top = ax.secondary_xaxis("top", functions=(lambda g: 100 * (g / base - 1), lambda p: base * (1 + p / 100)))
    what = "FLOPs" if x == "gflops" else cost_axis(["", x])[1]
    top.set_xlabel(f"{what} over the plain backbone (%)", fontsize=9)


def _place_labels(ax: Axes, labels: list[tuple[float, float, str, str]]) -> None:
    """Annotate points with short labels that stay inside the axes and off each other.

    Labels go above their point: the marked points (references, chosen) sit on or near the front, which is the
    upper envelope of the cloud, so above it is empty space; the y-limits get a little headroom for that. A label
    goes right of its point in the left part of the plot and left of it in the right part, so it stays inside the
    axes; one that would overlap an earlier label is moved below its point instead.
    """
    ax.autoscale_view()
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.08 * (high - low))
    to_axes = ax.transLimits  # data -> axes fraction, valid now that the limits are fixed
    # Run the constrained layout once so the text extents measured below are close to the final ones.
    ax.figure.draw_without_rendering()
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for x, y, text, color in labels:
        fx, _ = to_axes.transform((x, y))
        natural = fx < 0.6
        # Preference order: above on the natural side, above on the other side, below on the natural side.
        for right, up in ((natural, True), (not natural, True), (natural, False)):
            annotation = ax.annotate(
                text,
                (x, y),
                xytext=(12 if right else -12, 14 if up else -18),
                textcoords="offset points",
                ha="left" if right else "right",
                va="bottom" if up else "top",
                fontsize=8,
                color=color,
                arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.7},
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
                zorder=8,
            )
            box = annotation.get_window_extent(renderer)
            inside = ax.get_window_extent(renderer).contains(box.x0, box.y0) and ax.get_window_extent(
                renderer
            ).contains(box.x1, box.y1)
            if up and (not inside or any(box.overlaps(other) for other in placed)):
                annotation.remove()
                continue
            placed.append(box)
            break


def _mark_references(ax: Axes, df: pd.DataFrame, y: str = "accuracy", scale: float = 100.0,
                     x: str = "gflops") -> list[tuple[float, float, str, str]]:
    """Plot the baseline and paper-default rows; return their labels for :func:`_place_labels`."""
    labels: list[tuple[float, float, str, str]] = []
    if "reference" not in df.columns:
        return labels
    refs = _finite_xy(df, x, y)
    kinds = refs["reference"].astype("string").fillna("")
    for kind, label in REFERENCE_LABELS.items():
        rows = refs[kinds == kind]
        if rows.empty:
            continue
        style = _REFERENCE_STYLE[kind]
        status = _status(rows)
        suffix = "" if (status == COMPLETED).all() else " (not completed)"
        ax.scatter(rows[x], scale * rows[y], s=70, marker=style["marker"], color=style["color"],
                   edgecolors="white", linewidths=0.8, zorder=6, label=label + suffix)  # fmt: skip
        row = rows.iloc[0]
        labels.append((float(row[x]), scale * float(row[y]), label, style["color"]))
    return labels


def cost_axis(objectives: Sequence[str], resolution: int = 224) -> tuple[str, str, str, str]:
    """The cost a front is drawn against: the first cost objective (GFLOPs without one), as (column, name, axis
    label, unit).

        >>> cost_axis(["accuracy", "latency_ms"])
        ('latency_ms', 'latency', 'latency (ms, batch 1, 224 px)', 'ms')
    """
    x = objectives[1] if len(objectives) > 1 else "gflops"
    name, label, unit = {
        "gflops": ("GFLOPs", f"GFLOPs ({resolution} px)", "GFLOPs"),
        "latency_ms": ("latency", f"latency (ms, batch 1, {resolution} px)", "ms"),
        "params": ("parameters", "parameters", "parameters"),
    }.get(x, (x, x, ""))
    return x, name, label, unit


# ------------------------------------------------------------------------------------------------ hypervolume


def plot_hypervolume(
    history: pd.Series,
    path: str | os.PathLike[str],
    *,
    reference_point: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """Hypervolume after each trial (:func:`results.pareto.hypervolume_history`) as a step line. Returns the path.

    ``reference_point`` (as from :func:`results.pareto.reference_point`) is printed under the title, because a
    hypervolume means nothing without it.
    """
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    x = np.asarray(history.index, dtype=float)
    y = history.to_numpy(dtype=float)
    if len(y):
        ax.step(x, y, where="post", color="#4c72b0", linewidth=1.8)
        # Dots where the front improved, so it is visible which trials mattered.
        improved = np.r_[y[0] > 0, np.diff(y) > 0] if len(y) else np.array([], dtype=bool)
        ax.scatter(x[improved], y[improved], s=18, color="#4c72b0", zorder=3, label="front improved")
        ax.legend(loc="lower right", fontsize=8, title=f"final {y[-1]:.5g}", title_fontsize=8)
    heading = title or "Hypervolume of completed trials"
    if reference_point:
        ref = ", ".join(f"{k} {v:.4g}" for k, v in reference_point.items())
        heading += f"\nreference point: {ref}"
    ax.set_title(heading, fontsize=11)
    ax.set_xlabel("trial number (launch order)")
    ax.set_ylabel("hypervolume (" + " × ".join(reference_point) + ")" if reference_point else "hypervolume")
    ax.grid(True, alpha=0.3)
    # No forced zero: with error 1.0 in the reference point most of the volume is there from the first trial, and
    # the gains worth seeing are small on that scale.
    ax.margins(y=0.15)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------- effects


def _stage_choice(df: pd.DataFrame, stage: int) -> pd.Series:
    attn = df[f"s{stage}_attn"].astype("string").fillna("").replace("", "none")
    position_column = f"s{stage}_position"
    if position_column not in df.columns:
        return attn
    position = df[position_column].astype("string").fillna("")
    return attn.where((attn == "none") | (position == ""), attn + " @ " + position)


def param_importances(study_db: str | os.PathLike[str], min_trials: int = 8) -> dict[str, float]:
    """Optuna's PED-ANOVA importance of each search parameter (``s<i>_attn``, ``s<i>_kernel_start``, ...) for the
    first objective, from the search's own study (``study.db``), or {} if not computable.

    The study holds the parameters exactly as the sampler drew them (conditional ones only where they applied), so
    nothing is rebuilt from ``trials.csv``. PED-ANOVA (Optuna 5's default evaluator) needs no scikit-learn and ranks
    by low target values, so a maximised objective is negated. Returns {} with fewer than ``min_trials`` completed
    trials or on any failure: importances are a nice-to-have and must never break writing results.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=None, storage=f"sqlite:///{Path(study_db).resolve()}")
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < min_trials:
            return {}
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            # Small studies make PED-ANOVA warn about its quantiles; the panel is labelled as indicative anyway.
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[0]))
    except Exception as exc:  # see docstring: a diagnostic must never break a run
        logger.info("parameter importances skipped: %s", exc)
        return {}


def plot_effects(df: pd.DataFrame, path: str | os.PathLike[str], *, importances: Mapping[str, float] | None = None,
                 top_k: int = 12, objective: str = "accuracy") -> Path:
    """Per-stage effect of the attention choice on the proxy score ``objective`` (the search's first objective),
    one panel per stage. Returns the path written.

    Each panel groups the completed trials by that stage's attention and position (e.g. ``scsa @ mid``): a
    horizontal box per group (horizontal so that long group names stay readable) with the trials jittered on top
    and the group size in the label. Stage panels share the score's axis so they can be compared. With
    ``importances`` (from :func:`param_importances`), a last panel shows the ``top_k`` of them.
    """
    stages = stage_numbers(df.columns)
    status = _status(df)
    rows = df[status == COMPLETED]
    scale, label = _quality_scale(objective)
    if objective in rows.columns:
        rows = rows[pd.to_numeric(rows[objective], errors="coerce").notna()]
    else:
        rows = rows.iloc[:0]
    importances = dict(importances or {})
    n_panels = max(1, len(stages) + (1 if importances else 0))
    ncols = min(3, n_panels)
    nrows = int(np.ceil(n_panels / ncols))
    choices = {stage: _stage_choice(rows, stage) for stage in stages} if len(rows) else {}
    most_groups = max([c.nunique() for c in choices.values()] + [top_k // 2 if importances else 1, 3])
    fig = _new_figure(max(7.0, 4.8 * ncols), 0.6 + (1.2 + 0.32 * most_groups) * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    rng = np.random.default_rng(0)  # fixed jitter: the same frame always gives the same picture

    if not stages:
        axes[0].text(0.5, 0.5, "no stage columns in the frame", ha="center", va="center", transform=axes[0].transAxes)
    for k, stage in enumerate(stages):
        ax = axes[k]
        if k:
            ax.sharex(axes[0])
        choice = choices.get(stage)
        if choice is None or choice.empty:
            ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        else:
            # "none" first, then alphabetical: the same order in every panel, and the no-attention case on top.
            groups = sorted(choice.unique(), key=lambda g: (g != "none", str(g)))[::-1]
            data = [scale * rows.loc[choice == g, objective].to_numpy(dtype=float) for g in groups]
            ax.boxplot(
                data,
                **_HORIZONTAL,
                widths=0.55,
                showfliers=False,
                medianprops={"color": "#dd8452", "linewidth": 1.6},
            )
            for pos, values in enumerate(data, start=1):
                jitter = rng.uniform(-0.15, 0.15, size=len(values))
                ax.scatter(values, pos + jitter, s=14, color="#4c72b0", alpha=0.6, linewidths=0, zorder=3)
            ax.set_yticks(range(1, len(groups) + 1))
            ax.set_yticklabels([f"{g} (n={len(v)})" for g, v in zip(groups, data, strict=True)], fontsize=8)
        ax.set_title(f"stage {stage}: attention @ position", fontsize=10)
        ax.set_xlabel(label, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)

    used = len(stages)
    if importances:
        ax = axes[used]
        top = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)[:top_k][::-1]
        ax.barh([k for k, _ in top], [v for _, v in top], color="#55a868")
        ax.set_title(f"importance for {OBJECTIVE_LABELS.get(objective, objective)} (Optuna PED-ANOVA)", fontsize=10)
        ax.set_xlabel("share of importance", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
        used += 1
    for ax in axes[max(used, 1) :]:
        ax.set_visible(False)
    fig.suptitle(f"{_backbone(df)}: {OBJECTIVE_LABELS.get(objective, objective)} by each stage's attention\n"
                 f"({len(rows)} completed trials)")
    return _save(fig, path)
