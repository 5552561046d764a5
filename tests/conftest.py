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

# pytest-xdist runs the tests in one process per core (setup.cfg: each test file goes to one of them as a whole,
# so that a module's shared search or Ray head is set up once). Each takes its share of the cores: workers that
# oversubscribe them slow each other down.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads() // _WORKERS)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first, so that their files are handed out first (``--no-loadscope-reorder``) and the longest
    ones do not start last and leave one worker running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


@pytest.fixture(scope="session")
def reference_vectors():
    path = SHARED / "reference" / "scsa_vectors.pt"
    if not path.exists():
        pytest.skip(f"reference vectors not found at {path}")
    return torch.load(path, weights_only=True)["cases"]
