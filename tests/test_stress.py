"""Stress: a 30-trial smoke search in which a random 20 % of the trials fail (injected through the test hook)."""

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from test_search_e2e import FASHION, ROOT, _non_dominated, _rows, _run


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION}")
def test_thirty_trials_with_twenty_percent_failures(tmp_path):
    out = tmp_path / "run"
    failing = sorted(random.Random(2026).sample([f"t{i:04d}" for i in range(30)], 6))
    proc = _run(["--budget", "30", "--backbone", "resnet18", "--proxy", "smoke", "--out", str(out),
                 "--max-concurrent", "2", "--no-early-stopping", "--replicates", "0"],
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


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION}")
def test_worker_death_and_out_of_memory_are_recorded_and_the_search_goes_on(tmp_path):
    """Real faults in real trials: a worker process killed by SIGKILL (what the kernel's OOM killer or a lost node
    does), one killed only on its first attempt (Ray restarts it, the retry completes) and an allocation the
    allocator refuses."""
    out = tmp_path / "run"
    faults = "t0002:kill,t0003:oom,t0004@0:kill"
    proc = _run(["--budget", "6", "--backbone", "resnet18", "--proxy", "smoke", "--out", str(out),
                 "--max-concurrent", "1", "--retries", "1", "--no-early-stopping", "--replicates", "0"],
                env={"SCSA_SEARCH_INJECT_FAULT": faults}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["trial_id"]: r for r in _rows(out)}
    assert sorted(rows) == [f"t{i:04d}" for i in range(6)]
    assert rows["t0002"]["status"] == "failed"
    assert "died" in rows["t0002"]["error"].lower() or "sigkill" in rows["t0002"]["error"].lower(), rows["t0002"]
    assert rows["t0003"]["status"] == "failed" and rows["t0003"]["error"].startswith("out of memory: RuntimeError")
    assert rows["t0004"]["status"] == "completed" and rows["t0004"]["seed"] == "1"  # the retry, next seed
    assert all(rows[t]["status"] == "completed" for t in ("t0000", "t0001", "t0005"))
    with open(out / "pareto.csv", newline="") as fh:
        front = {r["trial_id"] for r in csv.DictReader(fh)}
    assert front and front == _non_dominated(list(rows.values())) and not front & {"t0002", "t0003"}


_LISTENERS = r'''
import sys
from pathlib import Path


def public_listeners():
    """Listening TCP sockets on a non-loopback address, from /proc/net/tcp and tcp6 (state 0A = LISTEN)."""
    found = set()
    # 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net writes them
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and address not in loopback:
                found.add((name, address, int(port, 16)))
    return found


before = public_listeners()
sys.path.insert(0, sys.argv[1])
import ray  # noqa: E402
from search.cluster import init_ray  # noqa: E402
from search.settings import SearchSettings  # noqa: E402

init_ray(SearchSettings(backbone="resnet18", budget=1, out=sys.argv[2], proxy="smoke"))
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
print("node", ray.util.get_node_ip_address())
print("new public listeners", sorted(public_listeners() - before))
ray.shutdown()
'''


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_local_ray_listens_on_loopback_only(tmp_path):
    """A local search's Ray (GCS, raylet, workers, object manager) opens no socket on a public interface."""
    script = tmp_path / "listeners.py"
    script.write_text(_LISTENERS)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    proc = subprocess.run([sys.executable, str(script), str(ROOT), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "node 127.0.0.1" in proc.stdout, proc.stdout
    assert "new public listeners []" in proc.stdout, proc.stdout
