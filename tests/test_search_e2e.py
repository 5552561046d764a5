"""The search end to end, as a user runs it: real smoke trials through ``run_search.py`` (files, statuses, the front
of the means, replicates), and what happens when it is killed or interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search.settings import SearchSettings
from space import ArchConfig

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _run(args: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_search.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _start_until(args: list[str], out: Path, enough, capture: bool = False, timeout: float = 400) -> subprocess.Popen:
    """Start a search in its own process group and return once ``enough(rows of trials.csv)`` holds (or it ended)."""
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), *args], cwd=ROOT, stdout=pipe,
                            stderr=pipe, text=True, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if (out / "trials.csv").exists() and enough(_rows(out)):
                break
    except BaseException:  # a failing check must not leave the search running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc


def _rows(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _non_dominated(rows: list[dict]) -> set[str]:
    done = [r for r in rows if r["status"] == "completed"]
    front = set()
    for r in done:
        a, g = float(r["accuracy"]), float(r["gflops"])
        dominated = any(float(o["accuracy"]) >= a and float(o["gflops"]) <= g
                        and (float(o["accuracy"]) > a or float(o["gflops"]) < g) for o in done)
        if not dominated:
            front.add(r["trial_id"])
    return front


needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION}")


@pytest.mark.slow
@needs_fashion
def test_search_end_to_end(smoke_search):
    """6 real smoke trials, then 2 replicates of each finalist: files, statuses, front of the means, intervals,
    study — and a failure and a retry, injected (see the ``smoke_search`` fixture)."""
    out, proc = smoke_search
    everything = _rows(out)
    rows = [r for r in everything if not r["replicate_of"]]
    replicates = [r for r in everything if r.get("replicate_of")]
    assert [r["trial_id"] for r in rows] == [f"t{i:04d}" for i in range(6)]
    assert [r["reference"] for r in rows[:2]] == ["baseline", "paper_default"]
    assert ArchConfig.from_dict(json.loads(rows[0]["config_json"])) == ArchConfig.baseline("resnet18")
    assert len({r["config_json"] for r in rows}) == 6  # never the same config twice
    assert {r["status"] for r in rows} <= {"completed", "stopped", "failed"}
    failed = {r["trial_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert list(failed) == ["t0004"] and failed["t0004"].startswith("TrainingDiverged: injected")
    retried = next(r for r in rows if r["trial_id"] == "t0003")
    assert retried["status"] != "failed" and retried["seed"] == "1"  # the retry ran with the next seed
    for r in rows:
        if r["status"] == "stopped":
            assert float(r["fidelity"]) < 1.0
        if r["status"] == "completed":
            assert float(r["fidelity"]) == 1.0 and float(r["gflops"]) > 0
    # replicates: both references and the front, 2 more seeds each (the same seeds for all), rows of their own
    finalists = {r["replicate_of"] for r in replicates}
    assert {r["trial_id"] for r in rows if r["reference"]} <= finalists <= {r["trial_id"] for r in rows}
    for tid in finalists:
        mine = sorted((r for r in replicates if r["replicate_of"] == tid), key=lambda r: r["trial_id"])
        assert [(r["trial_id"], r["seed"], r["status"]) for r in mine] == \
               [(f"{tid}r1", "1000", "completed"), (f"{tid}r2", "2000", "completed")]
        assert all(r["config_json"] == next(o for o in rows if o["trial_id"] == tid)["config_json"] for r in mine)
    means = {}
    for r in rows:
        if r["status"] == "completed":
            seeds = [r] + [o for o in replicates if o["replicate_of"] == r["trial_id"]]
            means[r["trial_id"]] = {**r, "accuracy": sum(float(o["accuracy"]) for o in seeds) / len(seeds)}
    with open(out / "pareto.csv", newline="") as fh:
        pareto = list(csv.DictReader(fh))
    front = {r["trial_id"] for r in pareto}
    assert front == _non_dominated(list(means.values())) and front  # the front of the means
    for r in pareto:
        assert float(r["accuracy"]) == pytest.approx(means[r["trial_id"]]["accuracy"]) and r["seeds"] == "3"
        assert float(r["accuracy_ci95"]) >= 0
    md = (out / "best_config.md").read_text()
    assert "Seed noise: the pooled within-config standard deviation of accuracy is" in md
    assert "(paired over 3 seed(s), 95 % interval): **" in md and " (3 seeds) |" in md
    assert "seed noise of accuracy: sd " in proc.stdout and "replicate run(s) of the finalists" in proc.stdout
    noise = json.loads((out / "search.json").read_text())["noise"]
    assert noise["objective"] == "accuracy" and noise["sd"] >= 0 and noise["dof"] == 2 * len(finalists)
    assert f"sd {noise['sd']:.4g} (pooled within configs, {noise['dof']} degrees of freedom)" in proc.stdout
    for name in ("pareto.png", "best_config.json", "study.db", "search.json", "trials.parquet"):
        assert (out / name).stat().st_size > 0, name
    best = ArchConfig.from_dict(json.loads((out / "best_config.json").read_text()))
    assert best.backbone == "resnet18"
    study = optuna.load_study(study_name="scsa-search", storage=f"sqlite:///{out / 'study.db'}")
    expected = {"completed": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}
    by_id = {t.user_attrs["trial_id"]: t.state.name for t in study.trials if "duplicate_of" not in t.user_attrs}
    assert by_id == {r["trial_id"]: expected[r["status"]] for r in rows}
    assert "chosen by knee" in proc.stdout and str(out / "best_config.json") in proc.stdout


def _kill_minus_9(proc: subprocess.Popen, among: str) -> None:
    assert proc.poll() is None, f"the search ended before it could be killed among {among}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@needs_fashion
def test_kill_minus_9_then_resume_reaches_the_budget_exactly(tmp_path):
    """kill -9 while the budget's trials run, resume; kill -9 again while the replicates run, resume again."""
    out = tmp_path / "run"
    args = ["--backbone", "resnet18", "--proxy", "smoke", "--out", str(out), "--max-concurrent", "1",
            "--replicates", "2"]
    # A budget far above the kill point, so the search is still running when it is killed, whichever trials the
    # CPU's kernels let complete or the scheduler stops; the two references are never stopped, so they complete.
    _kill_minus_9(_start_until(["--budget", "200", *args], out, lambda rows: len(rows) >= 3), "its trials")
    before = _rows(out)  # what the kill left
    assert len(before) >= 3 and sum(r["status"] == "completed" for r in before) >= 2
    launched = len((out / "launched.jsonl").read_text().splitlines())
    budget = max(8, launched + 2)  # the resume both re-runs what the kill interrupted and launches new trials

    # the first resume finishes the budget's trials and is killed among the replicates (2 more seeds of each finalist)
    _kill_minus_9(_start_until(["--resume", "--budget", str(budget), *args], out,
                               lambda rows: any(r.get("replicate_of") for r in rows)), "its replicates")
    among = _rows(out)
    resumed = _run(["--resume", *args])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    everything = _rows(out)
    after = [r for r in everything if not r.get("replicate_of")]
    replicates = [r for r in everything if r.get("replicate_of")]
    assert len(after) == budget
    assert [r["trial_id"] for r in after] == [f"t{i:04d}" for i in range(budget)]
    assert sorted(int(r["number"]) for r in after) == list(range(budget))
    assert len({r["config_json"] for r in after}) == budget
    kept = {r["trial_id"]: r for r in everything}
    for r in before + among:  # nothing recorded before either kill was lost or re-run
        assert {k: kept[r["trial_id"]][k] for k in ("status", "accuracy", "time_s", "config_json")} == \
               {k: r[k] for k in ("status", "accuracy", "time_s", "config_json")}
    # every finalist has replicates 1 and 2, each exactly once, whatever the kill interrupted; the finalists always
    # include both references (never stopped), and which other configs join them depends on the CPU's kernels
    ids = [r["trial_id"] for r in replicates]
    assert len(ids) == len(set(ids)) and {"t0000", "t0001"} <= {r["replicate_of"] for r in replicates}
    for tid in {r["replicate_of"] for r in replicates}:
        assert sorted(i for i in ids if i.startswith(tid + "r")) == [f"{tid}r{k}" for k in (1, 2)]
    study = optuna.load_study(study_name="scsa-search", storage=f"sqlite:///{out / 'study.db'}")
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    completed_ids = [t.user_attrs["trial_id"] for t in study.trials
                     if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    assert len(completed_ids) == len(set(completed_ids))  # no trial told COMPLETE twice
    # a new search into that --out is refused; a resume with nothing left to do just re-renders the results
    refused = _run(["--budget", str(budget), *args])
    assert refused.returncode == 2 and "--resume" in refused.stderr
    again = _run(["--resume", *args])
    assert again.returncode == 0 and _rows(out) == everything


@pytest.mark.slow
@needs_fashion
def test_ctrl_c_ends_cleanly_says_how_to_resume_and_resume_completes(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, while a trial runs."""
    out = tmp_path / "run"
    args = ["--backbone", "resnet18", "--proxy", "smoke", "--out", str(out), "--max-concurrent", "1",
            "--replicates", "0"]
    # budget far above the interrupt point: the search cannot have ended before the signal
    proc = _start_until(["--budget", "200", *args], out, lambda rows: len(rows) >= 2, capture=True)
    try:
        assert proc.poll() is None, "the search ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert "interrupted. Continue with:" in stdout and "--resume" in stdout
    before = _rows(out)
    assert 2 <= len(before) < 5 and all(r["status"] in ("completed", "stopped", "failed") for r in before)
    resumed = _run(["--resume", "--budget", "5", *args])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = _rows(out)
    assert [r["trial_id"] for r in after] == [f"t{i:04d}" for i in range(5)]
    kept = {r["trial_id"]: r for r in after}
    assert all(kept[r["trial_id"]]["accuracy"] == r["accuracy"] for r in before)


# ------------------------------------------------------------------------------------------------ lost workers


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or not hasattr(os, "confstr")
                    or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""), reason="glibc on Linux only")
def test_memory_a_finished_thread_freed_goes_back_to_the_system():
    """What a reused Ray worker lives through: each trial runs in a new thread, whose malloc arena keeps what it
    freed; without trimming, the worker grows trial after trial."""
    import threading

    from search.trainable import release_freed_memory

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    kept: list = []

    def trial() -> None:
        blocks = [bytearray(32 * 1024) for _ in range(6000)]  # 190 MB in small blocks, as a training step makes
        kept.extend(blocks[::50])  # a few survivors pin the arena, as a trial's leftovers do
        del blocks

    release_freed_memory()
    base = rss_mb()
    worker = threading.Thread(target=trial)
    worker.start()
    worker.join()
    grown = rss_mb()
    assert release_freed_memory() is True
    trimmed = rss_mb()
    assert grown - base > 100, (base, grown)  # the arena kept what it freed ...
    assert trimmed - base < 40, (base, grown, trimmed)  # ... and trimming hands it back


def test_lost_worker_finds_rays_error_in_the_chain_tune_raises():
    from ray.exceptions import OutOfMemoryError

    from search.run import lost_worker

    oom = OutOfMemoryError("1 worker(s) were killed due to the node running low on memory")
    try:
        try:
            raise oom
        except OutOfMemoryError as e:  # what Ray Tune's actor manager does with an error it does not expect
            raise RuntimeError(f"Caught unexpected exception: {e}") from e
    except RuntimeError as wrapped:
        assert lost_worker(wrapped) is oom
    assert lost_worker(RuntimeError("a bug")) is None
    assert lost_worker(ValueError("x")) is None


def test_a_session_ended_by_a_lost_worker_is_resumed_in_place_a_bounded_number_of_times(monkeypatch, tmp_path):
    from ray.exceptions import OutOfMemoryError

    import search.run as run_mod

    sessions: list[tuple[bool, float | None]] = []
    losses = {"left": 2}

    def session(settings, echo, deadline):
        sessions.append((settings.resume, deadline))
        if losses["left"]:
            losses["left"] -= 1
            raise run_mod._WorkerLost(OutOfMemoryError("killed while starting"))
        return "outcome"

    monkeypatch.setattr(run_mod, "_run_session", session)
    said: list[str] = []
    settings = SearchSettings(backbone="resnet18", budget=4, out=str(tmp_path / "o"), time_budget_min=10)
    assert run_mod.run(settings, echo=said.append) == "outcome"
    assert [resume for resume, _ in sessions] == [False, True, True]
    assert len({deadline for _, deadline in sessions}) == 1  # the time budget counts from the first session
    assert len(said) == 2 and all("Resuming the search" in s for s in said)

    losses["left"] = run_mod.MAX_RESTARTS + 1
    with pytest.raises(OutOfMemoryError):
        run_mod.run(settings, echo=said.append)
