"""Multi-objective, multi-fidelity early stopping: an asynchronous successive-halving (ASHA) scheduler whose rungs
promote by non-dominated rank instead of by one metric.

Rungs sit at ``grace_period * reduction_factor**k`` epochs, below the proxy schedule's last epoch. When a trial
reaches a rung, its point there — accuracy at that epoch (maximised) and its costs (GFLOPs, parameters, latency:
known before training, so the same at every rung) — joins every point recorded at that rung so far. The points
are ranked the NSGA-II way: non-dominated sorting into fronts, then crowding distance within a front (larger is
better: it keeps the front spread from cheap to accurate). The trial continues if fewer than
``ceil(n / reduction_factor)`` of the ``n`` recorded trials rank strictly ahead of it; otherwise it is stopped.
As in Ray's ASHA, decisions are made once per trial and rung and never revisited, ties continue, and the first
trial at a rung always continues.

Why not Ray's ``ASHAScheduler``: it ranks by one metric, so with accuracy alone a cheap config that is slightly
less accurate at the rung is stopped although it may well end on the Pareto front; the front is what is searched.

Reference trials (the plain backbone and the paper's placement) are never stopped: they are the yardsticks the
front is compared with, so they always run the full schedule; their points still count at every rung.

A stopped trial is a *stopped* trial everywhere else too: recorded with status ``stopped``, told to Optuna as
PRUNED (see :mod:`search.optuna_search`), never on the Pareto front.

Example::

    >>> from search.scheduler import promotes
    >>> # (accuracy, gflops) of trials already at the rung; the newcomer is dominated by both
    >>> promotes([(0.80, 1.0), (0.90, 2.0)], (0.70, 3.0), ["max", "min"], reduction_factor=2)
    False
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from results.pareto import pareto_mask

__all__ = ["PROMOTION_BAND_SD", "ParetoASHAScheduler", "crowding_distance", "non_dominated_ranks", "promotes",
           "promotion_band", "rung_milestones"]


# ------------------------------------------------------------------------------------------------------ ranking


def _as_loss(points: Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """Points as an ``(n, k)`` array to be minimised in every column."""
    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    arr = np.asarray(points, dtype=float).reshape(len(points), len(modes))
    return arr * sign


def non_dominated_ranks(points: Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """Front index (0 = non-dominated) of every point; ``modes`` is ``"max"`` or ``"min"`` per column.

    Fronts are peeled with the results' own dominance test (:func:`results.pareto.pareto_mask`, Optuna's), so
    "non-dominated" means the same at a rung as on the final front. NaN counts as the worst possible value, so a
    broken point never dominates anything.
    """
    loss = _as_loss(points, modes)
    big = np.finfo(float).max  # finite, so that the dominance test ranks it (as the worst value) like any other
    loss = np.nan_to_num(loss, nan=big, posinf=big, neginf=-big)
    ranks = np.full(len(loss), -1, dtype=int)
    remaining = np.arange(len(loss))
    front = 0
    while remaining.size:
        on_front = pareto_mask(loss[remaining], ["minimize"] * loss.shape[1])
        ranks[remaining[on_front]] = front
        remaining = remaining[~on_front]
        front += 1
    return ranks


def crowding_distance(points: Sequence[Sequence[float]], modes: Sequence[str]) -> np.ndarray:
    """NSGA-II crowding distance of each point within the set given (pass one front at a time).

    Boundary points of every objective get ``inf``; sets of up to two points are all boundary.
    """
    loss = _as_loss(points, modes)
    n, k = loss.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(k):
        order = np.argsort(loss[:, j], kind="mergesort")
        col = loss[order, j]
        dist[order[0]] = dist[order[-1]] = np.inf
        span = col[-1] - col[0]
        if not np.isfinite(span) or span <= 0:
            continue
        dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def promotes(
    recorded: Sequence[Sequence[float]], point: Sequence[float], modes: Sequence[str], reduction_factor: float,
    band: float = 0.0,
) -> bool:
    """Whether a trial arriving at a rung with ``point`` continues, given the points already ``recorded`` there.

    It continues if fewer than ``ceil(n / reduction_factor)`` of all ``n`` points (itself included) rank strictly
    ahead of it by (front, -crowding distance). With a noise ``band`` (in the first objective's units) it also
    continues if it would with its first objective ``band`` better: a config that ties with the promoted ones
    within the seed noise is not stopped on one draw.
    """
    if _promoted(recorded, point, modes, reduction_factor):
        return True
    if band <= 0:
        return False
    shifted = (point[0] + (band if modes[0] == "max" else -band), *point[1:])
    return _promoted(recorded, shifted, modes, reduction_factor)


def _promoted(
    recorded: Sequence[Sequence[float]], point: Sequence[float], modes: Sequence[str], reduction_factor: float
) -> bool:
    points = [*recorded, point]
    n = len(points)
    keep = max(1, math.ceil(n / reduction_factor))
    ranks = non_dominated_ranks(points, modes)
    crowd = np.empty(n)
    for front in np.unique(ranks):
        members = np.flatnonzero(ranks == front)
        crowd[members] = crowding_distance([points[i] for i in members], modes)
    me = n - 1
    ahead = (ranks < ranks[me]) | ((ranks == ranks[me]) & (crowd > crowd[me]))
    return int(ahead.sum()) < keep


def rung_milestones(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """Epochs at which trials are compared: ``grace_period * reduction_factor**k`` below ``max_epochs``.

    >>> rung_milestones(1, 3, 27)
    [1, 3, 9]
    >>> rung_milestones(2, 2, 2)   # no rung: the schedule is too short to stop anything early
    []
    """
    milestones: list[int] = []
    k = 0
    while True:
        epoch = int(round(grace_period * reduction_factor**k))
        if epoch >= max_epochs:
            return milestones
        if not milestones or epoch > milestones[-1]:
            milestones.append(epoch)
        k += 1


#: The promotion band, in seed standard deviations of the first objective at the rung. bench/proxy_fidelity.py
#: replayed rung 1 on 12 resnet50 configs x 3 seeds: plain ASHA stopped 2.4 per draw of the 8 configs whose final
#: mean lies within 2 sd of the best; with 0.5 / 1 / 2 sd, 0.8 / 0.2 / 0.0 of them (and 3.5 / 1.5 / 0.1 in all, of
#: 5.6). Half an sd keeps two thirds of the ties that plain ASHA stops and still stops more than half of what it
#: stops; one sd stopped none of the first 48 trials of the default resnet50 search, whose epoch-1 losses spread by
#: a quarter of the seed noise, and cost the search the 60-minute budget.
PROMOTION_BAND_SD = 0.5


def promotion_band(fidelity: Mapping[str, Any], first_objective: str) -> float:
    """The scheduler's noise band for a search ranked by ``first_objective`` at ``fidelity`` (a Fidelity's dict):
    :data:`PROMOTION_BAND_SD` times the fidelity's measured ``rung_sd`` of its score, 0 (plain ASHA) where the
    first objective is not that score or no noise was measured."""
    if first_objective != fidelity.get("score"):
        return 0.0
    return PROMOTION_BAND_SD * float(fidelity.get("rung_sd") or 0.0)


# ------------------------------------------------------------------------------------------------ the scheduler


class ParetoASHAScheduler(FIFOScheduler):
    """ASHA with promotion by non-dominated rank over ``objectives`` (see the module docstring).

    Args:
        objectives: result keys compared at a rung, e.g. ``["accuracy", "gflops"]``.
        modes: ``"max"`` or ``"min"`` per objective.
        max_epochs: epochs of the full proxy schedule (no rung at or above it).
        grace_period: first rung, in epochs.
        reduction_factor: keep the best ``1/reduction_factor`` at each rung.
        time_attr: the result key that counts epochs.
        exempt_key: result key whose truthy value exempts a trial from stopping (reference configs).
        band: the seed noise of the first objective at the rungs, in its units; a trial that ties with the
            promoted ones within it continues (0: off).

    Example::

        scheduler = ParetoASHAScheduler(["accuracy", "gflops"], ["max", "min"], max_epochs=9, grace_period=1,
                                        reduction_factor=3)   # rungs at epochs 1 and 3
        tune.TuneConfig(scheduler=scheduler, ...)
    """

    def __init__(
        self,
        objectives: Sequence[str],
        modes: Sequence[str],
        max_epochs: int,
        grace_period: int = 1,
        reduction_factor: float = 3,
        time_attr: str = "epoch",
        exempt_key: str = "reference",
        band: float = 0.0,
    ) -> None:
        if len(objectives) != len(modes) or not objectives:
            raise ValueError("need one mode per objective, and at least one objective")
        if any(m not in ("max", "min") for m in modes):
            raise ValueError(f"modes must be 'max' or 'min', got {list(modes)}")
        if grace_period < 1:
            raise ValueError(f"grace_period must be >= 1 epoch, got {grace_period}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        super().__init__()
        self._objectives = list(objectives)
        self._modes = list(modes)
        self._metric = self._objectives[0]  # what Tune checks results for; all objectives are read
        self._reduction_factor = float(reduction_factor)
        self._time_attr = time_attr
        self._exempt_key = exempt_key
        self.milestones = rung_milestones(grace_period, reduction_factor, max_epochs)
        # milestone -> {trial key -> point}. Keys are the search's own trial ids when results carry them, so that
        # points seeded from an earlier session (resume) and Ray's fresh trial ids never collide.
        self.rungs: dict[int, dict[str, tuple[float, ...]]] = {m: {} for m in self.milestones}
        self.num_stopped = 0
        self.band = float(band)  # the first objective's noise band at the rungs (see ``promotes``)

    # Tune passes the TuneConfig metric/mode here; ours are fixed at construction.
    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True

    def seed(self, trial_key: str, curve: Sequence[float], costs: Mapping[str, float]) -> None:
        """Record a finished trial's points from an earlier session (accuracy per epoch, costs), for resume."""
        for m in self.milestones:
            if len(curve) >= m and trial_key not in self.rungs[m]:
                self.rungs[m][trial_key] = self._point({self._objectives[0]: curve[m - 1], **costs})

    def _point(self, result: Mapping) -> tuple[float, ...]:
        def value(key: str) -> float:
            v = result.get(key)
            try:
                return float(v)
            except (TypeError, ValueError):
                return math.nan

        return tuple(value(k) for k in self._objectives)

    @staticmethod
    def _key(trial: Trial, result: Mapping) -> str:
        return str(result.get("trial_key") or trial.trial_id)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        epoch = result.get(self._time_attr)
        if epoch is None or any(k not in result for k in self._objectives):
            return TrialScheduler.CONTINUE
        key = self._key(trial, result)
        # Highest rung reached and not yet recorded (one result per epoch, so normally the rung just reached).
        for milestone in reversed(self.milestones):
            if epoch < milestone:
                continue
            recorded = self.rungs[milestone]
            if key in recorded:
                # Already decided at this rung (e.g. a retried trial replaying its epochs): keep that decision.
                return TrialScheduler.CONTINUE
            point = self._point(result)
            go_on = promotes(list(recorded.values()), point, self._modes, self._reduction_factor, self.band)
            recorded[key] = point
            if go_on or result.get(self._exempt_key):
                return TrialScheduler.CONTINUE
            self.num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {m}: {len(self.rungs[m])} trials" for m in self.milestones) or "no rungs"
        return f"ParetoASHA(objectives={self._objectives}, eta={self._reduction_factor:g}): {rungs}; " \
               f"stopped {self.num_stopped}"

    # Not needed: a resumed search is a new Tuner and re-seeds the rungs from trials.csv (see search.run).
    def save(self, checkpoint_path: str) -> None:
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None
