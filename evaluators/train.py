"""Full training of an exported architecture: its own recipe, the whole training split, a checkpoint every epoch.

``python run_search.py train --config best_config.json --epochs N`` calls :func:`train_full`. The proxy presets
exist to rank configs in seconds (no augmentation, a few hundred images); a full training is another job, so it has
its own recipe (:func:`full_recipe`): the whole training split (the search's val split still held out, and scored
after every epoch), random crop + flip, AdamW with a warm-up of about 5 % of the epochs (at least a fifth of one,
at most five) and a cosine decay to 0, label smoothing 0.1, at 64 px by default (every stage of a ResNet then sees
at least 2x2, so SCSA's spatial attention is never degenerate; Fashion-MNIST's 28 px images are upsampled, CIFAR's
32 px too).

``out_dir`` receives ``checkpoint.pth`` after every epoch (weights, optimiser, history and RNG state: ``torch.load(
path, weights_only=True)`` reads it), so that running the same command again after an interruption continues from
the last finished epoch with the same result as an uninterrupted run (on CPU); at the end ``model.pth`` (a plain
state dict), ``metrics.json`` (per-epoch history, val and test accuracy) and ``arch.json``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from evaluators.data import DEFAULT_DATASET
from space import ArchConfig

from .cli import Parser, UsageError, check_creatable, integer, positive_float, positive_int
from .data import DATASETS
from .proxy import EpochResult, Fidelity, ProxyRun, TrainingDiverged, preset

__all__ = ["CHECKPOINT", "CheckpointError", "full_recipe", "main", "train_full"]

CHECKPOINT = "checkpoint.pth"


class CheckpointError(ValueError):
    """``out_dir`` holds the checkpoint of another training (another config, recipe or seed)."""


def full_recipe(epochs: int, resolution: int = 64, batch_size: int = 64, lr: float = 2e-3) -> Fidelity:
    """The full-training :class:`Fidelity` for ``epochs`` epochs (see the module docstring)."""
    return preset("default", train_images=None, val_images=None, resolution=resolution, epochs=epochs,
                    batch_size=batch_size, lr=lr, weight_decay=0.05, warmup_epochs=min(5.0, max(0.2, 0.05 * epochs)),
                    label_smoothing=0.1, augment=True, channels_last=True, score="accuracy")


def _atomic_save(value: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    else:
        torch.save(value, tmp)
    tmp.replace(path)


def train_full(
    arch: ArchConfig,
    out_dir: str | os.PathLike[str],
    *,
    epochs: int = 30,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | None = None,
    resolution: int = 64,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "auto",
    download: bool = False,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_start: Callable[[ProxyRun], None] | None = None,
) -> dict:
    """Train ``arch`` with :func:`full_recipe` into ``out_dir``, continuing from its checkpoint if there is one;
    returns the metrics written. ``on_start`` sees the run once it is built (and resumed), before the first step."""
    fid = full_recipe(epochs, resolution, batch_size, lr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = ProxyRun(arch, dataset, data_dir, fid, seed, device, download=download)
    if (out / CHECKPOINT).exists():
        try:
            run.load_state_dict(torch.load(out / CHECKPOINT, weights_only=True, map_location=run.device))
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{out / CHECKPOINT}: {e}") from None
    if on_start is not None:
        on_start(run)
    for result in run:
        _atomic_save(run.state_dict(), out / CHECKPOINT)
        if on_epoch is not None:
            on_epoch(result)
    test = run.test()
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
    _atomic_save(run.model.state_dict(), out / "model.pth")
    _atomic_save(metrics, out / "metrics.json")
    _atomic_save(arch.to_dict(), out / "arch.json")
    return metrics


def main(argv: list[str]) -> int:
    """``run_search.py train --config best_config.json --epochs N``: full training of an exported config."""
    ap = Parser(prog="run_search.py train", description="Train an exported architecture with the full-training "
                 "recipe (whole training split, crop + flip, AdamW, warm-up + cosine, label smoothing); a checkpoint "
                 "every epoch, so running the same command again continues an interrupted training. Writes "
                 "model.pth (state dict), metrics.json (val and test accuracy), arch.json.")
    ap.add_argument("--config", required=True, help="best_config.json of a search (an ArchConfig)")
    ap.add_argument("--dataset", default=DATASETS[0], choices=DATASETS)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--epochs", type=positive_int("--epochs"), default=30)
    ap.add_argument("--resolution", type=positive_int("--resolution"), default=64, help="input px (default 64)")
    ap.add_argument("--batch-size", type=positive_int("--batch-size"), default=64)
    ap.add_argument("--lr", type=positive_float("AdamW learning rate"), default=2e-3)
    ap.add_argument("--seed", type=integer, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="default: train-<backbone>-<dataset>")
    try:
        args = ap.parse_args(argv)
        from evaluators.data import DatasetNotFoundError, check_dataset
        from evaluators.device import resolve_device
        from space.timm_models import load_arch

        try:
            raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except OSError as e:
            raise UsageError(f"cannot read --config {args.config}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {args.config} is not valid JSON: {e.msg} at line {e.lineno}") from None
        try:
            from space import ArchConfig

            arch = ArchConfig.from_dict(raw).validate()
            load_arch(arch, arch.backbone)
            check_dataset(args.dataset, args.data_dir, args.download)
            resolve_device(args.device)
        except (ValueError, DatasetNotFoundError) as e:
            raise UsageError(str(e).splitlines()[0]) from None
        out = Path(args.out or f"train-{arch.backbone}-{args.dataset}")
        if (out / "model.pth").exists():
            raise UsageError(f"{out} already holds a trained model.pth; choose another --out")
        if out.exists() and not (out / CHECKPOINT).exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} exists and is neither empty nor an interrupted training; choose another")
        check_creatable(out)
    except UsageError as e:
        print(f"run_search.py train: error: {e}", file=sys.stderr)
        return 2
    def started(run) -> None:
        again = f", continuing after epoch {run.epoch} ({out / CHECKPOINT})" if run.epoch else ""
        print(f"training {arch.describe()}: {run.train_images} images per epoch at {run.fidelity.resolution} px, "
              f"{run.fidelity.epochs} epoch(s), batch {run.fidelity.batch_size}, {run.device}{again}", flush=True)

    def show(r) -> None:
        print(f"epoch {r.epoch}/{r.epochs}: val accuracy {100 * r.accuracy:.2f}%, train loss {r.loss:.4f}, "
              f"{r.time_s:.0f}s", flush=True)

    try:
        metrics = train_full(arch, out, epochs=args.epochs, dataset=args.dataset, data_dir=args.data_dir,
                             resolution=args.resolution, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             device=args.device, download=args.download, on_epoch=show, on_start=started)
    except CheckpointError as e:
        print(f"run_search.py train: error: {e}; choose another --out", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"run_search.py train: {e}; try a lower --lr", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; the last finished epoch is in {out / CHECKPOINT}: run the same command to continue")
        return 130
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f}%; wrote {out}/model.pth, metrics.json, arch.json")
    return 0
