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


def _kill_minus_9(proc: subprocess.Popen, among: str) -> None:
    assert proc.poll() is None, f"the search ended before it could be killed among {among}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@needs_fashion
def test_ctrl_c_then_kill_minus_9_twice_then_resume_reaches_the_budget_exactly(tmp_path):
    """Ctrl-C while a trial runs, resume; kill -9 while the budget's trials run, resume; kill -9 again while the
    finalists are verified, resume again. One search through all four sessions: each session pays Ray's start-up,
    and each interruption must leave what the next one needs."""
    out = tmp_path / "run"
    args = ["--backbone", "resnet18", "--proxy", "smoke", "--out", str(out), "--max-concurrent", "1"]
    # A budget far above the interruption points, so the search is still running when it is interrupted, whichever
    # trials the CPU's kernels let complete or the scheduler stops; the two references are never stopped.
    # 1. SIGINT to the whole process group, as a terminal's Ctrl-C sends it
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
    interrupted = _rows(out)
    assert 2 <= len(interrupted) < 5 and all(r["status"] in ("completed", "stopped", "failed") for r in interrupted)

    # 2. kill -9 while the budget's trials run: its lock on --out is left behind, stale, and the next resume takes
    # it over
    killed = _start_until(["--resume", "--budget", "200", *args], out, lambda rows: len(rows) >= len(interrupted) + 1)
    _kill_minus_9(killed, "its trials")
    assert json.loads((out / "search.lock").read_text())["pid"] == killed.pid
    before = _rows(out)  # what the kill left
    assert len(before) >= 3 and sum(r["status"] == "completed" for r in before) >= 2
    launched = len((out / "launched.jsonl").read_text().splitlines())
    budget = max(8, launched + 2)  # the resume both re-runs what the kill interrupted and launches new trials

    # 3. the next resume finishes the budget's trials and is killed among the verification runs (2 paired seeds of
    # each finalist at 3x the proxy's images, the default)
    _kill_minus_9(_start_until(["--resume", "--budget", str(budget), *args], out,
                               lambda rows: any(r.get("phase") == "verify" for r in rows)), "its verification")
    among = _rows(out)
    resumed = _run(["--resume", *args])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert " ERROR " not in resumed.stderr and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    everything = _rows(out)
    after = [r for r in everything if not r.get("replicate_of")]
    replicates = [r for r in everything if r.get("replicate_of")]
    assert len(after) == budget
    assert [r["trial_id"] for r in after] == [f"t{i:04d}" for i in range(budget)]
    assert sorted(int(r["number"]) for r in after) == list(range(budget))
    assert len({r["config_json"] for r in after}) == budget
    kept = {r["trial_id"]: r for r in everything}
    for r in interrupted + before + among:  # nothing recorded before an interruption was lost or re-run
        assert {k: kept[r["trial_id"]][k] for k in ("status", "accuracy", "time_s", "config_json")} == \
               {k: r[k] for k in ("status", "accuracy", "time_s", "config_json")}
    # every finalist is verified with seeds 1 and 2, each exactly once, whatever the kill interrupted; the finalists
    # always include both references (never stopped), and which other configs join them depends on the CPU's kernels
    ids = [r["trial_id"] for r in replicates]
    assert {r["phase"] for r in replicates} == {"verify"}
    assert len(ids) == len(set(ids)) and {"t0000", "t0001"} <= {r["replicate_of"] for r in replicates}
    for tid in {r["replicate_of"] for r in replicates}:
        assert sorted(i for i in ids if i.startswith(tid + "v")) == [f"{tid}v{k}" for k in (1, 2)]
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


# ------------------------------------------------------------------------------------------------ faults from outside


@pytest.mark.slow
@needs_fashion
def test_a_full_disk_ends_in_one_line_and_resume_finishes_once_there_is_room(tmp_path):
    """--out on a 300 KB file system: the search ends with one line that says so (exit 1), no traceback; once the
    file system has room, --resume reaches the budget with every trial recorded once."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small file system needs mount (root): {mounted.stderr.decode().strip()}")
    try:
        out = disk / "run"
        args = ["--backbone", "resnet18", "--proxy", "smoke", "--out", str(out), "--max-concurrent", "1",
                "--replicates", "0", "--verify", "off"]
        full = _run(["--budget", "3", *args])
        assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-2000:]
        assert "Traceback" not in full.stdout + full.stderr and " ERROR " not in full.stderr, full.stderr[-3000:]
        (line,) = [line for line in full.stderr.splitlines() if line.startswith("run_search.py: error:")]
        assert "no space left" in line and str(out) in line and f"--resume --out {out}" in line
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = _run(["--resume", *args])
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        rows = _rows(out)
        assert [r["trial_id"] for r in rows] == ["t0000", "t0001", "t0002"]
        assert all(r["status"] in ("completed", "stopped", "failed") for r in rows)
        assert (out / "best_config.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_sigterm_is_handled_like_ctrl_c(capsys):
    """Preemption (SIGTERM) stops the search gracefully, as the first Ctrl-C does: exit 130 and resumable."""
    from search.progress import SearchStopper
    from search.run import _graceful_interrupt

    stopper = SearchStopper()
    before = signal.getsignal(signal.SIGTERM)
    with _graceful_interrupt(stopper, print):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs between bytecodes
    assert stopper.interrupted and stopper.halted and signal.getsignal(signal.SIGTERM) == before
    assert "stopping" in capsys.readouterr().out
