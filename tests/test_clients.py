"""What a search writes, read back by the tools its users read it with: TensorBoard's own event reader,
a real optuna-dashboard server on 127.0.0.1, and mmengine's ``Config`` for the mmpretrain export."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from results.export import write_mmpretrain
from results.frame import read_trials
from results.pareto import hypervolume, reference_point
from results.replicates import config_means
from space import ArchConfig


def _rows(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


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
