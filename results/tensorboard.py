"""The search's own TensorBoard run: the hypervolume after each trial, beside Ray Tune's per-trial runs.

Ray Tune's ``TBXLoggerCallback`` (on by default) already writes one run per trial under ``OUT/ray/session-N/``
with every reported metric per epoch (``ray/tune/accuracy``, ``ray/tune/loss``, ``ray/tune/val_loss``, the other
proxy scores and costs). What no single trial knows is the search's progress, so this writes one more run,
``OUT/tensorboard``: ``search/hypervolume`` after each trial, in launch order, so that
``tensorboard --logdir OUT`` shows both.

The history is recomputed from all records and the run rewritten whole every time (a new event file, then the
older ones removed), so a resumed search, whose reference point and front may differ from what the first
session saw, never leaves stale or duplicated steps behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

__all__ = ["TENSORBOARD_DIR", "write_search_run"]

TENSORBOARD_DIR = "tensorboard"


def write_search_run(out_dir: str | os.PathLike[str], history: pd.Series,
                     reference_point: Mapping[str, float]) -> Path:
    """(Re)write ``OUT/tensorboard``: ``search/hypervolume`` at step k (1-based) is the hypervolume after the k-th
    trial launched; returns the event file."""
    from tensorboardX import SummaryWriter  # Ray Tune's own dependency for its TensorBoard logger

    run = Path(out_dir) / TENSORBOARD_DIR
    run.mkdir(parents=True, exist_ok=True)
    old = set(run.glob("events.out.tfevents.*"))
    # Written aside, then moved in: tensorboardX names the file itself, and a reader never sees a half-written one.
    with tempfile.TemporaryDirectory(dir=run, prefix=".writing-") as tmp:
        with SummaryWriter(tmp) as writer:
            point = ", ".join(f"{k} {v:g}" for k, v in reference_point.items())
            writer.add_text("search/reference_point", f"hypervolume reference point: {point}", 0)
            for step, hv in enumerate(history.to_numpy(dtype=float), start=1):
                writer.add_scalar("search/hypervolume", float(hv), step)
        (written,) = Path(tmp).glob("events.out.tfevents.*")
        target = run / f"{written.name}.{os.getpid()}.{len(old)}"
        os.replace(written, target)
    for path in old - {target}:
        path.unlink(missing_ok=True)
    return target
