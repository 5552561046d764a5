import os
import subprocess
import sys
from pathlib import Path

# Idle OpenMP threads spinning on a busy 2-core machine slow every test several-fold; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def reference_vectors():
    path = SHARED / "reference" / "scsa_vectors.pt"
    if not path.exists():
        pytest.skip(f"reference vectors not found at {path}")
    return torch.load(path, weights_only=True)["cases"]


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory):
    """One real search that several tests read: 6 smoke trials of resnet18, one at a time, one retry, two
    injected failures (t0003 fails once then succeeds, t0004 always), then 2 replicates of each finalist.
    Returns ``(out, completed process)``."""
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION}")
    out = tmp_path_factory.mktemp("smoke-search") / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), "--budget", "6", "--backbone", "resnet18", "--proxy", "smoke",
         "--out", str(out), "--max-concurrent", "1", "--retries", "1", "--replicates", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "SCSA_SEARCH_INJECT_FAULT": "t0003@0,t0004"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc
