"""Stress: a 30-trial smoke search in which a random 20 % of the trials fail (injected through the test hook); and
where a local Ray listens."""

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
    """Real faults (a killed worker, an out-of-memory error, a retry) are injected into the shared smoke search
    (tests/test_search_outputs.py); here, many failures among many trials, 2 at a time."""
    out = tmp_path / "run"
    failing = sorted(random.Random(2026).sample([f"t{i:04d}" for i in range(30)], 6))
    proc = _run(["--budget", "30", "--backbone", "resnet18", "--proxy", "smoke", "--out", str(out),
                 "--max-concurrent", "2", "--no-early-stopping", "--replicates", "0",
                 "--verify", "off"],
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
