"""Datasets for proxy training: Fashion-MNIST (offline, Debian package), CIFAR-10/100 and ImageFolder trees.

Everything a proxy trainer on a couple of CPU cores needs, and nothing more: images stay in memory as uint8
tensors, and resizing, augmentation and normalisation run batch-wise on tensors, never per sample with PIL.

    >>> info, splits = load_splits("fashion-mnist")                        # doctest: +SKIP
    >>> for x, y in splits["train"].batches(128, 32, train=True, seed=0, limit=5000):  # doctest: +SKIP
    ...     pass  # x: float32 (128, 3, 32, 32) normalised, y: int64 (128,)

Splits: ``"train"`` and ``"val"`` are held out of the official training data with a fixed split seed
(:data:`SPLIT_SEED`, independent of any trial seed, stratified per class), so every trial sees the same split.
``"test"`` is the official test data, untouched. Each held-out split is stored in a class-interleaved order,
so any prefix (``limit``) is class-balanced and the same for every trial and every epoch.

One source per dataset, each in a file of its own and registered by name (:mod:`.source`): ``fashion-mnist``
(:mod:`.fashion_mnist`), ``cifar10`` / ``cifar100`` (:mod:`.cifar`), ``imagefolder`` (:mod:`.imagefolder`); each
module says where its files are looked for. Nothing is downloaded unless ``download=True``. Adding a dataset means
adding a file and importing it below.
"""

from __future__ import annotations

import functools
from pathlib import Path

from . import cifar, fashion_mnist, imagefolder  # noqa: F401  (each registers its sources)
from .source import SOURCES, DataInfo, DatasetNotFoundError, default_data_dir
from .split import Split

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "FASHION_MNIST_INSTALL",
    "FASHION_MNIST_SYSTEM_DIR",
    "DataInfo",
    "DatasetNotFoundError",
    "Split",
    "check_dataset",
    "default_data_dir",
    "load_splits",
]

#: The embedded dataset every entry point defaults to (a Debian package, offline).
DEFAULT_DATASET = fashion_mnist.FashionMNIST.name
DATASETS: tuple[str, ...] = tuple(sorted(SOURCES, key=lambda name: name != DEFAULT_DATASET))  # the default first
FASHION_MNIST_SYSTEM_DIR = fashion_mnist.SYSTEM_DIR
FASHION_MNIST_INSTALL = fashion_mnist.INSTALL


def _check_name_and_fraction(name: str, val_fraction: float) -> None:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def check_dataset(
    name: str, data_dir: str | None = None, download: bool = False, val_fraction: float = 0.1
) -> DataInfo:
    """Cheap validation before anything starts (headers and file lists, no decoding).

    Raises ``ValueError`` (unknown name, bad layout, corrupt file) or :class:`DatasetNotFoundError` with one
    clear line. With ``download=True`` a missing Fashion-MNIST / CIFAR is downloaded here, once, so that trials
    running in parallel later never race to download.
    """
    _check_name_and_fraction(name, val_fraction)
    return SOURCES[name].check(data_dir, download, val_fraction)


def load_splits(
    name: str, data_dir: str | None = None, download: bool = False, val_fraction: float = 0.1
) -> tuple[DataInfo, dict[str, Split]]:
    """Load a dataset as ``(info, {"train": Split, "val": Split, "test": Split})``.

    Decoded data is cached in-process (keyed by the directory it was read from), so repeated trials in one
    process do not re-read files; the returned splits are shared and must not be modified.
    """
    info = check_dataset(name, data_dir, download, val_fraction)
    return info, _load_cached(name, SOURCES[name].location(data_dir), val_fraction)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, location: Path, val_fraction: float) -> dict[str, Split]:
    return SOURCES[name].load(location, val_fraction)

