import os
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
