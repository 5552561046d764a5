"""Run (or resume) a search: Ray Tune's ``Tuner`` over proxy trainings, Optuna proposing configs, our scheduler
stopping the unpromising ones, everything recorded in ``--out``.

``--out`` after a search::

    search.json          the settings (``--resume`` reads them back and refuses conflicting ones)
    study.db             the Optuna study (SQLite; ``optuna-dashboard sqlite:///study.db``)
    launched.jsonl       one line per trial handed to Ray: what the budget counts
    trials.csv/.parquet  one row per finished trial, rewritten after each
    pareto.csv           the non-dominated completed trials
    cost_spread.json     each cost objective at the plain backbone, the paper default and the space's costliest
                         config, measured when the search starts (printed then; flat axes named in best_config.md)
    pareto.png, hypervolume.png, effects.png, best_config.json/.md, best_config_mmpretrain.py
    ray/session-N/       Ray's experiment directory of session N (or under ``--storage``)

Resume (after Ctrl-C, a crash or ``kill -9``) does not use ``Tuner.restore``: the study, the journal and the
records are the state, and a new Tuner runs what is left.

1. The study is loaded from ``study.db``; Optuna trials left RUNNING or WAITING are repaired
   (:func:`~search.optuna_search.reconcile_study`): told from their record if the record was written, else FAIL
   with ``interrupted``.
2. Launched trials without a record were running when the search died: they run again first, under the same
   trial id and number. They count once toward the budget (they were counted when first launched).
3. The sampler is rebuilt on the loaded study (NSGA-II and TPE keep no state outside it) with a seed derived
   from ``--seed`` and the study's size, so it continues rather than replaying its first draws; the rungs of the
   scheduler are re-seeded from the recorded accuracy curves.
4. A new Tuner launches exactly ``budget - launched`` new trials, plus the re-runs.

The same resume happens by itself, at most ``MAX_RESTARTS`` times, when Ray loses a trial worker outside any
trial (:func:`lost_worker`): Ray Tune records a worker that dies *during* a trial as that trial's failure, but one
killed while it starts or is being reused (by Ray's memory monitor, the kernel's OOM killer or a lost node) ends
``Tuner.fit`` with an error. The trials it was running are not recorded and run again, as after Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from results.schema import REPLICATE_OF, STOPPED, curve_key
from space import ArchConfig, SearchSpace

from .cluster import init_ray
from .ledger import Ledger
from .optuna_search import Forced, ParetoOptunaSearch, reconcile_study
from .out_lock import OutLock
from .outcome import SearchOutcome
from .samplers import SamplerSpec, session_seed
from .settings import STUDY_DB, STUDY_NAME, SearchSettings

__all__ = ["MAX_RESTARTS", "lost_worker", "plan_forced", "report_cost_spread", "run"]

MAX_RESTARTS = 3



def plan_forced(settings: SearchSettings, ledger: Ledger) -> tuple[list[Forced], int]:
    """Configs to launch before the sampler (re-runs of interrupted trials, then references not launched yet, then
    with ``warm_start`` the single-stage configs not launched yet), and how many new trials the budget still
    allows."""
    reruns = []
    for tid in sorted(ledger.unfinished_ids(), key=lambda t: ledger.launches[t].number):
        launch = ledger.launches[tid]
        reruns.append(Forced(launch.arch, launch.reference, launch.trial_id, launch.number))
    new = max(0, settings.budget - ledger.trials_launched())
    references = []
    for name, make in (("baseline", ArchConfig.baseline), ("paper_default", ArchConfig.paper_default)):
        arch = make(settings.backbone)
        if ledger.find(arch) is None:
            references.append(Forced(arch, name))
    if settings.warm_start:
        references += [Forced(arch) for arch in ArchConfig.single_stages(settings.backbone)
                       if ledger.find(arch) is None]
    return reruns + references[:new], new


def _next_session(storage: str) -> int:
    """Index of this session's Ray experiment directory (``session-N``): one per run or resume, never reused."""
    if "://" in storage:
        return int(time.time())  # a remote store is not listed here; a timestamp is unique enough
    path = Path(storage)
    return sum(1 for _ in path.glob("session-*")) if path.is_dir() else 0


def _trial_dirname(trial) -> str:
    # Ray's default name embeds the whole flattened config; the search's trial id is what users look for.
    return f"{trial.config.get('trial_key', 'trial')}_{trial.trial_id}"


def lost_worker(error: BaseException) -> BaseException | None:
    """The Ray error in ``error``'s chain saying a worker process was lost (killed for memory, crashed, its node
    gone), or None for any other error."""
    from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

    from results.io import error_chain

    lost = (OutOfMemoryError, RayActorError, WorkerCrashedError, NodeDiedError)
    return next((e for e in error_chain(error) if isinstance(e, lost)), None)


class _WorkerLost(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(" ".join(str(error).split())[:300])
        self.error = error


def run(settings: SearchSettings, echo=print) -> SearchOutcome:
    """Run or resume the search described by ``settings`` (validated by the caller; see ``run_search.py``).

    Raises :class:`~search.out_lock.OutInUse` at once if another search is writing ``settings.out``.
    A session that ends because Ray lost a trial worker outside any trial is resumed in place, at most
    ``MAX_RESTARTS`` times; the time budget, if any, counts from the first session."""
    deadline = time.time() + settings.time_budget_min * 60 if settings.time_budget_min else None
    with OutLock(settings.out_path):  # OutInUse if another search writes there
        for restart in range(MAX_RESTARTS + 1):
            try:
                return _run_session(settings, echo, deadline)
            except _WorkerLost as lost:
                if restart == MAX_RESTARTS:
                    raise lost.error from None
                echo(f"Ray lost a trial worker outside any trial ({type(lost.error).__name__}: {lost}); the trials "
                     f"it ran are not recorded. Resuming the search ({restart + 1}/{MAX_RESTARTS})")
                settings = replace(settings, resume=True)
    raise AssertionError("unreachable")


def _run_session(settings: SearchSettings, echo, deadline: float | None) -> SearchOutcome:
    from ray.tune.schedulers import FIFOScheduler

    from evaluators.fidelity import describe_verify
    from results.report import finalize

    from .progress import SearchStopper
    from .scheduler import PROMOTION_BAND_SD, ParetoASHAScheduler, promotion_band

    out = settings.out_path
    space = SearchSpace.from_spec(settings.backbone, settings.space_spec)
    ledger = Ledger.open(out, settings.objectives)
    forced, new = plan_forced(settings, ledger)
    session_trials = len([f for f in forced if f.trial_id is not None]) + new

    stopper = SearchStopper(None if deadline is None else deadline - time.time())
    fit = _Fitter(settings, stopper, echo)
    searcher = None
    try:
        if settings.address:
            fit.ray()  # join the cluster before anything is written: one that refuses leaves no trace in --out
        out.mkdir(parents=True, exist_ok=True)
        settings.write_manifest(seed_noise(ledger, settings.objectives[0]))
        report_cost_spread(settings, space, echo)
        storage = f"sqlite:///{(out / STUDY_DB).resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        n_in_study = 0
        if settings.resume:
            try:
                study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
            except KeyError:
                study = None
            if study is not None:
                repaired = reconcile_study(study, ledger)
                n_in_study = len(study.trials)
                if any(repaired.values()):
                    echo(f"resume: {repaired['interrupted']} interrupted Optuna trial(s) marked FAIL, "
                         f"{repaired['told_from_record']} told from their records")
            reruns = [f for f in forced if f.trial_id is not None]
            echo(f"resume: {len(ledger.records)} finished trial(s) kept, {len(reruns)} interrupted one(s) run "
                 f"again ({', '.join(f.trial_id for f in reruns) or 'none'}), {new} new to reach the budget of "
                 f"{settings.budget}")
        sampler = SamplerSpec(settings.sampler, session_seed(settings.seed, n_in_study), len(settings.objectives),
                              settings.population_size)
        searcher = ParetoOptunaSearch(space, ledger, settings.objectives, settings.modes, sampler, storage,
                                      STUDY_NAME, forced)
        ledger.flush()

        if session_trials:
            if settings.early_stopping:
                scheduler = ParetoASHAScheduler(settings.objectives, settings.modes, settings.epochs,
                                                settings.grace_period, settings.reduction_factor,
                                                band=promotion_band(settings.fidelity or {}, settings.objectives[0]))
                curve = curve_key(settings.objectives[0])
                for record in ledger.records.values():
                    if record.get(curve) and not record.get(REPLICATE_OF):
                        scheduler.seed(record["trial_id"], record[curve],
                                       {k: record.get(k) for k in settings.objectives[1:]})
            else:
                scheduler = FIFOScheduler()
            echo(f"searching: {session_trials} trial(s) this session, up to {settings.max_concurrent} at a time "
                 f"x {settings.cpus_per_trial} CPU(s)"
                 + (f" + {settings.gpus_per_trial:g} GPU" if settings.gpus_per_trial else "")
                 + (f"; early stopping promotes ties within {scheduler.band:.3g} {settings.objectives[0]} "
                    f"({PROMOTION_BAND_SD:g} x the preset's seed sd at the first rung)"
                    if getattr(scheduler, "band", 0) else "")
                 + f"; results in {out}")
            fit(searcher, scheduler, session_trials, settings.budget)
        if not (stopper.interrupted or stopper.timed_out):
            _replicate(settings, ledger, fit, echo)
        if not (stopper.interrupted or stopper.timed_out or fit.worker_lost is not None):
            _verify(settings, ledger, fit, echo)
    finally:
        fit.shutdown()
    if fit.worker_lost is not None:
        raise _WorkerLost(fit.worker_lost)

    written = finalize(out, ledger.ordered_records(), settings.objectives, settings.select,
                       resolution=settings.resolution, dataset=settings.dataset, num_classes=settings.num_classes,
                       fidelity=describe_verify(settings.verify),
                       verify_score=(settings.verify_fidelity or {}).get("score")) if ledger.records else {}
    return SearchOutcome(
        out=out,
        launched_total=ledger.trials_launched(),
        budget=settings.budget,
        counts=ledger.counts(),
        interrupted=stopper.interrupted,
        timed_out=stopper.timed_out,
        exhausted=bool(searcher and searcher.exhausted),
        duplicates=searcher.duplicates if searcher else 0,
        replicate_counts=ledger.counts(replicates=True),
        noise=noise_line(seed_noise(ledger, settings.objectives[0])),
        written={k: v for k, v in written.items() if isinstance(v, Path)},
        best=written.get("best"),
        reason=str(written.get("reason", "")),
        note=str(written.get("note", "")),
        answer=str(written.get("answer", "")),
        score=str(written.get("score", "")),
        better_than_plain=str(written.get("better_than_plain", "")),
    )


def report_cost_spread(settings: SearchSettings, space: SearchSpace, echo) -> dict[str, Any] | None:
    """Measure how far each cost objective can move over ``space`` (:func:`evaluators.cost_spread.cost_spread`),
    print it, and keep it in ``cost_spread.json``; a resumed search prints what its first session measured.

    A diagnosis, not part of the search: if it cannot be measured, one line says why and the search goes on."""
    from results.report import read_cost_spread, write_cost_spread

    spread = read_cost_spread(settings.out_path) if settings.resume else None
    if spread is None:
        try:
            spread = _measure_cost_spread(settings, space)
        except Exception as e:  # whatever goes wrong here must not stop the search
            echo(f"cost spread over the space not measured: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            return None
        write_cost_spread(settings.out_path, spread)
    for line in spread["lines"]:
        echo(line)
    return spread


def _measure_cost_spread(settings: SearchSettings, space: SearchSpace) -> dict[str, Any]:
    from evaluators.cost_spread import cost_spread

    objectives, costs = list(settings.objectives), {}
    if "latency_ms" in objectives and settings.address:
        objectives.remove("latency_ms")  # the driver's machine is not the trials': its latency would say nothing
    elif "latency_ms" in objectives:
        from evaluators.device import resolve_device
        from evaluators.latency import latency_ratio
        from evaluators.latency_cache import cache_at

        device = resolve_device(settings.device)  # the trials' device: a local driver runs beside them
        # the trials' cache: the plain backbone measured here, before any trial loads the machine, sets their scale
        cache = cache_at(settings.latency_cache_dir())
        costs["latency_ms"] = lambda arch: latency_ratio(arch, resolution=settings.resolution, device=device,
                                                         threads=settings.cpus_per_trial, cache=cache).latency_ms
    return cost_spread(space, settings.resolution, objectives, costs).to_dict()


def seed_noise(ledger: Ledger, objective: str) -> dict[str, Any] | None:
    """The pooled within-config standard deviation of ``objective`` over the replicated configs (``search.json``'s
    ``noise``), or None before any replicate finished."""
    from results.config_stats import noise_estimate
    from results.frame import trials_frame

    records = ledger.ordered_records()
    if not any(r.get(REPLICATE_OF) for r in records):
        return None
    sd, dof = noise_estimate(trials_frame(records), objective)
    return {"objective": objective, "sd": sd, "dof": dof} if dof else None


def noise_line(noise: dict[str, Any] | None) -> str:
    """``"seed noise of accuracy: sd 0.0091 (pooled within configs, 10 degrees of freedom)"``, or ""."""
    if not noise:
        return ""
    return (f"seed noise of {noise['objective']}: sd {noise['sd']:.4g} (pooled within configs, {noise['dof']} "
            f"degrees of freedom)")


def _replicate(settings: SearchSettings, ledger: Ledger, fit: _Fitter, echo) -> None:
    """The replicate phase (see :mod:`search.finalists`): rounds until the finalists stop changing."""
    from .finalists import max_finalists, plan_replicates

    # Each round launches at least one replicate that did not exist, and configs are finite: this ends.
    while True:
        limit = max_finalists(settings.budget)
        todo = plan_replicates(ledger, settings.objectives, settings.replicates, limit, settings.select)
        if not todo:
            break
        _train_finalists(settings, ledger, fit, todo, echo, "replicates", f", {settings.replicates} more seed(s) "
                         f"each (at most {limit} finalists in all: the references, then the front as --select ranks "
                         "it)")
        if fit.stopper.interrupted or fit.stopper.timed_out or fit.worker_lost is not None:
            break
    noise = seed_noise(ledger, settings.objectives[0])
    if noise:
        settings.write_manifest(noise)
        echo(noise_line(noise))


def _verify(settings: SearchSettings, ledger: Ledger, fit: _Fitter, echo) -> None:
    """The verification rung (see :mod:`search.finalists`): the finalists at ``--verify``'s fidelity, paired seeds."""
    from evaluators.fidelity import describe_verify

    from .finalists import max_finalists, plan_verification

    if not settings.verify_fidelity:
        return
    limit = max_finalists(settings.budget)
    todo = plan_verification(ledger, settings.objectives, settings.verify_seeds, limit, settings.select)
    if todo:
        _train_finalists(settings, ledger, fit, todo, echo, "verifying",
                         f" at {describe_verify(settings.verify)}, {settings.verify_seeds} paired seed(s) each (at "
                         f"most {limit} finalists: the references, then the front as --select ranks it, then the "
                         "configs nearest it)")


def _train_finalists(settings: SearchSettings, ledger: Ledger, fit: _Fitter, todo: list, echo, what: str,
                     how: str) -> None:
    """Say what is trained again and train it: one Tuner over the launches ``todo``, no early stopping."""
    from ray.tune.schedulers import FIFOScheduler

    from .finalists import ReplicateSearch

    configs = len({launch.replicate_of for launch in todo})
    echo(f"{what}: {len(todo)} run(s) for {configs} finalist(s){how}")
    fit(ReplicateSearch(ledger, todo, settings.objectives, settings.modes), FIFOScheduler(), len(todo), len(todo),
        replicates=True)


class _Fitter:
    """Runs one Tuner over a searcher (starting Ray on first use), and closes what the Tuner left open."""

    def __init__(self, settings: SearchSettings, stopper, echo) -> None:
        self.settings = settings
        self.stopper = stopper
        self.echo = echo
        self.started_ray = False
        self.ray_ready = False
        self.worker_lost: BaseException | None = None
        self.session = _next_session(settings.storage_path)

    def __call__(self, searcher, scheduler, num_samples: int, total: int, replicates: bool = False) -> None:
        from ray import tune

        from .progress import ProgressCallback, faults_in_ray_logs
        from .trainable import train_trial

        if self.worker_lost is not None:
            return
        self.ray()
        settings = self.settings
        progress = ProgressCallback(searcher, total, num_samples, settings.objectives, settings.select,
                                    echo=self.echo, replicates=replicates, stopper=self.stopper)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, settings=settings.for_trials()),
            {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
        )
        # The legacy reporter honours verbose=0; the new one prints its table whatever the verbosity.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        name = f"session-{self.session}" + ("-replicates" if replicates else "")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=settings.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=settings.storage_path,
                stop=self.stopper,
                callbacks=[progress],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=settings.retries),
            ),
        )
        with _graceful_interrupt(self.stopper, self.echo), faults_in_ray_logs(self.stopper):
            try:
                tuner.fit()
            except Exception as e:
                self.worker_lost = lost_worker(e)
                if self.worker_lost is None:
                    raise
                self.stopper.interrupt()  # what was running is left unrecorded, for the resume to run again
        if searcher.fault is not None:
            self.stopper.fail(searcher.fault)
        _close_unfinished(searcher, progress, self.stopper, self.echo)
        if self.stopper.fault is not None:
            raise self.stopper.fault  # a full disk: run_search.py says so in one line

    def ray(self) -> None:
        """Start Ray, or join the cluster, once."""
        if not self.ray_ready:
            self.started_ray = init_ray(self.settings)
            self.ray_ready = True

    def shutdown(self) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()


def _close_unfinished(searcher, progress, stopper, echo) -> None:
    """Trials Ray ended without telling anyone: the whole search was stopped while they ran."""
    left = [rid for rid in searcher.launched if not searcher.finished(rid)]
    for rid in left:
        if stopper.halted:
            searcher.mark_interrupted(rid)  # not recorded: --resume runs it again under the same id
            continue
        last = progress.last_results.get(rid)
        why = "time budget reached" if stopper.timed_out else "search ended"
        when = f"after epoch {last['epoch']}" if last and last.get("epoch") else "before its first epoch"
        searcher.finish_unreported(rid, last, STOPPED, f"{why} {when}")
    if left and stopper.halted:
        echo(f"{'interrupted' if stopper.interrupted else 'stopped'}: {len(left)} running trial(s) not recorded; "
             f"--resume runs them again")


class _graceful_interrupt:
    """First Ctrl-C (or SIGTERM): stop launching, end running trials, write results. Second Ctrl-C: abort now."""

    def __init__(self, stopper, echo) -> None:
        self.stopper = stopper
        self.echo = echo
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        # Ray Tune installs its own SIGINT handler inside fit() unless told not to; ours knows what to record.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stopper.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.stopper.interrupt()
        self.echo("stopping: ending running trials and writing results (Ctrl-C again to abort at once)")
        signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
