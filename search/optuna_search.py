"""Ray's ``OptunaSearch``, made to tell Optuna the truth about trials that did not run to the end.

Ray calls ``Searcher.on_trial_complete(trial_id, result)`` with the trial's last result both when a trial finishes
its schedule *and* when a scheduler stops it early; Ray's ``OptunaSearch`` then tells Optuna ``COMPLETE`` with
those values. For a trial stopped at epoch 1 of 9 that would put a low-fidelity accuracy into the study as if it
were final — the sampler would learn from it and ``study.best_trials`` (the dashboard's front) would show it.
:class:`ParetoOptunaSearch` decides from the result itself: a trial whose last result reached the full proxy
schedule (``epoch >= epochs``) is ``COMPLETE`` with its objective values; one that did not is ``PRUNED`` (its
first objective per epoch kept as the user attribute ``<objective>_curve``, e.g. ``accuracy_curve``); an error is
``FAIL``.

It also does the bookkeeping that makes a search a search rather than a loop of trials:

* **Records before tells.** The finished trial's record is written to ``trials.csv`` (through the
  :class:`~search.ledger.Ledger`) *before* Optuna is told, so a kill in between leaves a record whose Optuna trial
  is still RUNNING, which ``--resume`` repairs from the record (see :func:`reconcile_study`).
* **Forced trials first.** Interrupted trials of an earlier session (same trial id), then the two reference
  configs, are launched before the sampler is asked. A forced config inside the space is enqueued in the study
  right before it is asked, so the sampler sees its result like any other; one outside the space (a space file
  that excludes it) runs as a Ray trial without an Optuna trial — it is in ``trials.csv`` and on the front, but
  its parameters cannot be expressed in the narrowed space, so the sampler never sees it.
* **Never the same config twice.** A suggestion whose config was launched before is not trained again: it is
  told to Optuna with the earlier trial's outcome (``COMPLETE`` with the recorded values, ``PRUNED`` or ``FAIL``;
  while the earlier one is still running, once it finishes), tagged ``duplicate_of``, and the sampler is asked
  again. Such duplicates cost no budget. After :data:`MAX_DRAWS` duplicates in a row the space is taken as
  exhausted: the search waits for running trials, then finishes early.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from evaluators.scores import SCORES
from results.schema import COMPLETED, FAILED, STOPPED
from space import ArchConfig, SearchSpace

from .ledger import Launch, Ledger, trial_name

__all__ = ["MAX_DRAWS", "Forced", "ParetoOptunaSearch", "build_record", "curve_key", "reconcile_study",
           "status_of"]

logger = logging.getLogger(__name__)

MAX_DRAWS = 50  # duplicate suggestions in a row before the space counts as exhausted


@dataclass
class Forced:
    """A config to launch before asking the sampler: a reference, or a trial interrupted in an earlier session."""

    arch: ArchConfig
    reference: str = ""
    trial_id: str | None = None  # set for a re-run: keeps its id and number
    number: int | None = None


def curve_key(objective: str) -> str:
    """The record key of a trial's per-epoch values of ``objective`` (what the scheduler's rungs saw)."""
    return f"{objective}_curve"


def build_record(
    launch: Launch, result: dict | None, status: str, error: str = "", curve: Sequence[float] | None = None,
    objective: str = "accuracy",
) -> dict:
    """The trials.csv record of a finished trial from its last Ray result (``None`` if it never reported): every
    proxy score the result carries, the costs, and ``curve`` (``objective`` per epoch)."""
    result = result or {}
    epochs = result.get("epochs")
    epoch = result.get("epoch")
    record: dict[str, Any] = {
        "trial_id": launch.trial_id,
        "number": launch.number,
        "status": status,
        "reference": launch.reference,
        **{score: result.get(score) for score in SCORES},
        "gflops": result.get("gflops"),
        "params": result.get("params"),
        "latency_ms": result.get("latency_ms"),
        "fidelity": (epoch / epochs) if epoch is not None and epochs else (0.0 if status == FAILED else None),
        "epochs_done": epoch if epoch is not None else 0,
        "time_s": result.get("time_total_s"),
        "error": error,
        "config": launch.config,
        "optuna_number": launch.optuna_number,
        "seed": result.get("seed"),
    }
    if launch.replicate_of:
        record["replicate_of"] = launch.replicate_of
    if curve:
        record[curve_key(objective)] = [round(float(a), 6) for a in curve]
    return record


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch over a :class:`~space.SearchSpace`, multi-objective, with stopped trials told as PRUNED.

    It is also the one adapter over Ray's ``OptunaSearch`` internals (``_ot_study``, ``_ot_trials``,
    ``_completed_trials``: Ray offers no public access to the study it drives); everything else goes through the
    properties and methods here.

    Args:
        space: the search space; ``space.suggest(optuna_trial)`` is the define-by-run function.
        ledger: the search's book (journal of launches, records, known configs).
        metric / mode: objective result keys and ``"max"``/``"min"`` per key (Ray's multi-objective form).
        sampler: an Optuna sampler (see :mod:`search.samplers`).
        storage: Optuna storage (``sqlite:///<out>/study.db``); ``None`` keeps the study in memory (tests).
        study_name: name of the study in the storage.
        forced: configs launched first, in order (re-runs, then references).

    Example (a fake result stream, as the tests do)::

        search = ParetoOptunaSearch(space, ledger, ["accuracy", "gflops"], ["max", "min"], sampler)
        config = search.suggest("ray-1")             # {"arch": {...}, "trial_key": "t0000", ...}
        search.on_trial_complete("ray-1", {"epoch": 1, "epochs": 3, "accuracy": 0.5, "gflops": 1.0})
        search.study.trials[0].state                 # TrialState.PRUNED: stopped at 1 of 3 epochs
    """

    def __init__(
        self,
        space: SearchSpace,
        ledger: Ledger,
        metric: Sequence[str],
        mode: Sequence[str],
        sampler: optuna.samplers.BaseSampler,
        storage: optuna.storages.BaseStorage | None = None,
        study_name: str = "scsa-search",
        forced: Iterable[Forced] = (),
    ) -> None:
        self._search_space = space
        self._ledger = ledger
        self._forced: deque[Forced] = deque(forced)
        self._curves: dict[str, list[float]] = {}  # Ray trial id -> accuracy per epoch so far
        self._launch_of: dict[str, Launch] = {}  # Ray trial id -> launch
        self._waiting_duplicates: dict[str, list[tuple[int, str]]] = {}  # trial id -> (optuna number, its key)
        self._exhausted = False
        self.duplicates = 0
        super().__init__(
            space=self._define_by_run,
            metric=list(metric),
            mode=list(mode),
            sampler=sampler,
            study_name=study_name,
            storage=storage,
        )

    # -- the define-by-run function -------------------------------------------------------------------------------
    def _define_by_run(self, trial: optuna.Trial) -> None:
        self._search_space.suggest(trial)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    @property
    def exhausted(self) -> bool:
        """Whether the sampler kept proposing configs tried already (see :data:`MAX_DRAWS`)."""
        return self._exhausted

    @property
    def launched(self) -> dict[str, Launch]:
        """Ray trial id -> launch, for the trials of this session."""
        return self._launch_of

    # -- suggestions --------------------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | str | None:
        if self._forced:
            return self._launch(trial_id, *self._ask_forced(self._forced.popleft()))
        if self._exhausted:
            return self._wait_or_finish()
        for _ in range(MAX_DRAWS):
            ot_trial = self._ot_study.ask()
            arch = self._search_space.suggest(ot_trial)
            earlier = self._ledger.find(arch)
            if earlier is None:
                return self._launch(trial_id, arch, "", None, None, ot_trial)
            self._tell_duplicate(ot_trial, *earlier)
        logger.warning("%d suggestions in a row were configs tried already: the space looks exhausted", MAX_DRAWS)
        self._exhausted = True
        return self._wait_or_finish()

    def _wait_or_finish(self) -> str | None:
        # Running trials may still finish and give the sampler something new; with none running there is nothing
        # left to wait for.
        running = [t for t in self._launch_of if t not in self._completed_trials]
        return None if running else Searcher.FINISHED

    def _ask_forced(self, item: Forced) -> tuple:
        ot_trial = None
        try:
            params = self._search_space.params_of(item.arch)
        except ValueError:
            params = None  # outside the (narrowed) space: a Ray trial without an Optuna trial
        if params is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.enqueue_trial(params, skip_if_exists=False)
            ot_trial = self._ot_study.ask()
            asked = self._search_space.suggest(ot_trial)
            if asked != item.arch:  # a stale WAITING trial was popped instead: reconcile_study should prevent it
                raise RuntimeError(f"enqueued {item.arch.describe()} but Optuna handed out {asked.describe()}")
        return item.arch, item.reference, item.trial_id, item.number, ot_trial

    def _launch(
        self,
        ray_trial_id: str,
        arch: ArchConfig,
        reference: str,
        trial_id: str | None,
        number: int | None,
        ot_trial: optuna.Trial | None,
    ) -> dict:
        if number is None:
            number = self._ledger.next_number()
            trial_id = trial_name(number)
        launch = Launch(number=number, trial_id=trial_id, config=arch.to_dict(), reference=reference,
                        optuna_number=None if ot_trial is None else ot_trial.number)
        if ot_trial is not None:
            ot_trial.set_user_attr("trial_id", trial_id)
            ot_trial.set_user_attr("reference", reference)
            ot_trial.set_user_attr("config", arch.to_json())
            self._ot_trials[ray_trial_id] = ot_trial
        self._ledger.launch(launch)  # durable before Ray sees the trial
        self._launch_of[ray_trial_id] = launch
        self._curves[ray_trial_id] = []
        return {"arch": launch.config, "trial_key": trial_id, "number": number, "reference": reference}

    def _tell_duplicate(self, ot_trial: optuna.Trial, earlier_id: str, record: dict | None) -> None:
        self.duplicates += 1
        ot_trial.set_user_attr("duplicate_of", earlier_id)
        if record is None:
            # Still running (or interrupted): told when it finishes.
            self._waiting_duplicates.setdefault(earlier_id, []).append(ot_trial.number)
            return
        self._tell_like(ot_trial.number, record)

    def _tell_like(self, number: int, record: dict) -> None:
        """Tell Optuna trial ``number`` the outcome in ``record``."""
        state, values = optuna_outcome(record, self._metric)
        try:
            self._ot_study.tell(number, values, state=state)
        except (ValueError, RuntimeError) as e:  # told already (e.g. repaired on resume): nothing to do
            logger.debug("could not tell trial %s: %s", number, e)

    # -- results ------------------------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna keeps no intermediate values for several objectives; the curve goes to the record instead.
        score = self._metric[0]
        if trial_id in self._curves and result.get(score) is not None and result.get("epoch") is not None:
            curve = self._curves[trial_id]
            del curve[int(result["epoch"]) - 1:]  # a retried trial replays its epochs from the start
            curve.append(float(result[score]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._launch_of:
            return
        self._completed_trials.add(trial_id)
        self._exhausted = False  # something new is known: worth asking the sampler again
        if error:
            # Closed by record_failure, which the progress callback calls next with the reason Ray keeps on the
            # trial object; a kill in between leaves neither record nor tell: the trial runs again on resume.
            return
        if result is not None and result.get(self._metric[0]) is not None:
            self.on_trial_result(trial_id, result)  # Ray does not pass the last result to on_trial_result
        self._close(trial_id, result, *status_of(result, self._metric))

    def finish_unreported(self, trial_id: str, result: dict | None, status: str, error: str = "") -> None:
        """Close a trial Ray ended without the usual notification (stopped by the time budget)."""
        self._completed_trials.add(trial_id)
        self._close(trial_id, result, status, error)

    def record_failure(self, trial_id: str, result: dict | None, reason: str) -> None:
        """Close a trial that failed in Ray, with the reason."""
        if trial_id in self._launch_of:
            self._close(trial_id, result, FAILED, reason)

    def _close(self, trial_id: str, result: dict | None, status: str, reason: str) -> None:
        """The one end of a trial's life: its record is written (durably), then Optuna is told (a kill in between
        leaves a record whose Optuna trial is RUNNING, which ``reconcile_study`` repairs from the record)."""
        record = build_record(self._launch_of[trial_id], result, status, reason, self._curves.get(trial_id),
                              self._metric[0])
        self._ledger.finish(record)
        self._tell(trial_id, record)

    def _tell(self, trial_id: str, record: dict) -> None:
        launch = self._launch_of[trial_id]
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            # The curve as a user attribute, not as intermediate values: TPE reads intermediate values of PRUNED
            # trials through the single-objective `study.direction`, which raises for several objectives.
            key = curve_key(self._metric[0])
            if record.get(key):
                ot_trial.set_user_attr(key, record[key])
            self._tell_like(ot_trial.number, record)
        for number in self._waiting_duplicates.pop(launch.trial_id, []):
            self._tell_like(number, record)

    def finished(self, trial_id: str) -> bool:
        """Whether Ray trial ``trial_id`` has been closed (recorded or told)."""
        return trial_id in self._completed_trials

    def mark_interrupted(self, trial_id: str) -> None:
        """A trial cut off by Ctrl-C: not recorded (``--resume`` runs it again); the study learns it was cut off."""
        number = self._launch_of[trial_id].optuna_number
        if number is not None:
            _force_state(self._ot_study, self._ot_study.trials[number], TrialState.FAIL, interrupted=True)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    # Ray checkpoints searchers by pickling them; this one's state is the study database and the ledger.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w", encoding="utf-8") as fh:
            json.dump({"state": "in study.db and launched.jsonl / trials.csv of --out"}, fh)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume with `run_search.py --resume --out DIR`, not Tuner.restore")


#: trials.csv status -> what Optuna is told: the one table (see :func:`optuna_outcome`).
STATE_OF = {COMPLETED: TrialState.COMPLETE, STOPPED: TrialState.PRUNED, FAILED: TrialState.FAIL}


def optuna_outcome(record: dict, objectives: Sequence[str]) -> tuple[TrialState, list[float] | None]:
    """The Optuna state (and values) of a record; a completed record without finite objectives is a FAIL."""
    state = STATE_OF.get(record["status"], TrialState.FAIL)
    if state != TrialState.COMPLETE:
        return state, None
    try:
        values = [float(record.get(metric)) for metric in objectives]
    except (TypeError, ValueError):
        return TrialState.FAIL, None
    return (state, values) if all(math.isfinite(v) for v in values) else (TrialState.FAIL, None)


def _force_state(study: optuna.Study, frozen: optuna.trial.FrozenTrial, state: TrialState,
                 values: list[float] | None = None, interrupted: bool = False) -> None:
    """Set the state of a trial this process did not ask for (a session that was killed asked for it).

    Optuna's public ``tell`` only closes trials of the asking process's ``ask``; its storage can set any trial, by
    the storage's own trial id. Both are private names, so this is the one place that uses them."""
    storage = study._storage
    if interrupted:
        storage.set_trial_user_attr(frozen._trial_id, "interrupted", True)
    storage.set_trial_state_values(frozen._trial_id, state, values)


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


def reconcile_study(study: optuna.Study, ledger: Ledger) -> dict[str, int]:
    """Make a study loaded on resume agree with the ledger; return counts of what was repaired.

    * a RUNNING Optuna trial whose search trial has a record (killed between writing the record and telling
      Optuna) is told that record's outcome;
    * every other RUNNING or WAITING trial was cut off by the kill: FAIL, with user attribute ``interrupted``.
      Its config, if it was launched, is re-run under the same trial id (see ``search.run``).
    """
    by_number = {launch.optuna_number: launch for launch in ledger.launches.values()
                 if launch.optuna_number is not None}
    repaired = {"told_from_record": 0, "interrupted": 0}
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        launch = by_number.get(frozen.number)
        record = ledger.records.get(launch.trial_id) if launch is not None else None
        if record is not None and frozen.state == TrialState.RUNNING:
            _force_state(study, frozen, *optuna_outcome(record, _objectives_of(study, ledger)))
            repaired["told_from_record"] += 1
            continue
        _force_state(study, frozen, TrialState.FAIL, interrupted=True)
        repaired["interrupted"] += 1
    return repaired


def _objectives_of(study: optuna.Study, ledger: Ledger) -> list[str]:
    return list(ledger.objectives)[: len(study.directions)]
