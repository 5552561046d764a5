"""Stress: a 30-trial smoke search in which a random 20 % of the trials fail (injected through the test hook)."""

import csv
import random

import pytest
from test_search import FASHION, _non_dominated, _rows, _run


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION}")
def test_thirty_trials_with_twenty_percent_failures(tmp_path):
    out = tmp_path / "run"
    failing = sorted(random.Random(2026).sample([f"t{i:04d}" for i in range(30)], 6))
    proc = _run(["--budget", "30", "--backbone", "resnet18", "--proxy", "smoke", "--out", str(out),
                 "--max-concurrent", "2", "--no-early-stopping"],
                env={"SCSA_SEARCH_INJECT_FAULT": ",".join(failing)}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == 30 and len({r["trial_id"] for r in rows}) == 30
    failed = {r["trial_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert sorted(failed) == failing  # every injected failure recorded, nothing else failed
    assert all(reason.startswith("TrainingDiverged: injected") for reason in failed.values())
    assert all(r["status"] == "completed" for r in rows if r["trial_id"] not in failing)
    with open(out / "pareto.csv", newline="") as fh:
        front = {r["trial_id"] for r in csv.DictReader(fh)}
    assert front and front == _non_dominated(rows) and not front & set(failing)
    assert (out / "pareto.png").stat().st_size > 0 and (out / "best_config.json").stat().st_size > 0
