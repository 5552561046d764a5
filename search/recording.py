"""The searchers' common ground: a Ray ``Searcher`` that keeps the search's book.

Both searchers of a search, :class:`~search.optuna_search.ParetoOptunaSearch` (the budget's trials) and
:class:`~search.finalists.ReplicateSearch` (the finalists' further seeds), hand launches to Ray and end each
trial's life in one place, :meth:`RecordingSearcher._close`: its record (:func:`build_record`) is written durably
through the :class:`~search.ledger.Ledger`, then the subclass is told (:meth:`RecordingSearcher._after_record`;
the Optuna searcher tells the study there). Every way a trial ends goes through it: Ray's ``on_trial_complete``
(completed, or stopped by the scheduler), :meth:`record_failure` (failed, with the reason), :meth:`finish_unreported`
(ended by the time budget); :meth:`mark_interrupted` leaves it unrecorded, for ``--resume`` to run again.

A full disk under ``--out`` is a fault, not a bug: the searcher keeps the error in :attr:`RecordingSearcher.fault`
instead of raising it into Ray's event loop (which would print its own tracebacks), asks for no new trial, and the
driver ends the search and reports it in one line (``run_search.py``). Every write before the failed one is
durable; the trial whose record could not be written runs again on ``--resume``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

from ray.tune.search import Searcher

from evaluators.scores import SCORES
from results.io import disk_full
from results.schema import COMPLETED, FAILED, STOPPED, TrialRecord, curve_key

from .ledger import Launch, Ledger

__all__ = ["RecordingSearcher", "build_record", "curve_key", "status_of"]


def build_record(
    launch: Launch, result: dict | None, status: str, error: str = "", curve: Sequence[float] | None = None,
    objective: str = "accuracy",
) -> dict:
    """The trials.csv record (:class:`~results.schema.TrialRecord`, as a row) of a finished trial from its last Ray
    result (``None`` if it never reported): every proxy score the result carries, the costs, and ``curve``
    (``objective`` per epoch)."""
    result = result or {}
    epochs = result.get("epochs")
    epoch = result.get("epoch")
    return TrialRecord(
        trial_id=launch.trial_id,
        number=launch.number,
        status=status,
        config=launch.config,
        reference=launch.reference,
        scores={score: result.get(score) for score in SCORES},
        gflops=result.get("gflops"),
        params=result.get("params"),
        latency_ms=result.get("latency_ms"),
        trained_share=(epoch / epochs) if epoch is not None and epochs else (0.0 if status == FAILED else None),
        epochs_done=epoch if epoch is not None else 0,
        time_s=result.get("time_total_s"),
        error=error,
        optuna_number=launch.optuna_number,
        seed=result.get("seed"),
        replicate_of=launch.replicate_of,
        phase=launch.phase,
        curve_objective=objective,
        curve=tuple(curve or ()),
    ).as_row()


def status_of(result: dict | None, metrics: Sequence[str]) -> tuple[str, str]:
    """``("completed" | "stopped" | "failed", reason)`` from a trial's last result."""
    if not result or result.get("epoch") is None:
        return FAILED, "ended without reporting a result"
    missing = [m for m in metrics if result.get(m) is None]
    bad = [m for m in metrics if m not in missing and not math.isfinite(float(result[m]))]
    if missing or bad:
        return FAILED, f"objective {(missing + bad)[0]} missing or not finite in the last result"
    if result["epoch"] >= result.get("epochs", result["epoch"]):
        return COMPLETED, ""
    return STOPPED, f"stopped early at epoch {result['epoch']} of {result.get('epochs')}"


class RecordingSearcher(Searcher):
    """A Ray searcher whose trials are journaled before Ray sees them and recorded when they end.

    Subclasses hand out launches (``suggest``, registering each in ``self._launch_of``) and may act on a written
    record in :meth:`_after_record`. The driver (``search.run``, ``search.progress``) uses only the public methods
    below, whichever searcher it runs.
    """

    def __init__(self, ledger: Ledger, metric: Sequence[str], mode: Sequence[str]) -> None:
        super().__init__(metric=list(metric), mode=list(mode))
        self._ledger = ledger
        self._launch_of: dict[str, Launch] = {}  # Ray trial id -> launch
        self._closed: set[str] = set()  # Ray trial ids whose end was seen
        self._curves: dict[str, list[float]] = {}  # Ray trial id -> first objective per epoch (kept by subclasses)
        self.fault: BaseException | None = None  # a full disk: the search must end (see the module docstring)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def launched(self) -> dict[str, Launch]:
        """Ray trial id -> launch, for the trials this searcher handed out."""
        return self._launch_of

    def finished(self, trial_id: str) -> bool:
        """Whether Ray trial ``trial_id``'s end has been seen (recorded, or left to :meth:`record_failure`)."""
        return trial_id in self._closed

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Keep a full disk as :attr:`fault` instead of raising it into Ray; any other error is raised."""
        try:
            yield
        except Exception as e:
            if disk_full(e) is None:
                raise
            if self.fault is None:
                self.fault = e

    # -- the ends of a trial ---------------------------------------------------------------------------------------
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._closed or trial_id not in self._launch_of:
            return
        self._closed.add(trial_id)
        if error:
            # Closed by record_failure, which the progress callback calls next with the reason Ray keeps on the
            # trial object; a kill in between leaves neither record nor tell: the trial runs again on resume.
            return
        with self._guard():
            self._close(trial_id, result, *status_of(result, self._metric))

    def record_failure(self, trial_id: str, result: dict | None, reason: str) -> None:
        """Close a trial that failed in Ray, with the reason."""
        if trial_id in self._launch_of:
            with self._guard():
                self._close(trial_id, result, FAILED, reason)

    def finish_unreported(self, trial_id: str, result: dict | None, status: str, error: str = "") -> None:
        """Close a trial Ray ended without the usual notification (stopped by the time budget)."""
        self._closed.add(trial_id)
        with self._guard():
            self._close(trial_id, result, status, error)

    def mark_interrupted(self, trial_id: str) -> None:
        """A trial cut off by Ctrl-C (or a fault): not recorded, so ``--resume`` runs it again."""

    def _close(self, trial_id: str, result: dict | None, status: str, reason: str) -> None:
        """The one end of a trial's life: its record is written (durably), then :meth:`_after_record`."""
        record = build_record(self._launch_of[trial_id], result, status, reason, self._curves.get(trial_id),
                              self._metric[0])
        self._ledger.finish(record)
        self._after_record(trial_id, record)

    def _after_record(self, trial_id: str, record: dict) -> None:
        """What a subclass does once a trial's record is durable."""

    # Ray checkpoints searchers; a search's state is the ledger (and the study), in --out.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w", encoding="utf-8") as fh:
            fh.write('{"state": "in launched.jsonl, trials.csv and study.db of --out"}\n')

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume with `run_search.py --resume --out DIR`, not Tuner.restore")
