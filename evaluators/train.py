"""Full training of an exported architecture with the proxy's training code at a full schedule.

``python run_search.py train --config best_config.json --epochs N`` calls :func:`train_full`; it trains on the
whole training split (the val split held out as in the search), evaluates the untouched test split at the end, and
writes ``model.pth`` (a plain state dict: ``torch.load(path, weights_only=True)`` reads it back), ``metrics.json``
(per-epoch history and the final test accuracy) and ``arch.json`` into ``out_dir``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from space import ArchConfig

from .proxy import EpochResult, ProxyRun, fidelity


def train_full(
    arch: ArchConfig,
    out_dir: str | os.PathLike[str],
    *,
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    epochs: int = 30,
    preset: str = "thorough",
    resolution: int | None = None,
    seed: int = 0,
    device: str = "auto",
    download: bool = False,
    on_epoch: Callable[[EpochResult], None] | None = None,
    fidelity_overrides: dict | None = None,
    test_limit: int | None = None,
) -> dict:
    """Train ``arch`` for ``epochs`` epochs over the whole training split; returns the metrics written.

    ``fidelity_overrides`` and ``test_limit`` shrink the run (for tests); by default the whole train and test
    splits are used."""
    overrides: dict = {"epochs": epochs, "train_images": None, "val_images": None}
    if resolution is not None:
        overrides["resolution"] = resolution
    overrides.update(fidelity_overrides or {})
    fid = fidelity(preset, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = ProxyRun(arch, dataset, data_dir, fid, seed, device, download=download)
    for result in run:
        if on_epoch is not None:
            on_epoch(result)
    test = run.test(limit=test_limit)
    metrics = {
        "arch": arch.to_dict(),
        "dataset": dataset,
        "fidelity": fid.to_dict(),
        "seed": seed,
        "history": [r.to_dict() for r in run.history],
        "val_accuracy": run.history[-1].accuracy,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
    }
    tmp = out / "model.pth.tmp"
    torch.save(run.model.state_dict(), tmp)
    tmp.replace(out / "model.pth")
    for name, value in (("metrics.json", metrics), ("arch.json", arch.to_dict())):
        tmp = out / f"{name}.tmp"
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out / name)
    return metrics
