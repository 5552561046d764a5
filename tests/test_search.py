"""search: the multi-objective ASHA, the Optuna searcher that tells stopped trials as PRUNED, the ledger and resume
repair on synthetic result streams; and end-to-end searches (``slow``) with real proxy trainings on Fashion-MNIST.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from search.ledger import Launch, Ledger, config_key
from search.optuna_search import MAX_DRAWS, Forced, ParetoOptunaSearch, reconcile_study
from search.progress import ProgressCallback, SearchStopper, describe_error
from search.run import plan_forced
from search.samplers import SAMPLERS, SamplerSpec, check_sampler, make_sampler, session_seed
from search.settings import SearchSettings
from space import ArchConfig, SearchSpace

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
OBJ, MODES = ["accuracy", "gflops"], ["max", "min"]
CONTINUE, STOP = "CONTINUE", "STOP"

optuna.logging.set_verbosity(optuna.logging.WARNING)




# ------------------------------------------------------------------------------------------------ ledger


def _launch(n: int, arch: ArchConfig, reference: str = "", optuna_number: int | None = None) -> Launch:
    return Launch(number=n, trial_id=f"t{n:04d}", config=arch.to_dict(), reference=reference,
                  optuna_number=optuna_number)


def _record(launch: Launch, status: str, acc: float | None = 0.5, gflops: float = 1.0, **extra) -> dict:
    return {"trial_id": launch.trial_id, "number": launch.number, "status": status, "reference": launch.reference,
            "accuracy": acc, "gflops": gflops, "params": 10, "trained_share": 1.0 if status == "completed" else 0.5,
            "epochs_done": 2, "time_s": 1.0, "error": "", "config": launch.config, **extra}


def test_ledger_round_trip_and_unfinished(tmp_path):
    base, paper = ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18")
    ledger = Ledger.open(tmp_path, OBJ)
    a, b = _launch(0, base, "baseline", 0), _launch(1, paper, "paper_default", 1)
    ledger.launch(a)
    ledger.launch(b)
    ledger.finish(_record(a, "completed", accuracy_curve=[0.4, 0.5]))
    # a torn last line (kill -9 while appending) is ignored
    with open(tmp_path / "launched.jsonl", "a") as fh:
        fh.write('{"number": 2, "trial')
    again = Ledger.open(tmp_path, OBJ)
    assert list(again.launches) == ["t0000", "t0001"]
    assert again.unfinished_ids() == ["t0001"]
    assert again.records["t0000"]["accuracy_curve"] == [0.4, 0.5]
    assert again.find(ArchConfig.baseline("resnet18"))[0] == "t0000"
    assert again.find(ArchConfig.paper_default("resnet18")) == ("t0001", None)
    assert again.next_number() == 2
    assert config_key(base) == config_key(base.to_dict())


def test_plan_forced_reruns_interrupted_trials_first_and_counts_them_once(tmp_path):
    base, paper = ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18")
    ledger = Ledger.open(tmp_path, OBJ)
    settings = SearchSettings(backbone="resnet18", budget=5, out=str(tmp_path))
    forced, new = plan_forced(settings, ledger)
    assert [f.reference for f in forced] == ["baseline", "paper_default"] and new == 5
    a, b = _launch(0, base, "baseline"), _launch(1, paper, "paper_default")
    ledger.launch(a)
    ledger.launch(b)
    ledger.finish(_record(a, "completed"))
    forced, new = plan_forced(settings, ledger)
    assert [(f.trial_id, f.number, f.reference) for f in forced] == [("t0001", 1, "paper_default")]
    assert new == 3  # 5 - 2 launched; the re-run of t0001 is not counted again
    # a budget of 1 leaves no room for the second reference
    forced, new = plan_forced(SearchSettings(backbone="resnet18", budget=1, out=str(tmp_path / "x")),
                              Ledger.open(tmp_path / "x", OBJ))
    assert [f.reference for f in forced] == ["baseline"] and new == 1


def test_warm_start_trains_each_stage_alone_after_the_references_within_the_budget(tmp_path):
    from search.settings import default_population

    settings = SearchSettings(backbone="resnet18", budget=5, out=str(tmp_path), warm_start=True)
    forced, new = plan_forced(settings, Ledger.open(tmp_path, OBJ))
    singles = ArchConfig.single_stages("resnet18")
    assert len(singles) == 4 and new == 5
    assert [f.arch for f in forced] == [ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"),
                                        *singles[:3]]  # the budget's 5 trials: the fourth stage waits
    assert [f.reference for f in forced] == ["baseline", "paper_default", "", "", ""]
    for i, arch in enumerate(singles):
        assert [s.attn for s in arch.stages] == ["scsa" if j == i else "none" for j in range(4)]
        assert SearchSpace("resnet18").params_of(arch)  # inside the space: the sampler sees its result
    ledger = Ledger.open(tmp_path / "b", OBJ)
    done = _launch(0, singles[1])
    ledger.launch(done)
    ledger.finish(_record(done, "completed"))
    forced, _ = plan_forced(SearchSettings(backbone="resnet18", budget=50, out=str(tmp_path / "b"), warm_start=True),
                            ledger)
    assert singles[1] not in [f.arch for f in forced] and len(forced) == 2 + 3
    assert default_population(200) == 20 and default_population(10) == 4 and default_population(10**6) == 50


def test_replicates_plan_the_finalists_reruns_first_never_twice_and_stay_out_of_the_budget(tmp_path):
    from search.finalists import SEED_STRIDE, plan_replicates, run_seed

    archs = [ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"),
             SearchSpace("resnet18").sample(1), SearchSpace("resnet18").sample(2)]
    ledger = Ledger.open(tmp_path, OBJ)
    launches = [_launch(i, a, ref) for i, (a, ref) in enumerate(zip(archs, ["baseline", "paper_default", "", ""],
                                                                    strict=True))]
    for launch, acc, g in zip(launches, [0.80, 0.79, 0.85, 0.60], [1.0, 1.2, 1.1, 1.15], strict=True):
        ledger.launch(launch)
        ledger.finish(_record(launch, "completed", acc=acc, gflops=g))
    plan = plan_replicates(ledger, OBJ, 2)  # references and the front (t0000, t0002); t0003 is far below
    assert [(r.trial_id, r.number, r.replicate_of, r.replicate) for r in plan] == [
        ("t0000r1", 4, "t0000", 1), ("t0000r2", 5, "t0000", 2), ("t0001r1", 6, "t0001", 1),
        ("t0001r2", 7, "t0001", 2), ("t0002r1", 8, "t0002", 1), ("t0002r2", 9, "t0002", 2)]
    assert all(r.config == launches[int(r.replicate_of[1:])].config for r in plan)
    assert plan_replicates(ledger, OBJ, 0) == []
    # the first three are launched, one finishes; then a kill: the two unfinished run again first, under their ids,
    # and nothing launched is planned twice
    for r in plan[:3]:
        ledger.launch(r)
    ledger.finish({**_record(plan[0], "completed", acc=0.81), "replicate_of": "t0000"})
    again = Ledger.open(tmp_path, OBJ)
    assert again.trials_launched() == 4 and again.unfinished_ids() == []
    assert again.unfinished_ids(replicates=True) == ["t0000r2", "t0001r1"]
    replan = plan_replicates(again, OBJ, 2)
    assert [r.trial_id for r in replan] == ["t0000r2", "t0001r1", "t0001r2", "t0002r1", "t0002r2"]
    assert [r.number for r in replan] == [5, 6, 7, 8, 9]
    assert again.counts() == {"completed": 4, "stopped": 0, "failed": 0}
    assert again.counts(replicates=True) == {"completed": 1, "stopped": 0, "failed": 0}
    assert run_seed(0, 0, 1) == 1 and run_seed(5, 2, 1) == 5 + 2 * SEED_STRIDE + 1


def test_the_replicate_limit_counts_configs_over_all_rounds(tmp_path):
    from search.finalists import plan_replicates

    archs = [ArchConfig.baseline("resnet18"), ArchConfig.paper_default("resnet18"),
             SearchSpace("resnet18").sample(1), SearchSpace("resnet18").sample(2)]
    ledger = Ledger.open(tmp_path, OBJ)
    for i, (a, ref, acc, g) in enumerate(zip(archs, ["baseline", "paper_default", "", ""], [0.80, 0.79, 0.85, 0.84],
                                             [1.0, 1.2, 1.1, 1.05], strict=True)):
        launch = _launch(i, a, ref)
        ledger.launch(launch)
        ledger.finish(_record(launch, "completed", acc=acc, gflops=g))
    plan = plan_replicates(ledger, OBJ, 1, limit=3)  # references first, then the front: t0002 or t0003, not both
    assert [r.replicate_of for r in plan] == ["t0000", "t0001", "t0003"]
    for r in plan:  # the replicate pulls t0003 down: t0002 is now alone on the front, but the limit is spent
        ledger.launch(r)
        ledger.finish({**_record(r, "completed", acc={"t0003": 0.70}.get(r.replicate_of, 0.80)),
                       "replicate_of": r.replicate_of})
    assert plan_replicates(ledger, OBJ, 1, limit=3) == []
    assert [r.replicate_of for r in plan_replicates(ledger, OBJ, 1, limit=4)] == ["t0002"]


# ------------------------------------------------------------------------------------------------ the searcher


def _searcher(tmp_path, space: SearchSpace, forced=(), seed: int = 0) -> ParetoOptunaSearch:
    ledger = Ledger.open(tmp_path, OBJ)
    return ParetoOptunaSearch(space, ledger, OBJ, MODES, SamplerSpec("random", seed, len(OBJ)), None,
                              "scsa-search", forced)


def _epoch(epoch: int, epochs: int, acc: float, gflops: float) -> dict:
    return {"epoch": epoch, "epochs": epochs, "accuracy": acc, "gflops": gflops, "params": 100,
            "time_total_s": float(epoch)}


def _state_of(search: ParetoOptunaSearch, trial_id: str) -> optuna.trial.TrialState:
    (trial,) = [t for t in search.study.trials if t.user_attrs.get("trial_id") == trial_id]
    return trial.state


def test_stopped_trials_are_told_pruned_never_complete(tmp_path):
    space = SearchSpace("resnet18")
    refs = [Forced(ArchConfig.baseline("resnet18"), "baseline"),
            Forced(ArchConfig.paper_default("resnet18"), "paper_default")]
    search = _searcher(tmp_path, space, refs)
    stream = {  # Ray trial id -> accuracy per epoch reached (schedule: 3 epochs)
        "r0": [0.5, 0.6, 0.7],  # completes
        "r1": [0.4, 0.5, 0.8],  # completes
        "r2": [0.9],  # stopped by the scheduler at epoch 1, with the best accuracy so far
        "r3": [0.3, 0.35],  # stopped at epoch 2
    }
    configs = {rid: search.suggest(rid) for rid in stream}
    assert configs["r0"]["reference"] == "baseline" and configs["r1"]["reference"] == "paper_default"
    assert [c["trial_key"] for c in configs.values()] == ["t0000", "t0001", "t0002", "t0003"]
    for rid, curve in stream.items():
        for epoch, acc in enumerate(curve, start=1):
            search.on_trial_result(rid, _epoch(epoch, 3, acc, 1.0 + epoch / 10))
        # Ray calls on_trial_complete with the last result for natural ends *and* scheduler stops alike.
        search.on_trial_complete(rid, _epoch(len(curve), 3, curve[-1], 1.0 + len(curve) / 10))
    states = {t.user_attrs["trial_id"]: t.state for t in search.study.trials}
    assert states == {"t0000": optuna.trial.TrialState.COMPLETE, "t0001": optuna.trial.TrialState.COMPLETE,
                      "t0002": optuna.trial.TrialState.PRUNED, "t0003": optuna.trial.TrialState.PRUNED}
    pruned = [t for t in search.study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.values is None for t in pruned)
    assert pruned[0].user_attrs["accuracy_curve"] == [0.9] and not pruned[0].intermediate_values
    # the sampler's and the dashboard's front hold completed trials only
    assert {t.user_attrs["trial_id"] for t in search.study.best_trials} <= {"t0000", "t0001"}
    with open(tmp_path / "trials.csv") as fh:
        rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    assert [rows[t]["status"] for t in sorted(rows)] == ["completed", "completed", "stopped", "stopped"]
    assert float(rows["t0002"]["trained_share"]) == pytest.approx(1 / 3)
    with open(tmp_path / "pareto.csv") as fh:
        assert {r["trial_id"] for r in csv.DictReader(fh)} <= {"t0000", "t0001"}


def test_failed_trials_are_told_fail_and_a_missing_result_is_not_complete(tmp_path):
    search = _searcher(tmp_path, SearchSpace("resnet18"))
    search.suggest("r0")
    search.suggest("r1")
    search.on_trial_complete("r0", None, error=True)  # Ray tells the searcher first, then its callbacks
    assert _state_of(search, "t0000") == optuna.trial.TrialState.RUNNING  # not told before it is recorded
    search.record_failure("r0", None, "TrainingDiverged: boom")  # the progress callback, with the reason
    assert search.ledger.records["t0000"]["error"] == "TrainingDiverged: boom"
    search.on_trial_complete("r1", {"epoch": 3, "epochs": 3, "accuracy": float("nan"), "gflops": 1.0})
    assert _state_of(search, "t0000") == optuna.trial.TrialState.FAIL
    assert _state_of(search, "t0001") == optuna.trial.TrialState.FAIL  # NaN objective: failed, not COMPLETE
    # a second notification of the same trial changes nothing
    search.on_trial_complete("r0", _epoch(3, 3, 0.9, 1.0))
    assert _state_of(search, "t0000") == optuna.trial.TrialState.FAIL


def test_duplicates_are_answered_from_the_record_and_exhaustion_finishes(tmp_path):
    # A space with one config (no attention anywhere): after the first trial, every suggestion is a duplicate.
    space = SearchSpace.from_spec("resnet18", {"attn": ["none"]})
    search = _searcher(tmp_path, space)
    config = search.suggest("r0")
    assert config["arch"] == ArchConfig.baseline("resnet18").to_dict()
    # while r0 runs, its duplicates wait for its outcome; nothing else can be proposed: wait (None)
    assert search.suggest("r1") is None
    assert search.duplicates == MAX_DRAWS
    assert search.suggest("r1") is None and search.duplicates == MAX_DRAWS  # no re-asking until something changes
    search.on_trial_complete("r0", _epoch(3, 3, 0.7, 1.8))
    duplicates = [t for t in search.study.trials if "duplicate_of" in t.user_attrs]
    assert len(duplicates) == MAX_DRAWS
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.values == [0.7, 1.8] for t in duplicates)
    # nothing running any more and the space is exhausted: the search finishes early
    assert search.suggest("r2") == "FINISHED"
    assert len(search._ledger.launches) == 1  # duplicates cost no budget


def test_reference_outside_the_space_runs_without_an_optuna_trial(tmp_path):
    space = SearchSpace.from_spec("resnet18", {"attn": ["scsa"]})  # excludes the plain backbone
    search = _searcher(tmp_path, space, [Forced(ArchConfig.baseline("resnet18"), "baseline"),
                                         Forced(ArchConfig.paper_default("resnet18"), "paper_default")])
    assert search.suggest("r0")["reference"] == "baseline"
    assert search.suggest("r1")["reference"] == "paper_default"
    assert len(search.study.trials) == 1  # only the paper default (inside the space) is an Optuna trial
    assert search.study.trials[0].params["s1_attn"] == "scsa"
    search.on_trial_complete("r0", _epoch(3, 3, 0.5, 1.8))
    search.on_trial_complete("r1", _epoch(3, 3, 0.6, 1.9))
    assert set(search._ledger.records) == {"t0000", "t0001"}
    assert search._ledger.launches["t0000"].optuna_number is None


def test_reconcile_study_repairs_a_killed_session(tmp_path):
    space = SearchSpace("resnet18")
    search = _searcher(tmp_path, space)
    for rid in ("r0", "r1", "r2"):
        search.suggest(rid)
    ledger = search._ledger
    # r0 finished properly; r1's record was written but the kill came before Optuna was told; r2 was running
    search.on_trial_complete("r0", _epoch(3, 3, 0.7, 1.5))
    launch1 = ledger.launches["t0001"]
    ledger.finish(_record(launch1, "completed", acc=0.8, gflops=1.6))
    search.study.enqueue_trial({"s1_attn": "none"})  # a WAITING trial left behind
    repaired = reconcile_study(search.study, Ledger.open(tmp_path, OBJ))
    assert repaired == {"told_from_record": 1, "interrupted": 2}
    states = {t.number: (t.state, t.values) for t in search.study.trials}
    assert states[1] == (optuna.trial.TrialState.COMPLETE, [0.8, 1.6])
    assert states[2][0] == optuna.trial.TrialState.FAIL
    assert states[3][0] == optuna.trial.TrialState.FAIL
    assert not search.study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))


# ------------------------------------------------------------------------------------------------ progress, stop


class _FakeRayTaskError(Exception):
    def __init__(self, cause):
        super().__init__("Traceback (most recent call last): ...long...")
        self.cause = cause


def test_a_session_whose_trials_stopped_being_scheduled_notices_and_stops(tmp_path, monkeypatch):
    import search.progress as progress_module

    searcher = _searcher(tmp_path, SearchSpace("resnet18"))
    lines, stopper = [], SearchStopper()
    progress = ProgressCallback(searcher, total=3, session_trials=3, objectives=OBJ, echo=lines.append,
                                stopper=stopper)
    trial = SimpleNamespace(trial_id="r0")
    progress.on_trial_start(0, [], trial)
    monkeypatch.setattr(progress_module, "STALL_S", 0.0)
    progress.on_step_end(0, [])
    assert not stopper.halted  # a trial is running: slow, not stalled
    progress.on_trial_complete(0, [], trial)
    progress.on_step_end(0, [])  # nothing runs, 2 trials are left, and nothing happened for STALL_S
    assert stopper.interrupted and "Ray is not scheduling them" in lines[-1] and "2 of this session's" in lines[-1]


def test_failed_trial_recorded_with_its_reason(tmp_path):
    search = _searcher(tmp_path, SearchSpace("resnet18"))
    search.suggest("r0")
    lines = []
    progress = ProgressCallback(search, total=3, session_trials=3, objectives=OBJ, echo=lines.append)
    from evaluators.proxy import TrainingDiverged

    cause = TrainingDiverged("training diverged: loss is nan at epoch 1/2", epoch=1, step=3, loss=float("nan"))
    trial = SimpleNamespace(trial_id="r0", get_pickled_error=lambda: _FakeRayTaskError(cause),
                            get_error=lambda: "", num_failures=1)
    search.on_trial_complete("r0", None, error=True)  # what Ray calls first
    progress.on_trial_error(0, [], trial)
    record = search._ledger.records["t0000"]
    assert record["status"] == "failed"
    assert record["error"] == "TrainingDiverged: training diverged: loss is nan at epoch 1/2"
    assert lines and "failed 1" in lines[-1]
    oom = SimpleNamespace(get_pickled_error=lambda: None, get_error=lambda: "Trace\n  ...\nRuntimeError: CUDA out of "
                          "memory. Tried to allocate 2 GiB\n")
    assert describe_error(oom) == "out of memory: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"


def test_stopper_stops_all_on_time_budget_or_interrupt():
    assert not SearchStopper(None).stop_all()
    spent = SearchStopper(0.0)
    time.sleep(0.01)
    assert spent.stop_all() and spent.timed_out and not spent.interrupted
    s = SearchStopper(3600)
    s.interrupt()
    assert s.stop_all() and s.interrupted and not s.timed_out


# ------------------------------------------------------------------------------------------------ samplers


def test_samplers_are_multi_objective_or_refused_clearly():
    for name in SAMPLERS:
        try:
            check_sampler(name, 2)
        except ValueError as e:  # only for missing optional dependencies, saying which
            assert "pip install" in str(e)
            continue
        sampler = make_sampler(name, seed=0, n_objectives=2, population_size=4)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        space = SearchSpace("resnet18")
        for i in range(12):  # past every sampler's start-up phase, with the states the searcher produces
            trial = study.ask()
            arch = space.suggest(trial)
            if i % 4 == 1:
                trial.set_user_attr("accuracy_curve", [0.1])
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif i % 4 == 2:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, [len(config_key(arch)) % 7 / 7, float(len(arch.describe()))])
        assert len(study.best_trials) >= 1
    with pytest.raises(ValueError, match="unknown sampler"):
        check_sampler("cmaes", 2)


def test_objectives_name_the_score_they_rank_by_and_put_it_first():
    from search.settings import objective_columns

    assert objective_columns("score,gflops", "tse") == ["tse", "gflops"]  # the preset's own score
    assert objective_columns("gflops,accuracy", "tse") == ["accuracy", "gflops"]  # or one named
    assert objective_columns("latency,params,score", "val_loss") == ["val_loss", "latency_ms", "params"]
    with pytest.raises(ValueError, match="unknown objective 'acc'"):
        objective_columns("acc,gflops")


def test_session_seed_changes_on_resume_only():
    assert session_seed(7, 0) == 7
    assert session_seed(7, 12) != 7 and session_seed(7, 12) == session_seed(7, 12)


# ------------------------------------------------------------------------------------------------ what Ray pickles


class _LockedSampler(optuna.samplers.RandomSampler):
    """A sampler that cannot be pickled, as optuna 5.1 made every genetic-algorithm sampler."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed=seed)
        import threading

        self._lock = threading.Lock()


def _locked_sampler() -> optuna.samplers.BaseSampler:
    return _LockedSampler(seed=0)


@pytest.mark.parametrize("sampler", [*SAMPLERS, "unpicklable"])
def test_the_searcher_pickles_without_its_sampler_or_study_and_the_copy_goes_on_from_the_storage(tmp_path, sampler):
    # Ray Tune pickles the searcher with the tuner's state (ray.cloudpickle); nothing in it may depend on an Optuna
    # object pickling, and a copy must carry on from the study's storage.
    import ray.cloudpickle

    if sampler != "unpicklable":
        try:
            check_sampler(sampler, len(OBJ))
        except ValueError as e:
            pytest.skip(str(e))
    make = _locked_sampler if sampler == "unpicklable" else SamplerSpec(sampler, 0, len(OBJ), population_size=4)
    with pytest.raises(TypeError, match="pickle"):
        ray.cloudpickle.dumps(_LockedSampler())  # the trap is real: such a sampler does not pickle
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = ParetoOptunaSearch(SearchSpace("resnet18"), Ledger.open(tmp_path, OBJ), OBJ, MODES, make, storage)
    search.suggest("r0")
    search.on_trial_complete("r0", _epoch(3, 3, 0.5, 1.5))
    search.suggest("r1")  # still running when pickled
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(search))
    assert copy.study is not search.study and len(copy.study.trials) == 2
    copy.on_trial_complete("r1", _epoch(1, 3, 0.4, 1.6))  # stopped early: PRUNED, through the reopened study
    for rid in ("r2", "r3"):
        copy.suggest(rid)
        copy.on_trial_complete(rid, _epoch(3, 3, 0.6, 1.7))
    states = [t.state for t in optuna.load_study(study_name="scsa-search", storage=storage).trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 3
    memory = _searcher(tmp_path / "memory", SearchSpace("resnet18"))
    with pytest.raises(RuntimeError, match="storage URL"):
        _ = ray.cloudpickle.loads(ray.cloudpickle.dumps(memory)).study
