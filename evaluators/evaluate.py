"""What a proxy epoch reports (:class:`EpochResult`), how a model is scored on a split (:func:`evaluate`), and the
error that ends a diverging run (:class:`TrainingDiverged`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split
from .device import resolve_device
from .fidelity import Fidelity

__all__ = ["EpochResult", "EvalResult", "TrainingDiverged", "autocast", "evaluate", "to_device"]


@dataclass(frozen=True)
class EpochResult:
    """Metrics after one epoch. ``accuracy`` and ``val_loss``: on the val subset; ``loss``: mean training loss of
    the epoch; ``time_s``: wall time since the run started (model build included), cumulative; ``images_seen``:
    training images so far, cumulative.

    ``tse`` and ``tse_ema``: training-speed estimates (Ru et al., "Speedy Performance Estimation for Neural
    Architecture Search", NeurIPS 2021), cumulative: the sum of every minibatch's training loss so far (TSE), and
    the same sum with older steps discounted by :data:`TSE_EMA_DECAY` per epoch (TSE-EMA). Lower is better; they
    compare runs of the same fidelity (the same number of steps) and cost nothing beyond the training itself."""

    epoch: int  # 1-based
    epochs: int
    accuracy: float
    loss: float
    val_loss: float
    time_s: float
    images_seen: int
    tse: float = math.nan
    tse_ema: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy (in [0, 1]) and mean cross-entropy over ``images`` evaluated images."""

    accuracy: float
    loss: float
    images: int


class TrainingDiverged(ValueError):
    """The training or validation loss became NaN or infinite; the trial cannot continue."""

    def __init__(self, message: str, *, epoch: int, step: int | None, loss: float) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.loss = loss

    def __reduce__(self):
        # Keyword-only fields: without this, pickling (Ray ships trial errors between processes) fails to rebuild.
        return _rebuild_diverged, (str(self), self.epoch, self.step, self.loss)


def _rebuild_diverged(message: str, epoch: int, step: int | None, loss: float) -> TrainingDiverged:
    return TrainingDiverged(message, epoch=epoch, step=step, loss=loss)


def autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def evaluate(
    model: nn.Module,
    split: Split,
    *,
    resolution: int,
    batch_size: int = Fidelity.eval_batch_size,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    amp: bool = False,
) -> EvalResult:
    """Accuracy and mean cross-entropy of ``model`` on (the first ``limit`` images of) ``split``, unaugmented.

    The model is put in eval mode and returned to the mode it was in.
    """
    dev = resolve_device(device)
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        with torch.no_grad(), autocast(dev, amp):
            for x, y in split.batches(batch_size, resolution, train=False, seed=0, limit=limit):
                x, y = to_device(x, y, dev, channels_last)
                logits = model(x).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("nothing to evaluate: the split (or its limit) is empty")
    return EvalResult(correct / n, loss_sum / n, n)


def to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda"
    x = x.to(device, non_blocking=non_blocking)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=non_blocking)
