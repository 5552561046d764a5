"""``--address``: a search joins a real Ray head that ``ray start`` launched on this machine (loopback only, token
authentication on, as Ray >= 2.59 sets it up), runs its trials there and starts no Ray of its own; a cluster that
refuses the driver or does not answer ends the search within a minute, with exit code 2 and one line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    return {**env, "HOME": str(home), "RAY_DISABLE_USAGE_STATS": "1"}


def _processes_of(temp_dir: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """``ray start --head`` on 127.0.0.1 with a token in its user's default file, as a user would start it."""
    home = tmp_path_factory.mktemp("head-home")
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    env = {**_env(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # servers on loopback only
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    started = subprocess.run([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                              "--num-cpus", "2", "--include-dashboard=false", "--temp-dir", temp_dir],
                             env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    assert "Token authentication is enabled" in started.stdout + started.stderr
    try:
        yield {"address": f"127.0.0.1:{port}", "home": home, "temp_dir": temp_dir}
    finally:
        # `ray stop` would stop every Ray on the machine; only this head's processes go.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _processes_of(temp_dir):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            time.sleep(2)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _search(address: str, out: Path, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The search as a process; the result carries its ``pid``."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), "--budget", "3", "--backbone", "resnet18",
                             "--proxy", "smoke", "--out", str(out), "--address", address, "--max-concurrent", "2",
                             "--replicates", "0", "--verify", "off"],
                            cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    done.pid = proc.pid
    return done


def _drivers(temp_dir: str | Path, pid: int) -> set[Path]:
    """Process ``pid``'s driver logs under a Ray temp dir (named ``python-core-driver-<worker id>_<pid>.log``)."""
    # session_[0-9]*: not session_latest, a link to one of them
    return set(Path(temp_dir).glob(f"session_[0-9]*/logs/python-core-driver-*_{pid}.log"))


def test_search_joins_the_head_and_runs_its_trials_there(head, tmp_path):
    out = tmp_path / "run"
    proc = _search(head["address"], out, head["home"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial_id"] for r in rows] == ["t0000", "t0001", "t0002"]
    assert all(r["status"] in ("completed", "stopped") for r in rows)
    for name in ("pareto.csv", "pareto.png", "best_config.json", "best_config_mmpretrain.py", "study.db"):
        assert (out / name).stat().st_size > 0, name
    # the driver registered with the head, and started no Ray of its own (a local Ray's session, under Ray's
    # default temp dir, would hold this driver's log; other processes may run Ray there at the same time)
    assert len(_drivers(head["temp_dir"], proc.pid)) == 1
    assert not _drivers(Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray"), proc.pid)
    results = [json.loads(line) for f in (out / "ray").glob("session-0/*/result.json")
               for line in f.read_text().splitlines() if line]
    assert results and {r["node_ip"] for r in results} == {"127.0.0.1"}


def test_a_cluster_that_refuses_the_token_ends_with_one_line(head, tmp_path):
    stranger = tmp_path / "home-without-token"
    stranger.mkdir()
    out = tmp_path / "run"
    proc = _search(head["address"], out, stranger, timeout=120)  # a hang would time out
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert "uses token authentication and refused" in err and "ray get-auth-token" in err
    assert "RAY_AUTH_TOKEN_PATH" in err and not out.exists()


def test_nothing_listening_ends_at_once_with_one_line(tmp_path):
    out = tmp_path / "run"
    address = f"127.0.0.1:{_free_port()}"
    proc = _search(address, out, tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and f"nothing answers at {address}" in err and "ray status --address" in err
    assert not out.exists()
