"""Proxy training: train an ArchConfig from scratch for a short, fixed schedule and report per-epoch metrics.

A proxy is a cheap stand-in for full training whose only job is to *rank* architectures. One call trains one
config at one :class:`Fidelity` (images per epoch, resolution, epochs, optimiser, schedule) and yields an
:class:`EpochResult` after every epoch, so that a multi-fidelity scheduler can stop a poor trial early simply by
no longer iterating::

    >>> from space.config import ArchConfig
    >>> for r in train_proxy(ArchConfig.baseline("resnet18"), fidelity="smoke"):  # doctest: +SKIP
    ...     print(r.epoch, r.accuracy)

For full trainings (and to keep the trained weights) use :class:`ProxyRun`, which is the same loop with the
model, the history and a test-split evaluation attached::

    >>> full = preset("thorough", train_images=None, val_images=None, epochs=30, augment=True)
    >>> run = ProxyRun(ArchConfig.paper_default("resnet50"), fidelity=full, device="auto")  # doctest: +SKIP
    >>> history = run.run()                      # or: for r in run: ...
    >>> test = run.test()                        # official test split, at the proxy's resolution
    >>> torch.save(run.model.state_dict(), "model.pth")

Reproducibility: on CPU a run is bit-for-bit deterministic for a given ``seed``, fidelity and thread count
(model initialisation from ``torch.manual_seed(seed)``, data order and augmentation from generators seeded with
``seed`` and the epoch, and every run keeps its own RNG state, so interleaved runs in one process do not disturb
each other or the caller's global RNG). On CUDA, cuDNN may choose non-deterministic kernels; runs are close, not
identical.

Resolution and what the attention slots see: timm ResNets reduce the input 4x in the stem (7x7/2 conv + max-pool)
and 2x in each of stages 2-4, rounding up. SCSA's spatial attention (SMSA) is degenerate on a 1x1 map, so every
preset except ``smoke`` uses a resolution >= 33 px, where stage 4 sees 2x2. The CIFAR-style stem
(``stem="cifar"``) would give larger maps at the same input size but changes the network that is deployed (and
its FLOPs); the presets keep the real timm stem and upsample Fashion-MNIST's 28 px images instead, which costs the
same arithmetic for the same map sizes.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from evaluators.data import DEFAULT_DATASET
from space.backbones import family
from space.build import build_model
from space.config import ArchConfig

from .data import Split, load_splits
from .device import resolve_device
from .evaluate import EpochResult, EvalResult, TrainingDiverged, autocast, evaluate, to_device
from .fidelity import OPTIMIZERS, PRESETS, SCHEDULES, STEMS, Fidelity, parse_overrides, preset
from .fvcore_nn import update_bn_stats

__all__ = [
    "OPTIMIZERS",
    "PRESETS",
    "SCHEDULES",
    "STEMS",
    "EpochResult",
    "EvalResult",
    "Fidelity",
    "ProxyRun",
    "TrainingDiverged",
    "evaluate",
    "preset",
    "parse_overrides",
    "train_proxy",
]

#: TSE-EMA's discount per epoch (Ru et al.'s gamma); spread evenly over the epoch's steps.
TSE_EMA_DECAY = 0.9
_as_fidelity = preset  # a preset name or a Fidelity, for ProxyRun's ``fidelity`` parameter

# --------------------------------------------------------------------------------------------------------------
# Helpers


def _adapt_stem(model: nn.Module, backbone: str, stem: str) -> None:
    """``cifar``: the CIFAR-ResNet stem (3x3/1 conv, no max-pool). Same module names, so every other timm key and
    every attention slot stays where it was."""
    if stem == "default":
        return
    if family(backbone) != "resnet" or not isinstance(getattr(model, "conv1", None), nn.Conv2d):
        raise ValueError(f"stem='cifar' is implemented for timm ResNets with a single-conv stem, not {backbone!r}")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None)
    model.maxpool = nn.Identity()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decaying norm scales and biases only hurts short schedules (it shrinks BN gains toward 0); standard practice
    # in timm (``param_groups_weight_decay``) and most recipes.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / (total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# Above this, augment=False (which holds the decoded training subset in memory) is refused with a clear error.
MAX_SUBSET_BYTES = 2 * 2**30


def _unaugmented_subset(split: Split, n: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``split`` (the same class-balanced subset that ``batches(limit=n)`` trains on),
    resized and normalised once, as float32. Grey images (3 equal channels) are kept as one channel and expanded
    per batch, which cuts the memory by 3 at no cost."""
    bytes_needed = n * 3 * resolution * resolution * 4
    if bytes_needed > MAX_SUBSET_BYTES:
        raise ValueError(
            f"augment=False holds the {n} training images at {resolution} px in memory "
            f"({bytes_needed / 2**30:.1f} GiB > {MAX_SUBSET_BYTES / 2**30:.0f} GiB); use augment=True for this size"
        )
    chunks, labels = [], []
    for x, y in split.batches(1024, resolution, train=False, seed=0, limit=n):
        grey = x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
        chunks.append(x[:, :1].clone() if grey else x)
        labels.append(y)
    if any(c.shape[1] != chunks[0].shape[1] for c in chunks):  # mixed grey and colour: keep 3 channels
        chunks = [c.expand(-1, 3, -1, -1) for c in chunks]
    return torch.cat(chunks), torch.cat(labels)


def _shuffled_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded reshuffle of an in-memory subset; drops the last partial batch like ``Split.batches(train=True)``."""
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    stop = n - n % batch_size if n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size].to(images.device)
        yield images[index].expand(-1, 3, -1, -1).contiguous(), labels[index]


# --------------------------------------------------------------------------------------------------------------
# The training loop


class ProxyRun:
    """One training run of ``arch`` at ``fidelity``: iterate it to train, one :class:`EpochResult` per epoch.

    The model is built (and the data loaded) on construction; ``model``, ``history`` and :meth:`test` stay
    available after or during iteration, so the same object serves proxy trials (stop iterating to stop early)
    and full trainings (iterate to the end, then :meth:`test` and save ``model.state_dict()``). Iterating a second
    time continues nothing: a finished run yields no more epochs.
    """

    def __init__(
        self,
        arch: ArchConfig,
        dataset: str = DEFAULT_DATASET,
        data_dir: str | None = None,
        fidelity: Fidelity | str = "default",
        seed: int = 0,
        device: str | torch.device = "cpu",
        *,
        download: bool = False,
        val_fraction: float = 0.1,
    ) -> None:
        self._start = time.perf_counter()
        self.arch = arch
        self.fidelity = _as_fidelity(fidelity)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.device = resolve_device(device)
        fid = self.fidelity
        if fid.threads is not None:
            torch.set_num_threads(fid.threads)

        self.info, self.splits = load_splits(dataset, data_dir, download, val_fraction)
        n_train = len(self.splits["train"])
        self.train_images = n_train if fid.train_images is None else min(fid.train_images, n_train)
        if self.train_images < 2:
            raise ValueError(f"{dataset}: {self.train_images} training image(s); BatchNorm needs at least 2")
        if len(self.splits["val"]) == 0:
            raise ValueError(f"{dataset}: the val split is empty; a proxy needs validation images")
        # The last partial batch is dropped (a batch of 1 breaks BatchNorm), unless the subset is below one batch.
        self.steps_per_epoch = max(1, self.train_images // fid.batch_size)
        self._subset: tuple[torch.Tensor, torch.Tensor] | None = None
        if not fid.augment:
            # On a GPU the (small) subset lives there: no host-to-device copy per batch.
            images, labels = _unaugmented_subset(self.splits["train"], self.train_images, fid.resolution)
            self._subset = (images.to(self.device), labels.to(self.device))

        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(seed)
            model = build_model(arch, num_classes=self.info.num_classes)
            _adapt_stem(model, arch.backbone, fid.stem)
            self._cpu_rng = torch.get_rng_state()
            self._cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        if fid.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model.to(self.device)

        params = _param_groups(self.model, fid.weight_decay)
        # Fused kernels: one pass over the parameters instead of one per state tensor. On CPU that is 5x less
        # time in AdamW's step (60 -> 11 ms per step for resnet18 on one core, ~12% of a 40 px training step).
        fused = True if self.device.type in ("cpu", "cuda") else None
        if fid.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=fid.lr, momentum=fid.momentum, nesterov=fid.momentum > 0, fused=fused
            )
        else:
            self.optimizer = torch.optim.AdamW(params, lr=fid.lr, betas=(fid.momentum, 0.999), fused=fused)
        self.total_steps = fid.epochs * self.steps_per_epoch
        self.warmup_steps = round(fid.warmup_epochs * self.steps_per_epoch)
        self.history: list[EpochResult] = []
        self.images_seen = 0
        self._step = 0
        self._tse = 0.0
        self._tse_ema = 0.0
        self._step_decay = TSE_EMA_DECAY ** (1.0 / self.steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where this one is: weights, optimiser, step counters,
        history and RNG state (tensors, numbers, strings, lists and dicts only: ``torch.load(...,
        weights_only=True)`` reads it back)."""
        return {
            "arch": self.arch.to_dict(), "fidelity": self.fidelity.to_dict(), "seed": self.seed,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self._step,
            "images_seen": self.images_seen, "tse": self._tse, "tse_ema": self._tse_ema,
            "history": [r.to_dict() for r in self.history], "cpu_rng": self._cpu_rng,
            "elapsed_s": time.perf_counter() - self._start,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a run of the same config, fidelity and seed (``ValueError`` if not)."""
        mine = {"arch": self.arch.to_dict(), "fidelity": self.fidelity.to_dict(), "seed": self.seed}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            differ = ", ".join(k for k in mine if theirs[k] != mine[k])
            raise ValueError(f"the checkpoint is of another run ({differ} differ); it cannot be continued")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self._tse, self._tse_ema = float(state["tse"]), float(state["tse_ema"])
        self.history = [EpochResult(**r) for r in state["history"]]
        self._cpu_rng = state["cpu_rng"]
        self._start = time.perf_counter() - float(state["elapsed_s"])

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    @property
    def epoch(self) -> int:
        """Epochs completed so far."""
        return len(self.history)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.fidelity.epochs

    def __iter__(self) -> Iterator[EpochResult]:
        while not self.finished:
            yield self.train_epoch()

    def run(self) -> list[EpochResult]:
        """Train to the end of the schedule; the whole history."""
        for _ in self:
            pass
        return self.history

    def train_epoch(self) -> EpochResult:
        """Train one epoch, validate, record and return its :class:`EpochResult`."""
        if self.finished:
            raise RuntimeError(f"the run has finished its {self.fidelity.epochs} epoch(s)")
        fid, epoch = self.fidelity, self.epoch + 1
        # Each run keeps its own RNG state (nothing in a timm ResNet draws from it after init, but dropout or
        # drop-path would), so interleaved runs stay deterministic and the caller's RNG is left untouched.
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.set_rng_state(self._cpu_rng)
            if self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            loss = self._train_one_epoch(epoch)
            self._cpu_rng = torch.get_rng_state()
            if self._cuda_rng is not None:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
        if fid.precise_bn:
            # A forward in train mode may draw random numbers (dropout): not from the training's stream.
            with torch.random.fork_rng(devices=self._cuda_devices()):
                self._recompute_bn_stats(epoch)
        val = self.validate()
        if not math.isfinite(val.loss):
            raise TrainingDiverged(
                f"training diverged: validation loss is {val.loss} after epoch {epoch}/{fid.epochs} "
                f"(train loss {loss:.4g}); the weights or BatchNorm statistics overflowed (lr={fid.lr:g})",
                epoch=epoch,
                step=None,
                loss=val.loss,
            )
        result = EpochResult(
            epoch=epoch,
            epochs=fid.epochs,
            accuracy=val.accuracy,
            loss=loss,
            val_loss=val.loss,
            time_s=time.perf_counter() - self._start,
            images_seen=self.images_seen,
            tse=self._tse,
            tse_ema=self._tse_ema,
        )
        self.history.append(result)
        return result

    def _epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch ``epoch``'s training batches, in the order it trains on them."""
        fid = self.fidelity
        # Data seed from (seed, epoch): a new order every epoch, the same for every run with this seed.
        data_seed = self.seed * 100_003 + epoch
        if self._subset is None:
            return self.splits["train"].batches(
                fid.batch_size, fid.resolution, train=True, seed=data_seed, limit=self.train_images
            )
        return _shuffled_batches(*self._subset, fid.batch_size, data_seed)

    def _train_one_epoch(self, epoch: int) -> float:
        fid, model, opt = self.fidelity, self.model, self.optimizer
        criterion = nn.CrossEntropyLoss(label_smoothing=fid.label_smoothing)
        model.train()
        loss_sum, steps = 0.0, 0
        for x, y in self._epoch_batches(epoch):
            factor = _lr_factor(self._step, self.total_steps, self.warmup_steps, fid.schedule)
            for group in opt.param_groups:
                group["lr"] = fid.lr * factor
            x, y = to_device(x, y, self.device, fid.channels_last)
            with autocast(self.device, fid.amp):
                loss = criterion(model(x).float(), y)
            # One host sync per step: the price of naming the exact step that diverged (and of the epoch's mean).
            value = float(loss.detach())
            steps += 1
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged: loss is {value} at epoch {epoch}/{fid.epochs}, step "
                    f"{steps}/{self.steps_per_epoch} (optimiser step {self._step + 1}); lr={fid.lr:g} "
                    f"({fid.optimizer}) is probably too large",
                    epoch=epoch,
                    step=steps,
                    loss=value,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self._step += 1
            loss_sum += value
            self._tse += value
            self._tse_ema = self._tse_ema * self._step_decay + value
            self.images_seen += len(y)
        return loss_sum / max(1, steps)

    def _recompute_bn_stats(self, epoch: int) -> None:
        """BatchNorm's running statistics recomputed from the first ``fidelity.precise_bn`` batches of the epoch
        just trained (same order and images) taken together, the weights fixed; see :class:`Fidelity`."""
        fid, model = self.fidelity, self.model
        batches = itertools.islice(self._epoch_batches(epoch), fid.precise_bn)
        inputs = [to_device(x, y, self.device, fid.channels_last)[0] for x, y in batches]
        model.train()
        with autocast(self.device, fid.amp):
            update_bn_stats(model, inputs, num_iters=len(inputs))

    def validate(self) -> EvalResult:
        """The current model on the val subset (``fidelity.val_images``)."""
        fid = self.fidelity
        return evaluate(
            self.model,
            self.splits["val"],
            resolution=fid.resolution,
            batch_size=fid.eval_batch_size,
            limit=fid.val_images,
            device=self.device,
            channels_last=fid.channels_last,
            amp=fid.amp,
        )

    def test(self, limit: int | None = None) -> EvalResult:
        """The current model on the official test split (all of it unless ``limit``), for full trainings.

        ``ValueError`` when the dataset has no test split (an ImageFolder tree without ``test/``).
        """
        split = self.splits["test"]
        if len(split) == 0:
            raise ValueError(f"{self.info.name} has no test split (an ImageFolder needs a test/ folder)")
        fid = self.fidelity
        return evaluate(
            self.model,
            split,
            resolution=fid.resolution,
            batch_size=fid.eval_batch_size,
            limit=limit,
            device=self.device,
            channels_last=fid.channels_last,
            amp=fid.amp,
        )


def train_proxy(arch: ArchConfig, *args: Any, **kwargs: Any) -> Iterator[EpochResult]:
    """Train ``arch`` from scratch and yield an :class:`EpochResult` after every epoch; stop iterating to stop the
    trial. The arguments are :class:`ProxyRun`'s (dataset, data directory, fidelity: a :class:`Fidelity` or a
    preset name, seed, device, ...), with its defaults.

    Raises :class:`TrainingDiverged` when the loss becomes NaN or infinite, ``ValueError`` for bad arguments.
    Nothing is built until the first ``next()``. Use :class:`ProxyRun` to keep the model.
    """
    yield from ProxyRun(arch, *args, **kwargs)
