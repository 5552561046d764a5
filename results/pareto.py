"""Non-dominated set, hypervolume, knee point and the rule that picks one architecture from the front.

Only trials with ``status == "completed"`` ever enter a front or a hypervolume: a trial stopped early by the
multi-fidelity scheduler has a low-fidelity accuracy that is not comparable with fully trained ones, and a failed
trial has no accuracy at all.

"Non-dominated" means what Optuna's ``study.best_trials`` means (minimisation after flipping maximised
objectives; duplicates all kept), and hypervolumes match Optuna's ``optuna.visualization.plot_hypervolume_history``.
Both are computed here in NumPy rather than through Optuna's private helpers (its multi-objective and hypervolume
modules), which may change in any release; the tests compare the two against Optuna's public
``Study.best_trials`` and the study's hypervolume.

Example::

    >>> import pandas as pd
    >>> df = pd.DataFrame({"status": ["completed"] * 3, "accuracy": [0.90, 0.92, 0.91],
    ...                    "gflops": [4.0, 4.5, 5.0], "reference": ["baseline", "", ""]})
    >>> list(pareto_front(df, ["accuracy", "gflops"]).index)
    [0, 1]
    >>> ref = reference_point(df, ["accuracy", "gflops"])  # baseline GFLOPs x 1.1
    >>> ref
    {'error': 1.0, 'gflops': 4.4}
    >>> round(hypervolume(df, ["accuracy", "gflops"], ref), 6)  # (1 - 0.90) .. 1.0 by 4.0 .. 4.4; 4.5 is outside
    0.36
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from results.schema import COMPLETED

__all__ = [
    "DEFAULT_OBJECTIVES",
    "OBJECTIVE_DIRECTIONS",
    "OBJECTIVE_LABELS",
    "REFERENCE_LABELS",
    "REFERENCE_MARGIN",
    "hypervolume",
    "hypervolume_history",
    "loss_name",
    "pareto_front",
    "completed_rows",
    "pareto_mask",
    "reference_point",
    "to_loss",
]

OBJECTIVE_DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    # the other proxy scores (evaluators.scores.SCORES): losses and training-speed estimates
    "val_loss": "minimize",
    "loss": "minimize",
    "tse": "minimize",
    "tse_ema": "minimize",
    "gflops": "minimize",
    "params": "minimize",
    "latency_ms": "minimize",
}
#: What each objective is, for axes and reports (a proxy score is named for what it measures).
OBJECTIVE_LABELS: dict[str, str] = {
    "accuracy": "proxy validation accuracy",
    "val_loss": "proxy validation loss (cross-entropy)",
    "loss": "proxy training loss (last epoch)",
    "tse": "proxy training-speed estimate (summed training losses)",
    "tse_ema": "proxy training-speed estimate (TSE-EMA)",
    "gflops": "GFLOPs",
    "params": "parameters",
    "latency_ms": "latency (ms)",
}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("accuracy", "gflops")
# Reference rows whose cost bounds the hypervolume box: both are fixed for a backbone, so the box is the same in
# every run on that backbone and hypervolumes can be compared across runs.
REFERENCE_ROWS: tuple[str, ...] = ("baseline", "paper_default")
#: How results name the two reference configs.
REFERENCE_LABELS: dict[str, str] = {"baseline": "plain backbone", "paper_default": "paper default (SCSA everywhere)"}
REFERENCE_MARGIN = 1.1
# --------------------------------------------------------------------------------------------------- dominance


def _as_minimize_sign(direction: object) -> float:
    # Accept "maximize"/"minimize" and optuna.study.StudyDirection (whose str() is "StudyDirection.MAXIMIZE").
    text = getattr(direction, "name", direction)
    text = str(text).lower()
    if text in ("maximize", "max"):
        return -1.0
    if text in ("minimize", "min"):
        return 1.0
    raise ValueError(f"unknown direction {direction!r}: expected 'maximize' or 'minimize'")


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (shape ``(n, k)``), one direction per column.

    Same semantics as Optuna's ``Study.best_trials``: ``a`` dominates ``b`` when it is no worse in every objective
    and strictly better in one, so identical points never dominate each other and are *all* kept. Rows containing
    NaN are never on the front (Optuna cannot hold such trials as complete either).

    >>> pareto_mask(np.array([[0.9, 4.0], [0.9, 4.0], [0.8, 5.0]]), ["maximize", "minimize"]).tolist()
    [True, True, False]
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"values must be a 2-D array (n_points, n_objectives), got shape {arr.shape}")
    if arr.shape[1] != len(directions):
        raise ValueError(f"values has {arr.shape[1]} columns but {len(directions)} directions were given")
    mask = np.zeros(arr.shape[0], dtype=bool)
    finite = np.all(np.isfinite(arr), axis=1)
    if not finite.any():
        return mask
    signs = np.array([_as_minimize_sign(d) for d in directions])
    loss = arr[finite] * signs
    mask[finite] = _is_pareto_front(loss)
    return mask


def _is_pareto_front(loss: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``loss`` (minimisation; duplicates all kept, as ``Study.best_trials`` keeps them).

    Our own, O(n^2): Optuna's is private, and a search has a few hundred points."""
    n = loss.shape[0]
    on_front = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(loss <= loss[i], axis=1)
        strictly_better = np.any(loss < loss[i], axis=1)
        on_front[i] = not np.any(no_worse & strictly_better)
    return on_front


def completed_rows(df: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """The completed rows of ``df`` with every objective a finite number (``ValueError`` naming a missing one)."""
    missing = [c for c in objectives if c not in df.columns]
    if missing:
        raise KeyError(f"objective column(s) {missing} not in the frame (columns: {list(df.columns)})")
    # A frame without a status column (e.g. hand-made) is taken as all completed.
    rows = df if "status" not in df.columns else df[df["status"].astype("string").fillna("") == COMPLETED]
    if rows.empty:
        return rows
    values = rows[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return rows[np.all(np.isfinite(values), axis=1)]


def _directions(objectives: Sequence[str]) -> list[str]:
    unknown = [o for o in objectives if o not in OBJECTIVE_DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown objective(s) {unknown}: known are {sorted(OBJECTIVE_DIRECTIONS)}")
    return [OBJECTIVE_DIRECTIONS[o] for o in objectives]


def pareto_front(df: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """The non-dominated completed rows of ``df`` under ``objectives``, sorted by GFLOPs ascending.

    Stopped and failed rows, and completed rows with a missing objective value, never enter. The original index is
    kept so a row can be traced back to ``df``. Ties in GFLOPs are ordered by accuracy descending.
    """
    rows = completed_rows(df, objectives)
    if rows.empty:
        return rows.copy()
    values = rows[list(objectives)].to_numpy(dtype=float)
    front = rows[pareto_mask(values, _directions(objectives))]
    by = [c for c in ("gflops", "accuracy") if c in front.columns]
    # mergesort: stable, so equal points stay in trial order and the output is deterministic.
    return front.sort_values(by, ascending=[c != "accuracy" for c in by], kind="mergesort").copy()


# ------------------------------------------------------------------------------------------------- hypervolume


def loss_name(objective: str) -> str:
    """Name of ``objective`` in the minimisation space used for hypervolumes: ``accuracy`` -> ``error``."""
    if objective == "accuracy":
        return "error"
    return objective if OBJECTIVE_DIRECTIONS.get(objective, "minimize") == "minimize" else f"neg_{objective}"


def to_loss(values: np.ndarray, objectives: Sequence[str]) -> np.ndarray:
    """Raw objective values turned into the minimisation space of hypervolumes (accuracy -> error)."""
    loss = np.array(values, dtype=float, copy=True)
    for j, (obj, direction) in enumerate(zip(objectives, _directions(objectives), strict=True)):
        if obj == "accuracy":
            # Error rather than -accuracy: it stays positive, and the natural worst value (error 1.0) is a fixed
            # reference coordinate shared by every run.
            loss[:, j] = 1.0 - loss[:, j]
        elif direction == "maximize":
            loss[:, j] = -loss[:, j]
    return loss


def _margin_above(worst: float, margin: float) -> float:
    # margin x worst for the usual positive costs; a relative step above `worst` otherwise (never below it).
    # Rounded so a recorded point reads 4.4 rather than 4.4000000000000004.
    return round(float(worst + (margin - 1.0) * max(abs(worst), 1e-12)), 12)


def reference_point(
    df: pd.DataFrame, objectives: Sequence[str] = DEFAULT_OBJECTIVES, margin: float = REFERENCE_MARGIN
) -> dict[str, float]:
    """The default hypervolume reference point, keyed by :func:`loss_name` (minimisation space, raw units).

    Convention (record it next to any hypervolume you report):

    - ``error`` (= 1 - accuracy): 1.0, the worst possible error;
    - each cost objective (``gflops``, ``params``, ``latency_ms``): ``margin`` (1.1) x its largest value among the
      rows whose ``reference`` is ``"baseline"`` or ``"paper_default"`` (any status: their costs do not depend on
      training). Those two configurations are fixed for a backbone, so the point is the same in every run on it.
      Only if neither row has the value, the largest value among completed trials is used instead, and the point
      is then specific to this run.

    Nothing is normalised. Points beyond the reference point in some objective contribute no volume.

    >>> df = pd.DataFrame({"status": ["completed", "failed"], "reference": ["", "paper_default"],
    ...                    "accuracy": [0.9, float("nan")], "gflops": [5.0, 4.0]})
    >>> reference_point(df, ["accuracy", "gflops"])
    {'error': 1.0, 'gflops': 4.4}
    """
    return _reference_point(df, list(objectives), margin)


def _reference_point(df: pd.DataFrame, objectives: list[str], margin: float) -> dict[str, float]:
    dirs = _directions(objectives)
    completed = completed_rows(df, objectives)
    if "reference" in df.columns:
        refs = df[df["reference"].astype("string").fillna("").isin(REFERENCE_ROWS)]
    else:
        refs = df.iloc[0:0]
    point: dict[str, float] = {}
    for obj, direction in zip(objectives, dirs, strict=True):
        if obj == "accuracy":
            point[loss_name(obj)] = 1.0
            continue
        sign = 1.0 if direction == "minimize" else -1.0
        for source in (refs, completed):
            vals = sign * pd.to_numeric(source[obj], errors="coerce").to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                point[loss_name(obj)] = _margin_above(float(vals.max()), margin)
                break
        else:
            raise ValueError(f"cannot set a reference point for {obj!r}: no reference row or completed trial has it")
    return point


def _reference_array(reference: Mapping[str, float] | Sequence[float], objectives: Sequence[str]) -> np.ndarray:
    if isinstance(reference, Mapping):
        keys = [loss_name(o) for o in objectives]
        missing = [k for k in keys if k not in reference]
        if missing:
            raise KeyError(f"reference point lacks {missing}; it has {sorted(reference)} (keys are loss names)")
        arr = np.array([float(reference[k]) for k in keys])
    else:
        arr = np.asarray(reference, dtype=float).reshape(-1)
        if arr.size != len(objectives):
            raise ValueError(f"reference point has {arr.size} values for {len(objectives)} objectives")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"reference point must be finite, got {arr.tolist()}")
    return arr


def hypervolume(
    data: pd.DataFrame | np.ndarray,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    reference_point: Mapping[str, float] | Sequence[float] | None = None,
) -> float:
    """Hypervolume dominated by the completed trials, in the minimisation space of :func:`reference_point`.

    ``data`` is a trials frame (only completed rows count) or an array of raw objective values, one column per
    objective in ``objectives`` order (accuracy as a fraction). ``reference_point`` is a mapping keyed by
    :func:`loss_name` (as returned by :func:`reference_point`) or a sequence in ``objectives`` order, both in loss
    space (error, GFLOPs, ...). If omitted it is derived from ``data`` by :func:`reference_point` for a frame, or
    as error 1.0 and 1.1 x the largest cost for an array; pass it explicitly to compare runs. The unit is the product
    of the objectives' units (e.g. error x GFLOPs).

    >>> pts = np.array([[0.9, 2.0], [0.8, 1.0]])  # error 0.1 at 2 GFLOPs, error 0.2 at 1 GFLOP
    >>> round(hypervolume(pts, ["accuracy", "gflops"], {"error": 1.0, "gflops": 3.0}), 6)  # 0.9 * 1 + 0.8 * 1
    1.7
    """
    objectives = list(objectives)
    if isinstance(data, pd.DataFrame):
        rows = completed_rows(data, objectives)
        raw = rows[objectives].to_numpy(dtype=float)
        if rows.empty:
            # The empty set has volume 0 whatever the reference point, even when none can be derived yet.
            return 0.0
        if reference_point is None:
            reference_point = _reference_point(data, objectives, REFERENCE_MARGIN)
    else:
        raw = np.asarray(data, dtype=float)
        if raw.ndim != 2 or raw.shape[1] != len(objectives):
            raise ValueError(f"points must have shape (n, {len(objectives)}), got {raw.shape}")
        raw = raw[np.all(np.isfinite(raw), axis=1)]
    loss = to_loss(raw, objectives)
    if reference_point is None:
        if loss.size == 0:
            return 0.0
        ref = np.array(
            [
                1.0 if o == "accuracy" else _margin_above(float(loss[:, j].max()), REFERENCE_MARGIN)
                for j, o in enumerate(objectives)
            ]
        )
    else:
        ref = _reference_array(reference_point, objectives)
    # Optuna requires every point to be inside the box; points outside add no volume anyway.
    loss = loss[np.all(loss <= ref, axis=1)]
    if loss.shape[0] == 0:
        return 0.0
    return float(_compute_hypervolume(loss, ref))


def _compute_hypervolume(loss: np.ndarray, ref: np.ndarray) -> float:
    return _hypervolume_numpy(loss, ref)


def _hypervolume_numpy(loss: np.ndarray, ref: np.ndarray) -> float:
    """Exact, by slicing along the last objective (fine for the few hundred points of a search). Our own:
    Optuna's WFG is private."""
    pts = loss[_is_pareto_front(loss)]
    pts = np.unique(pts, axis=0)
    if pts.shape[0] == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    order = np.argsort(pts[:, -1], kind="mergesort")
    pts = pts[order]
    total = 0.0
    for i in range(pts.shape[0]):
        upper = pts[i + 1, -1] if i + 1 < pts.shape[0] else ref[-1]
        depth = upper - pts[i, -1]
        if depth > 0:
            total += depth * _hypervolume_numpy(pts[: i + 1, :-1], ref[:-1])
    return float(total)


def hypervolume_history(
    df: pd.DataFrame,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    reference_point: Mapping[str, float] | Sequence[float] | None = None,
) -> pd.Series:
    """Hypervolume of the completed trials launched so far, after each trial in launch order (``number``).

    One value per row of ``df`` (stopped and failed trials repeat the previous value), indexed by ``number``. The
    reference point is fixed for the whole history (default: :func:`reference_point` of the whole ``df``), so the
    last value equals :func:`hypervolume` of ``df`` with the same point.
    """
    objectives = list(objectives)
    if reference_point is None:
        if completed_rows(df, objectives).empty:
            # Early in a search (say the first trials failed) there is no volume yet and maybe no reference point.
            index = pd.Index(df["number"] if "number" in df.columns else range(len(df)), name="number")
            return pd.Series(0.0, index=index.sort_values(), name="hypervolume", dtype=float)
        reference_point = _reference_point(df, objectives, REFERENCE_MARGIN)
    ref = _reference_array(reference_point, objectives)
    ordered = df.sort_values("number", kind="mergesort") if "number" in df.columns else df
    completed_index = set(completed_rows(ordered, objectives).index)
    numbers = ordered["number"].to_numpy() if "number" in ordered.columns else np.arange(len(ordered))
    front = np.empty((0, len(objectives)))
    current = 0.0
    out: list[float] = []
    for label in ordered.index:
        if label in completed_index:
            raw = ordered.loc[[label], objectives].to_numpy(dtype=float)
            point = to_loss(raw, objectives)
            if np.all(point <= ref):
                # Only the running front matters for the volume; keeping it small keeps this O(n * front).
                front = np.vstack([front, point])
                front = front[_is_pareto_front(front)]
                current = float(_compute_hypervolume(front, ref))
        out.append(current)
    return pd.Series(out, index=pd.Index(numbers, name="number"), name="hypervolume", dtype=float)
