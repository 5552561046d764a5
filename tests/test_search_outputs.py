"""What a search writes, from one real smoke search that every test here reads: the files, statuses, front of the
means and replicates, and the same outputs read back by the tools its users read them with: TensorBoard's own event
reader, a real optuna-dashboard server on 127.0.0.1, and mmengine's ``Config`` for the mmpretrain export."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from test_search_e2e import FASHION, ROOT, _non_dominated, _rows, needs_fashion

from results.config_stats import config_means
from results.export import write_mmpretrain
from results.frame import read_trials
from results.pareto import hypervolume, reference_point
from space import ArchConfig


@pytest.fixture(scope="module")
def smoke_search(tmp_path_factory):
    """One real search that every test here reads: 6 smoke trials of resnet18, one at a time, one retry, and real
    faults: t0002's worker process is killed by SIGKILL on every attempt (what the kernel's OOM killer or a lost
    node does), t0003's only on its first (Ray restarts it, the retry completes), and t0004 asks for an allocation
    the allocator refuses; then 2 replicates of each finalist, then each replicated finalist verified at 3x the
    proxy's images with 2 paired seeds (the default). Returns ``(out, completed process)``."""
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION}")
    out = tmp_path_factory.mktemp("smoke-search") / "run"
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"), "--budget", "6", "--backbone", "resnet18", "--proxy", "smoke",
         "--out", str(out), "--max-concurrent", "1", "--retries", "1", "--replicates", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SCSA_SEARCH_INJECT_FAULT": "t0002:kill,t0003@0:kill,t0004:oom"})
    # While it runs, a second search on the same --out (a --resume from another terminal) is refused at once.
    second = _second_search_while_the_first_runs(first, out)
    stdout, stderr = first.communicate(timeout=900)
    proc = subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert second.returncode == 2, second.stdout + second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert f"{out} is in use by a running search (pid {first.pid} on {socket.gethostname()}, since " in line
    assert second.stdout == ""  # refused before it measured, wrote or searched anything
    return out, proc


def _second_search_while_the_first_runs(first: subprocess.Popen, out: Path) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + 300
    while not (out / "launched.jsonl").exists():  # the first search holds --out and has launched a trial
        assert first.poll() is None, "the first search ended before a second one could be started"
        assert time.monotonic() < deadline, "the first search launched nothing in 5 minutes"
        time.sleep(0.2)
    second = subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--resume", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first search ended before the second one was refused"
    return second


@pytest.mark.slow
@needs_fashion
def test_search_end_to_end(smoke_search):
    """6 real smoke trials, then 2 replicates of each finalist, then verification: files, statuses, front of the
    means, intervals, the verified choice, study — and a failure and a retry, injected (see the ``smoke_search``
    fixture)."""
    out, proc = smoke_search
    everything = _rows(out)
    rows = [r for r in everything if not r["replicate_of"]]
    assert {r["phase"] for r in rows} == {"search"}
    replicates = [r for r in everything if r["phase"] == "replicate"]
    verified = [r for r in everything if r["phase"] == "verify"]
    assert [r["trial_id"] for r in rows] == [f"t{i:04d}" for i in range(6)]
    assert [r["reference"] for r in rows[:2]] == ["baseline", "paper_default"]
    assert ArchConfig.from_dict(json.loads(rows[0]["config_json"])) == ArchConfig.baseline("resnet18")
    assert len({r["config_json"] for r in rows}) == 6  # never the same config twice
    assert {r["status"] for r in rows} <= {"completed", "stopped", "failed"}
    failed = {r["trial_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert sorted(failed) == ["t0002", "t0004"]  # every fault recorded with its reason, nothing else failed
    assert "died" in failed["t0002"].lower() or "sigkill" in failed["t0002"].lower(), failed
    assert failed["t0004"].startswith("out of memory: RuntimeError"), failed
    retried = next(r for r in rows if r["trial_id"] == "t0003")
    assert retried["status"] != "failed" and retried["seed"] == "1"  # the retry ran with the next seed
    for r in rows:
        if r["status"] == "stopped":
            assert float(r["trained_share"]) < 1.0
        if r["status"] == "completed":
            assert float(r["trained_share"]) == 1.0 and float(r["gflops"]) > 0
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
    # verification: every replicated finalist at 3x the proxy's images, 2 paired seeds, the same for all
    assert {r["replicate_of"] for r in verified} == finalists
    for tid in finalists:
        mine = sorted((r for r in verified if r["replicate_of"] == tid), key=lambda r: r["trial_id"])
        assert [(r["trial_id"], r["seed"], r["status"]) for r in mine] == \
               [(f"{tid}v1", "101000", "completed"), (f"{tid}v2", "102000", "completed")]
    assert f"verifying: {2 * len(finalists)} run(s) for {len(finalists)} finalist(s) at 3x the proxy's images, 2 " \
        "paired seed(s) each" in proc.stdout
    md = (out / "best_config.md").read_text()
    answer = md.splitlines()[2]
    assert md.startswith("# Recommendation") and answer.startswith("**Use ")
    assert "verified at 3x the proxy's images" in answer
    assert "Seed noise at the proxy's fidelity: the pooled within-config standard deviation of accuracy is" in md
    assert "(2 paired seeds, seed noise pooled over " in md and " (3 seeds) |" in md
    # every finalist against the plain backbone, proxy claim beside the verified result, in the file; the answer
    # and the sentence naming those distinguishably better open the end of the output
    assert "| proxy claim | verified | verdict | held | tied with best |" in md
    said = next(line for line in md.splitlines() if "distinguishably better than the plain backbone" in line.lower())
    tail = proc.stdout.splitlines()
    assert answer.strip("*") in tail and f"  {said}" in tail
    assert tail.index(answer.strip("*")) < tail.index(f"  {said}")
    assert "seed noise of accuracy: sd " in proc.stdout
    assert "run(s) of the finalists (replicates and verification)" in proc.stdout
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
    assert "chosen by verified" in proc.stdout and str(out / "best_config.json") in proc.stdout


@pytest.mark.slow
def test_tensorboard_shows_every_trials_epochs_and_the_search_hypervolume(smoke_search):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    out, _ = smoke_search
    reader = EventMultiplexer()
    reader.AddRunsFromDirectory(str(out))  # what `tensorboard --logdir OUT` loads
    reader.Reload()
    runs = reader.Runs()
    for row in _rows(out):
        epochs = int(float(row["epochs_done"] or 0))
        if epochs == 0:
            continue
        # the trial's last run (a retried trial has an earlier, failed one beside it)
        name = sorted(r for r in runs if Path(r).name.startswith(row["trial_id"] + "_"))[-1]
        for tag in ("ray/tune/accuracy", "ray/tune/loss", "ray/tune/val_loss"):
            steps = [e.step for e in reader.Scalars(name, tag)]
            assert steps == list(range(1, epochs + 1)), (name, tag, steps)
        last = reader.Scalars(name, "ray/tune/accuracy")[-1].value
        assert last == pytest.approx(float(row["accuracy"])), name
    df = read_trials(out)
    means = config_means(df, ["accuracy", "gflops"])
    history = reader.Scalars("tensorboard", "search/hypervolume")
    assert [e.step for e in history] == list(range(1, len(means) + 1))
    ref = reference_point(means, ["accuracy", "gflops"])
    assert history[-1].value == pytest.approx(hypervolume(means, ["accuracy", "gflops"], ref), rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_optuna_dashboard_lists_the_study(smoke_search):
    out, _ = smoke_search
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    port = _free_port()
    server = subprocess.Popen([exe, f"sqlite:///{out / 'study.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline, studies = time.time() + 60, None
        while time.time() < deadline and server.poll() is None:
            try:
                studies = get("/api/studies")["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, server.stderr.read() if server.poll() is not None else "no answer in 60 s"
        (study,) = studies
        assert study["study_name"] == "scsa-search"
        assert [d.lower() for d in study["directions"]] == ["maximize", "minimize"]
        trials = get(f"/api/studies/{study['study_id']}")["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = {r["trial_id"]: r for r in _rows(out) if not r.get("replicate_of")}
    attrs = [({a["key"]: a["value"] for a in t["user_attrs"]}, t["state"]) for t in trials]
    shown = {a["trial_id"]: state for a, state in attrs if "duplicate_of" not in a}
    states = {"completed": "Complete", "stopped": "Pruned", "failed": "Fail"}
    assert shown == {tid: states[r["status"]] for tid, r in rows.items()}


@pytest.mark.slow
def test_mmengine_loads_the_exports(smoke_search, tmp_path):
    from mmengine.config import Config

    write_mmpretrain(tmp_path, ArchConfig.paper_default("resnet50"))
    cfg = Config.fromfile(str(tmp_path / "best_config_mmpretrain.py"))
    backbone = cfg.model.backbone
    assert backbone.type == "ResNetSCSA" and backbone.depth == 50
    assert dict(backbone.scsa_cfg) == {"head_num": 1, "window_size": 7, "group_kernel_sizes": [3, 5, 7, 9],
                                       "down_sample_mode": "avg_pool", "gate_layer": "sigmoid",
                                       "attn_drop_ratio": 0.0}
    assert "stage_scsa_cfgs" not in backbone  # exactly expressible: nothing their backbone would reject
    out, _ = smoke_search
    searched = Config.fromfile(str(out / "best_config_mmpretrain.py"))
    chosen = ArchConfig.from_dict(json.loads((out / "best_config.json").read_text()))
    assert ArchConfig.from_dict(searched.arch_config) == chosen
    assert searched.model.head.num_classes == 10
