"""What the driver watches while Ray runs: failures recorded with their reason, a live progress line, and the
stop conditions (time budget, Ctrl-C).

The progress line, printed when a trial finishes (and every :data:`HEARTBEAT_S` seconds in between)::

    [  7/200] completed 5 · stopped 1 · failed 0 · running 1 | front 3 | best t0004 accuracy 0.8125 @ 0.612 GFLOPs
    | 0:03:12 elapsed, ETA 1:28:40
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ray.tune import Callback
from ray.tune.stopper import Stopper

from results.io import disk_full

from .recording import RecordingSearcher

__all__ = ["HEARTBEAT_S", "STALL_S", "ProgressCallback", "SearchStopper", "describe_error", "faults_in_ray_logs"]

HEARTBEAT_S = 60.0
#: With trials left to run, this long without any trial running or reporting means Ray stopped scheduling them.
STALL_S = 300.0
_MAX_REASON = 300


def describe_error(trial) -> str:
    """One line saying why ``trial`` failed: the exception raised in the trainable (``TrainingDiverged: ...``,
    ``OutOfMemoryError: ...``), or Ray's reason when the worker process died."""
    text = ""
    try:
        exc = trial.get_pickled_error()
    except Exception:
        exc = None
    cause = getattr(exc, "cause", None) if exc is not None else None
    if type(cause).__name__ == "TrialError":  # already "<type>: <message>" (see search.trainable)
        text = str(cause)
    elif cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    elif exc is not None:
        text = f"{type(exc).__name__}: {exc}"
    if not text:
        # get_error() reads the copy in Ray's storage, which is synced in the background and may not be there yet
        # when several trials run at once; the trial's local staging copy is written before callbacks run.
        raw = ""
        local = getattr(trial, "error_file", None)
        if local and Path(local).is_file():
            raw = Path(local).read_text(encoding="utf-8", errors="replace")
        if not raw:
            try:
                raw = trial.get_error() or ""
            except Exception:
                raw = ""
        lines = [line.strip() for line in str(raw).splitlines() if line.strip()]
        text = lines[-1] if lines else "unknown error"
        # the traceback's last line names our wrapper ("search.trainable.TrialError: <type>: <message>")
        text = text.split("TrialError: ", 1)[1] if "TrialError: " in text else text
    text = " ".join(text.split())  # one line
    lowered = text.lower()
    if ("out of memory" in lowered or "outofmemory" in lowered or "memoryerror" in lowered) and \
            not lowered.startswith("out of memory"):
        text = f"out of memory: {text}"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


class SearchStopper(Stopper):
    """Ends the whole search when the time budget is spent or the user pressed Ctrl-C (``interrupt()``).

    Trials are never stopped one by one here: that is the scheduler's job.
    """

    def __init__(self, time_budget_s: float | None = None) -> None:
        self.deadline = None if time_budget_s is None else time.time() + time_budget_s
        self.interrupted = False
        self.timed_out = False
        self.fault: BaseException | None = None

    def interrupt(self) -> None:
        self.interrupted = True

    def fail(self, fault: BaseException) -> None:
        """End the search on a fault from outside it (a full disk); its running trials are left unrecorded."""
        self.fault = self.fault or fault

    @property
    def halted(self) -> bool:
        """Stopped before its end (Ctrl-C, SIGTERM or a fault): what ran is run again on ``--resume``."""
        return self.interrupted or self.fault is not None

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline and not self.interrupted:
            self.timed_out = True
        return self.halted or self.timed_out


class _DiskFullFilter(logging.Filter):
    def __init__(self, stopper: SearchStopper) -> None:
        super().__init__()
        self.stopper = stopper

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and disk_full(error) is not None:
            self.stopper.fail(error)
            return False
        return True


@contextlib.contextmanager
def faults_in_ray_logs(stopper: SearchStopper):
    """While Ray Tune runs: a write of Ray's own that fails on a full disk (experiment state, trial results under
    ``--out``) is logged by Ray with a traceback, and Ray carries on. A full disk ends the whole search instead:
    such a log record is dropped and the ``stopper`` told, and ``run_search.py`` reports it in one line."""
    handlers = logging.getLogger("ray").handlers + logging.getLogger().handlers
    log_filter = _DiskFullFilter(stopper)
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)


class ProgressCallback(Callback):
    """Writes failed trials' records (with the reason) and prints the progress line."""

    def __init__(
        self,
        searcher: RecordingSearcher,
        total: int,
        session_trials: int,
        objectives: list[str],
        select: str = "knee",
        echo: Callable[[str], None] | None = None,
        replicates: bool = False,
        stopper: SearchStopper | None = None,
    ) -> None:
        self.searcher = searcher
        self.stopper = stopper  # told of the searcher's fault, to end the search
        self.replicates = replicates  # the finalists' phases: counts their runs, not the budget's trials
        self.total = total  # the budget
        self.session_trials = session_trials  # trials this session launches
        self.objectives = objectives
        self.select = select
        self.echo = echo or (lambda line: print(line, file=sys.stdout, flush=True))
        self.start = time.time()
        self.last_print = self.start
        self.last_activity = self.start  # a trial started, reported or ended
        self.running: set[str] = set()
        self.last_results: dict[str, dict] = {}  # Ray trial id -> last result
        self.finished_this_session = 0

    # Ray pickles callbacks with the tuner state; the echo function may be a closure.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["echo"] = None
        return state

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self.last_activity = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last_results[trial.trial_id] = dict(result)
        self.last_activity = time.time()

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # Ray has requeued the trial and restarts it from this config: tell the trainable which attempt it is, so
        # that it trains with the next seed (a deterministic run that diverged would diverge again).
        trial.config["attempt"] = trial.num_failures
        launch = self.searcher.launched.get(trial.trial_id)
        name = launch.trial_id if launch else trial.trial_id
        self.echo(f"trial {name} failed ({describe_error(trial)}); retrying with the next seed "
                  f"(failure {trial.num_failures})")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.last_activity = time.time()
        # The searcher told Optuna FAIL already (Ray notifies it first); the record with the reason is written now.
        self.searcher.record_failure(trial.trial_id, self.last_results.get(trial.trial_id), describe_error(trial))
        self.finished_this_session += 1
        self.report()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.last_activity = time.time()
        self.finished_this_session += 1
        self.report()

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.stopper is not None and self.searcher.fault is not None:
            self.stopper.fail(self.searcher.fault)
        if time.time() - self.last_print >= HEARTBEAT_S:
            self.report()
        self._check_stall()

    def _check_stall(self) -> None:
        left = self.session_trials - self.finished_this_session
        idle = time.time() - self.last_activity
        if self.stopper is None or self.stopper.halted or self.running or left <= 0 or idle < STALL_S:
            return
        self.echo(f"no trial has run for {idle / 60:.0f} min although {left} of this session's are left: Ray is "
                  f"not scheduling them (see `ray status`); stopping, nothing finished is lost")
        self.stopper.interrupt()

    # -- the line --------------------------------------------------------------------------------------------------
    def line(self) -> str:
        counts = self.searcher.ledger.counts(self.replicates)
        done = sum(counts.values()) if not self.replicates else self.finished_this_session
        what = "finalists " if self.replicates else ""
        parts = [f"[{what}{done:>{len(str(self.total))}}/{self.total}] completed {counts['completed']} · stopped "
                 f"{counts['stopped']} · failed {counts['failed']} · running {len(self.running)}"]
        parts.append(self._front_and_best())
        elapsed = time.time() - self.start
        eta = ""
        left = self.session_trials - self.finished_this_session
        if self.finished_this_session and left > 0:
            eta = f", ETA {_hms(elapsed / self.finished_this_session * left)}"
        parts.append(f"{_hms(elapsed)} elapsed{eta}")
        return " | ".join(parts)

    def _front_and_best(self) -> str:
        from results.frame import trials_frame
        from results.model import search_results

        records = self.searcher.ledger.ordered_records()
        if not records:
            return "front 0"
        results = search_results(trials_frame(records), self.objectives, self.select)  # as the final answer reads it
        text = f"front {len(results.front)}"
        if self.replicates and results.noise_dof:
            text += f" | noise sd {results.noise_sd:.4g} ({results.noise_dof} dof)"
        if results.choice is None:  # nothing completed yet, or nothing meets the --select rule yet
            return text
        best, score = results.choice.best, results.choice.score  # the verification's score once there is one
        return (f"{text} | best {best['trial_id']} {score} {float(best[score]):.4f} "
                f"@ {float(best['gflops']):.3f} GFLOPs")

    def report(self) -> None:
        if self.echo is None:
            return
        self.last_print = time.time()
        self.echo(self.line())


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0.0, seconds))))
