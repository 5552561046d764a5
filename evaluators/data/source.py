"""What a dataset is to this project: a :class:`DataSource` in a registry, one file per dataset.

A source knows where its files are looked for, how to check them cheaply (headers and file lists, before anything
starts), how to fetch them when the user allows a download, and how to load them as splits. Adding a dataset means
adding a file with a subclass decorated by :func:`register`, and importing it in the package's ``__init__``.

Sources whose images fit in memory as arrays (Fashion-MNIST, CIFAR) derive from :class:`ArraySource`: they only
read the official train and test arrays; the hold-out, the caching and the splits are shared.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .holdout import holdout
from .split import Split

__all__ = ["SOURCES", "ArraySource", "DataInfo", "DataSource", "DatasetNotFoundError", "default_data_dir", "fetch",
           "read_arrays", "register"]

logger = logging.getLogger(__name__)

Arrays = dict[str, tuple[torch.Tensor, torch.Tensor]]  # "train" / "test" -> (uint8 images N,C,H,W; int64 labels)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were looked for (or could not be downloaded)."""


@dataclass(frozen=True)
class DataInfo:
    """What a dataset is: classes, normalisation, native size and images per split."""

    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_resolution: int  # side of the stored images (imagefolder: median shorter side of a sample of images)
    sizes: dict[str, int]  # images per split: "train", "val", "test"


def default_data_dir() -> Path:
    """Where downloads go and where CIFAR is looked for without ``data_dir``: ``$SCSA_SEARCH_DATA`` or
    ``~/.cache/scsa-search/data``."""
    return Path(os.environ.get("SCSA_SEARCH_DATA", "~/.cache/scsa-search/data")).expanduser()


class DataSource:
    """One dataset. ``check`` validates without decoding; ``location`` names what ``load`` reads (the in-process
    cache key); ``load`` gives ``{"train", "val", "test"}`` splits."""

    name: str = ""
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def check(self, data_dir: str | None, download: bool, val_fraction: float) -> DataInfo:
        raise NotImplementedError

    def location(self, data_dir: str | None) -> Path:
        raise NotImplementedError

    def load(self, location: Path, val_fraction: float) -> dict[str, Split]:
        raise NotImplementedError


class ArraySource(DataSource):
    """A source read whole into memory: :meth:`read` gives the official train and test arrays."""

    def read(self, location: Path) -> Arrays:
        raise NotImplementedError

    def load(self, location: Path, val_fraction: float) -> dict[str, Split]:
        arrays = read_arrays(self.name, location)
        images, labels = arrays["train"]
        train_idx, val_idx = holdout(labels, val_fraction)
        return {
            "train": Split(images, labels, mean=self.mean, std=self.std, index=train_idx),
            "val": Split(images, labels, mean=self.mean, std=self.std, index=val_idx),
            "test": Split(*arrays["test"], mean=self.mean, std=self.std),  # official order, untouched
        }


#: name -> source, in the order the CLI lists them
SOURCES: dict[str, DataSource] = {}


def register(cls: type[DataSource]) -> type[DataSource]:
    """Class decorator: put an instance of a :class:`DataSource` subclass in :data:`SOURCES` under its name."""
    SOURCES[cls.name] = cls()
    return cls


@functools.lru_cache(maxsize=2)
def read_arrays(name: str, location: Path) -> Arrays:
    """Decoded (images, labels) of the official "train" and "test" sets; cached apart from the hold-out, so another
    ``val_fraction`` does not read the files again."""
    source = SOURCES[name]
    assert isinstance(source, ArraySource)
    return source.read(location)


def fetch(what: str, root: Path, download: Callable[[], object], instead: str) -> None:
    """Download ``what`` into ``root`` with ``download()`` (torchvision's), saying so; any failure (network, disk,
    archive) becomes one :class:`DatasetNotFoundError` line that ends with what to do ``instead``."""
    logger.warning("downloading %s to %s", what, root)
    try:
        download()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetNotFoundError(f"{what} download to {root} failed ({reason}): {instead}") from exc
