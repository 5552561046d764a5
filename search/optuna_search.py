"""The searcher: Optuna proposes configs for Ray Tune, and is told the truth about trials that did not run to the end.

Ray calls ``Searcher.on_trial_complete(trial_id, result)`` with the trial's last result both when a trial finishes
its schedule *and* when a scheduler stops it early; Ray's own ``OptunaSearch`` then tells Optuna ``COMPLETE`` with
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

import logging
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from results.schema import COMPLETED, FAILED, STOPPED, curve_key
from space import ArchConfig, SearchSpace

from .ledger import Launch, Ledger, trial_name
from .recording import RecordingSearcher

__all__ = ["MAX_DRAWS", "Forced", "ParetoOptunaSearch", "optuna_state_of", "reconcile_study"]

logger = logging.getLogger(__name__)

MAX_DRAWS = 50  # duplicate suggestions in a row before the space counts as exhausted


@dataclass
class Forced:
    """A config to launch before asking the sampler: a reference, or a trial interrupted in an earlier session."""

    arch: ArchConfig
    reference: str = ""
    trial_id: str | None = None  # set for a re-run: keeps its id and number
    number: int | None = None


class ParetoOptunaSearch(RecordingSearcher):
    """A Ray Tune searcher over a :class:`~space.SearchSpace` that asks and tells an Optuna study, multi-objective,
    with stopped trials told as PRUNED.

    Written on Ray's public ``Searcher`` interface and Optuna's public ask-and-tell interface, not on Ray's
    ``OptunaSearch``: that class keeps the study and the sampler in private attributes and pickles both, and Ray
    Tune pickles the searcher (with the tuner's state). Here **nothing Ray pickles holds a sampler or a study**: the
    searcher keeps the study's storage URL, its name and a picklable recipe for the sampler
    (:class:`~search.samplers.SamplerSpec`); a copy made by pickling opens the study again from its storage when
    first used. The study (and every asked ``optuna.Trial``) lives only in the process that drives the search.

    Args:
        space: the search space; ``space.suggest(optuna_trial)`` is the define-by-run function.
        ledger: the search's book (journal of launches, records, known configs).
        metric / mode: objective result keys and ``"max"``/``"min"`` per key (Ray's multi-objective form).
        sampler: a zero-argument callable returning a fresh Optuna sampler (see :mod:`search.samplers`).
        storage: Optuna storage URL (``sqlite:///<out>/study.db``); ``None`` keeps the study in memory (tests; such
            a study cannot be reopened from a pickled copy).
        study_name: name of the study in the storage.
        forced: configs launched first, in order (re-runs, then references).

    Example (a fake result stream, as the tests do)::

        search = ParetoOptunaSearch(space, ledger, ["accuracy", "gflops"], ["max", "min"],
                                    SamplerSpec("random", seed=0, n_objectives=2))
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
        sampler: Callable[[], optuna.samplers.BaseSampler],
        storage: str | None = None,
        study_name: str = "scsa-search",
        forced: Iterable[Forced] = (),
    ) -> None:
        super().__init__(ledger, metric, mode)
        self._search_space = space
        self._make_sampler = sampler
        self._storage_url = storage
        self._study_name = study_name
        self._forced: deque[Forced] = deque(forced)
        self._waiting_duplicates: dict[str, list[int]] = {}  # trial id -> Optuna numbers of its duplicates
        self._exhausted = False
        self.duplicates = 0
        # Process-local: never pickled (see __getstate__).
        self._study: optuna.Study | None = self._open_study(create=True)
        self._asked: dict[str, optuna.Trial] = {}  # Ray trial id -> its asked Optuna trial

    def _open_study(self, create: bool) -> optuna.Study:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if create:
                return optuna.create_study(
                    storage=self._storage_url, sampler=self._make_sampler(), study_name=self._study_name,
                    directions=["maximize" if m == "max" else "minimize" for m in self._mode], load_if_exists=True)
            if self._storage_url is None:
                raise RuntimeError("this searcher's study was kept in memory and did not survive pickling; give "
                                   "it a storage URL to reopen the study in another process")
            return optuna.load_study(study_name=self._study_name, storage=self._storage_url,
                                     sampler=self._make_sampler())

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_study"] = None  # reopened from the storage on first use (``study``)
        state["_asked"] = {}
        return state

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (opened again from its storage in a copy made by pickling)."""
        if self._study is None:
            self._study = self._open_study(create=False)
        return self._study

    @property
    def exhausted(self) -> bool:
        """Whether the sampler kept proposing configs tried already (see :data:`MAX_DRAWS`)."""
        return self._exhausted

    # -- suggestions --------------------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | str | None:
        if self.fault is None:
            with self._guard():
                return self._suggest(trial_id)
        return Searcher.FINISHED  # the disk is full: no new trial (see search.recording)

    def _suggest(self, trial_id: str) -> dict | str | None:
        if self._forced:
            return self._launch(trial_id, *self._ask_forced(self._forced.popleft()))
        if self._exhausted:
            return self._wait_or_finish()
        for _ in range(MAX_DRAWS):
            ot_trial = self.study.ask()
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
        running = [t for t in self._launch_of if t not in self._closed]
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
                self.study.enqueue_trial(params, skip_if_exists=False)
            ot_trial = self.study.ask()
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
            self._asked[ray_trial_id] = ot_trial
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
        _tell_state(self.study, number, *optuna_state_of(record, self._metric))

    # -- results ------------------------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna keeps no intermediate values for several objectives; the curve goes to the record instead.
        score = self._metric[0]
        if trial_id in self._curves and result.get(score) is not None and result.get("epoch") is not None:
            curve = self._curves[trial_id]
            del curve[int(result["epoch"]) - 1:]  # a retried trial replays its epochs from the start
            curve.append(float(result[score]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._closed and trial_id in self._launch_of:
            self._exhausted = False  # something new is known: worth asking the sampler again
            if not error and result is not None and result.get(self._metric[0]) is not None:
                self.on_trial_result(trial_id, result)  # Ray does not pass the last result to on_trial_result
        super().on_trial_complete(trial_id, result, error)

    def _after_record(self, trial_id: str, record: dict) -> None:
        self._tell(trial_id, record)

    def _tell(self, trial_id: str, record: dict) -> None:
        launch = self._launch_of[trial_id]
        ot_trial = self._asked.pop(trial_id, None)
        if ot_trial is not None:
            # The curve as a user attribute, not as intermediate values: TPE reads intermediate values of PRUNED
            # trials through the single-objective `study.direction`, which raises for several objectives.
            key = curve_key(self._metric[0])
            if record.get(key):
                ot_trial.set_user_attr(key, record[key])
        if launch.optuna_number is not None:
            self._tell_like(launch.optuna_number, record)
        for number in self._waiting_duplicates.pop(launch.trial_id, []):
            self._tell_like(number, record)

    def mark_interrupted(self, trial_id: str) -> None:
        """A trial cut off by Ctrl-C: not recorded (``--resume`` runs it again); the study learns it was cut off."""
        number = self._launch_of[trial_id].optuna_number
        self._asked.pop(trial_id, None)
        if number is not None:
            with self._guard():
                _tell_state(self.study, number, TrialState.FAIL)


#: trials.csv status -> what Optuna is told: the one table (see :func:`optuna_state_of`).
STATE_OF = {COMPLETED: TrialState.COMPLETE, STOPPED: TrialState.PRUNED, FAILED: TrialState.FAIL}


def optuna_state_of(record: dict, objectives: Sequence[str]) -> tuple[TrialState, list[float] | None]:
    """The Optuna state (and values) of a record; a completed record without finite objectives is a FAIL."""
    state = STATE_OF.get(record["status"], TrialState.FAIL)
    if state != TrialState.COMPLETE:
        return state, None
    try:
        values = [float(record.get(metric)) for metric in objectives]
    except (TypeError, ValueError):
        return TrialState.FAIL, None
    return (state, values) if all(math.isfinite(v) for v in values) else (TrialState.FAIL, None)


def _tell_state(study: optuna.Study, number: int, state: TrialState, values: list[float] | None = None) -> None:
    """Tell trial ``number`` its end, whichever process asked for it (Optuna's ``tell`` takes a trial number)."""
    try:
        study.tell(number, values, state=state)
    except (ValueError, RuntimeError) as e:  # finished already
        logger.debug("could not tell trial %s: %s", number, e)


def reconcile_study(study: optuna.Study, ledger: Ledger) -> dict[str, int]:
    """Make a study loaded on resume agree with the ledger; return counts of what was repaired.

    * a RUNNING Optuna trial whose search trial has a record (killed between writing the record and telling
      Optuna) is told that record's outcome;
    * every other RUNNING or WAITING trial was cut off by the kill: FAIL. Its config, if it was launched, is re-run
      under the same trial id (see ``search.run``), as a new Optuna trial. (A WAITING trial is asked first, so
      that it can be told: Optuna tells RUNNING trials only.)
    """
    by_number = {launch.optuna_number: launch for launch in ledger.launches.values()
                 if launch.optuna_number is not None}
    repaired = {"told_from_record": 0, "interrupted": 0}
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for _ in range(waiting):
        study.ask()  # takes the oldest WAITING trial: now RUNNING, told FAIL below
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        launch = by_number.get(frozen.number)
        record = ledger.records.get(launch.trial_id) if launch is not None else None
        if record is not None:
            _tell_state(study, frozen.number, *optuna_state_of(record, _objectives_of(study, ledger)))
            repaired["told_from_record"] += 1
            continue
        _tell_state(study, frozen.number, TrialState.FAIL)
        repaired["interrupted"] += 1
    return repaired


def _objectives_of(study: optuna.Study, ledger: Ledger) -> list[str]:
    return list(ledger.objectives)[: len(study.directions)]
