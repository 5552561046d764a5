"""ImageFolder trees: ``data_dir`` holds ``train/`` (+ optional ``val/``, ``test/``) class-per-folder trees, or the
class folders directly. Without ``test/`` the test split is empty; without ``val/`` val is held out of train.
Images are decoded lazily, resized batch-wise and cached per resolution when they fit (see :mod:`.split`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .holdout import holdout, split_sizes
from .source import DataInfo, DatasetNotFoundError, DataSource, register
from .split import Split

__all__ = ["ImageFolder"]


@dataclass(frozen=True)
class _Folders:
    classes: tuple[str, ...]
    samples: dict[str, tuple[tuple[str, int], ...]]  # split ("train", optional "val", "test") -> (path, label)


def root_of(data_dir: str | None) -> Path:
    if data_dir is None:
        raise ValueError("imagefolder needs data_dir (--data-dir DIR) with class folders or train/ [val/ test/]")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DatasetNotFoundError(f"imagefolder directory {root} does not exist")
    if not root.is_dir():
        raise DatasetNotFoundError(f"imagefolder path {root} is not a directory")
    return root


@functools.lru_cache(maxsize=4)
def _scan_folders(root: Path) -> _Folders:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    if (root / "train").is_dir():
        train_dir = root / "train"
        extra = {s: root / s for s in ("val", "test") if (root / s).is_dir()}
    else:
        for s in ("val", "test"):
            if (root / s).is_dir():
                raise ValueError(f"imagefolder {root} has {s}/ but no train/ folder")
        train_dir, extra = root, {}

    try:
        train = ImageFolder(str(train_dir))
    except FileNotFoundError as exc:  # torchvision: no class folder, or a class folder without images
        raise ValueError(f"imagefolder {train_dir}: {exc} (expected one folder of images per class)") from exc
    if len(train.classes) < 2:
        raise ValueError(f"imagefolder {train_dir} has {len(train.classes)} class folder(s); need at least 2")

    samples = {"train": tuple((p, int(y)) for p, y in train.samples)}
    for split, directory in extra.items():
        classes = {d.name for d in directory.iterdir() if d.is_dir()}
        unknown = sorted(classes - set(train.class_to_idx))
        if unknown:
            raise ValueError(f"imagefolder {directory} has classes not in {train_dir}: {', '.join(unknown[:5])}")
        found = make_dataset(str(directory), train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        samples[split] = tuple((p, int(y)) for p, y in found)
    return _Folders(tuple(train.classes), samples)


def _native_side(paths: Sequence[str], probes: int = 32) -> int:
    """Median shorter side of up to ``probes`` evenly spaced images (header reads only)."""
    from PIL import Image

    picks = [paths[round(i * (len(paths) - 1) / max(1, probes - 1))] for i in range(min(probes, len(paths)))]
    sides = []
    for path in picks:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except OSError as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
    return int(np.median(sides))


@register
class ImageFolder(DataSource):
    name = "imagefolder"
    # == timm.data.IMAGENET_DEFAULT_MEAN / _STD (not imported: evaluators stay timm-free)
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def check(self, data_dir: str | None, download: bool, val_fraction: float) -> DataInfo:
        folders = _scan_folders(root_of(data_dir).resolve())
        n_train = len(folders.samples["train"])
        if "val" in folders.samples:
            n_val = len(folders.samples["val"])
        else:
            n_train, n_val = split_sizes(n_train, val_fraction)
        native = _native_side([p for p, _ in folders.samples["train"]])
        sizes = {"train": n_train, "val": n_val, "test": len(folders.samples.get("test", ()))}
        return DataInfo(self.name, len(folders.classes), self.mean, self.std, native, sizes)

    def location(self, data_dir: str | None) -> Path:
        return root_of(data_dir).resolve()

    def load(self, location: Path, val_fraction: float) -> dict[str, Split]:
        folders = _scan_folders(location)

        def split(samples: Sequence[tuple[str, int]], index: torch.Tensor) -> Split:
            # ImageFolder lists samples sorted by class; index puts them in class-interleaved order
            return Split([p for p, _ in samples], labels_of(samples), mean=self.mean, std=self.std, index=index)

        def labels_of(samples: Sequence[tuple[str, int]]) -> torch.Tensor:
            return torch.tensor([y for _, y in samples], dtype=torch.int64)

        train = folders.samples["train"]
        out = {}
        if "val" in folders.samples:
            out["train"] = split(train, holdout(labels_of(train), 0.0)[0])
            out["val"] = split(folders.samples["val"], holdout(labels_of(folders.samples["val"]), 0.0)[0])
        else:
            train_idx, val_idx = holdout(labels_of(train), val_fraction)
            out["train"], out["val"] = split(train, train_idx), split(train, val_idx)
        test = folders.samples.get("test", ())
        out["test"] = split(test, holdout(labels_of(test), 0.0)[0])
        return out
