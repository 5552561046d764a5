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

Where the data is looked for:

- ``fashion-mnist``: the IDX ``.gz`` (or uncompressed) files in ``data_dir`` or ``data_dir/FashionMNIST/raw``;
  without ``data_dir``: :data:`FASHION_MNIST_SYSTEM_DIR` (``apt-get install dataset-fashion-mnist``), then
  ``default_data_dir()/FashionMNIST/raw``.
- ``cifar10`` / ``cifar100``: torchvision's layout (``cifar-10-batches-py``, ``cifar-100-python``) under
  ``data_dir``, else under :func:`default_data_dir` (``$SCSA_SEARCH_DATA`` or ``~/.cache/scsa-search/data``).
- ``imagefolder``: ``data_dir`` holds ``train/`` (+ optional ``val/``, ``test/``) class-per-folder trees, or the
  class folders directly. Without ``test/`` the test split is empty; without ``val/`` val is held out of train.

Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "DataInfo",
    "DatasetNotFoundError",
    "Split",
    "check_dataset",
    "default_data_dir",
    "load_splits",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "imagefolder")

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 0  # fixed: the train/val split must not depend on the trial seed
IMAGE_CACHE_BYTES = 512 * 2**20  # decoded ImageFolder images kept in memory per split when they fit

_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # == timm.data.IMAGENET_DEFAULT_MEAN (not imported: evaluators stay timm-free)
_IMAGENET_STD = (0.229, 0.224, 0.225)  # == timm.data.IMAGENET_DEFAULT_STD
_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "fashion-mnist": ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": (_IMAGENET_MEAN, _IMAGENET_STD),
}
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR = {  # name -> (torchvision folder, files that must exist, classes, train size, test size)
    "cifar10": (
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"),
        10,
        50000,
        10000,
    ),
    "cifar100": ("cifar-100-python", ("train", "test", "meta"), 100, 50000, 10000),
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


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


# --------------------------------------------------------------------------------------------------------------
# Split: uint8 images in memory (or lazily decoded files) + labels, batched on tensors


class _FileImages:
    """ImageFolder images decoded lazily, resized to the requested resolution, cached when they fit."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # resolution -> (images, decoded mask)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: torch.Tensor, resolution: int, pool: ThreadPoolExecutor | None) -> torch.Tensor:
        cache = self._cache_for(resolution)
        if cache is not None:
            images, done = cache
            missing = index[~done[index]].unique()
            if len(missing):
                images[missing] = self._decode_many(missing.tolist(), resolution, pool)
                done[missing] = True
            return images[index]
        return self._decode_many(index.tolist(), resolution, pool)

    def _cache_for(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if resolution not in self._cache:
            used = sum(images.numel() for images, _ in self._cache.values())
            if used + len(self) * 3 * resolution * resolution > IMAGE_CACHE_BYTES:
                return None
            self._cache[resolution] = (
                torch.empty(len(self), 3, resolution, resolution, dtype=torch.uint8),
                torch.zeros(len(self), dtype=torch.bool),
            )
        return self._cache[resolution]

    def _decode_many(self, index: list[int], resolution: int, pool: ThreadPoolExecutor | None) -> torch.Tensor:
        paths = [self.paths[i] for i in index]
        decode = functools.partial(_decode_image, resolution=resolution)
        arrays = list(pool.map(decode, paths)) if pool is not None and len(paths) > 1 else [decode(p) for p in paths]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _decode_image(path: str, resolution: int) -> np.ndarray:
    """Decode one image to RGB uint8 (resolution, resolution, 3): shorter side resized, centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale when much larger
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            im = im.resize((resolution, resolution), Image.Resampling.BILINEAR, box=box)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from exc


class Split:
    """One split of a dataset: uint8 images (N, C, H, W) in memory, or lazily decoded image files, and int64
    labels. Treat it as read-only: splits are cached and shared between calls of :func:`load_splits`.

    In-memory splits may view a larger shared tensor through ``index`` (train and val share the decoded
    training set, so it is held once). :meth:`batches` yields float32 normalised (B, 3, res, res) images.
    """

    def __init__(
        self,
        images: torch.Tensor | Sequence[str],
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        index: torch.Tensor | None = None,
    ) -> None:
        self._tensor: torch.Tensor | None = None
        self._files: _FileImages | None = None
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
                raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
            self._tensor = images
        else:
            paths = list(images)
            self._files = _FileImages(paths if index is None else [paths[i] for i in index.tolist()])
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        labels = labels.to(torch.int64)
        self._index = index if self._tensor is not None else None
        self.labels: torch.Tensor = labels if index is None else labels[index]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        kind = "image files" if self._files is not None else f"uint8 {tuple(self._tensor.shape[1:])}"
        return f"Split({len(self)} images, {kind})"

    @property
    def images(self) -> torch.Tensor | None:
        """The uint8 (N, C, H, W) images (a copy when this split views a shared tensor); None for image files."""
        if self._tensor is None:
            return None
        return self._tensor if self._index is None else self._tensor[self._index]

    @property
    def paths(self) -> list[str] | None:
        """The image files of a lazily decoded split; None for in-memory splits."""
        return None if self._files is None else list(self._files.paths)

    def batches(
        self,
        batch_size: int,
        resolution: int,
        *,
        train: bool,
        seed: int,
        limit: int | None = None,
        drop_last: bool | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)``: float32 normalised (B, 3, resolution, resolution) and int64 (B,).

        ``train=True`` shuffles (``torch.Generator`` seeded with ``seed``) and augments: random crop with zero
        padding (4 px at 32 px, scaled with ``resolution``) and horizontal flip. ``train=False`` keeps the stored
        order and does not augment. ``limit`` uses only the first ``limit`` images of the split's stored order
        (a fixed, class-interleaved permutation for train/val), the same subset for every seed.
        ``drop_last`` defaults to ``train`` (but a split smaller than one batch still gives one batch).
        Deterministic for a given ``seed``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        n = len(self) if limit is None else max(0, min(int(limit), len(self)))
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(n, generator=generator) if train else torch.arange(n)
        if drop_last is None:
            drop_last = train
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)]).view(1, 3, 1, 1)
        pool = ThreadPoolExecutor(max(1, torch.get_num_threads())) if self._files is not None else None
        try:
            for start in range(0, stop, batch_size):
                index = order[start : start + batch_size]
                if self._files is not None:
                    x = self._files.get(index, resolution, pool)
                else:
                    x = self._tensor[index if self._index is None else self._index[index]]
                x = _resize(x, resolution)
                if train:
                    x = _crop_flip(x, pad=max(1, (resolution + 4) // 8), generator=generator)
                channels = x.shape[1]
                x = x.float().mul_(scale[:, :channels]).add_(shift[:, :channels])
                if channels == 1:
                    x = x.expand(-1, 3, -1, -1).contiguous()
                yield x, self.labels[index]
        finally:
            if pool is not None:
                pool.shutdown()


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 stays uint8 at the right size (cheaper crop); otherwise float32 in [0, 255]."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(x.float(), size=(resolution, resolution), mode="bilinear", align_corners=False)


def _crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per sample, as one gather."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(0), cols) + offsets[1][:, None]  # (B, W)
    rows = torch.arange(h) + offsets[0][:, None]  # (B, H)
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, flat).view(b, c, h, w)


# --------------------------------------------------------------------------------------------------------------
# Deterministic, stratified train/val hold-out


def _holdout(labels: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val), stratified per class, seeded with SPLIT_SEED; each in class-interleaved order."""
    n = len(labels)
    if n == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(n, generator=generator)
    _, inverse, counts = torch.unique(labels[perm], return_inverse=True, return_counts=True)
    # rank of each permuted sample within its class, in permuted order
    by_class = torch.sort(inverse, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts[inverse[by_class]]

    n_val = _split_sizes(n, val_fraction)[1]
    # largest remainder: per-class counts summing to exactly n_val
    quota = counts.double() * (n_val / n)
    per_class = quota.floor().long()
    remainder = n_val - int(per_class.sum())
    if remainder > 0:
        per_class[torch.argsort(quota - per_class, descending=True, stable=True)[:remainder]] += 1

    is_val = rank < per_class[inverse]
    val_rank, train_rank = rank.double(), (rank - per_class[inverse]).double()
    val_size, train_size = per_class.double()[inverse], (counts - per_class).double()[inverse]

    def interleaved(mask: torch.Tensor, r: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        # ordering by progress through each class makes every prefix proportionally stratified
        idx = mask.nonzero().squeeze(1)
        key = (r[idx] + 0.5) / size[idx]
        return perm[idx[torch.sort(key, stable=True).indices]]

    return interleaved(~is_val, train_rank, train_size), interleaved(is_val, val_rank, val_size)


def _split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) sizes of a hold-out: at least one val image when val_fraction > 0, at least one train."""
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    return n - n_val, n_val


def _check_name_and_fraction(name: str, val_fraction: float) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


# --------------------------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files read directly


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_dirs(data_dir: str | None) -> list[Path]:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / "FashionMNIST" / "raw"]
    return [FASHION_MNIST_SYSTEM_DIR, default_data_dir() / "FashionMNIST" / "raw"]


def _fashion_files(data_dir: str | None) -> dict[str, tuple[Path, Path]] | None:
    """The first searched directory holding all four IDX files, or None."""
    for directory in _fashion_dirs(data_dir):
        found = {
            split: (_find_idx(directory, images), _find_idx(directory, labels))
            for split, (images, labels) in _FASHION_FILES.items()
        }
        if all(p is not None for pair in found.values() for p in pair):
            return found
    return None


#: How to install the embedded default dataset (Debian's package); as root, without ``sudo``.
FASHION_MNIST_INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"


def _fashion_not_found(data_dir: str | None) -> DatasetNotFoundError:
    searched = ", ".join(str(d) for d in _fashion_dirs(data_dir))
    return DatasetNotFoundError(
        f"Fashion-MNIST not found (looked for train-images-idx3-ubyte.gz etc. in {searched}): install the Debian "
        f"package dataset-fashion-mnist ({FASHION_MNIST_INSTALL}; as root without sudo), or pass --data-dir DIR, "
        "or add --download"
    )


def _open_idx(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _idx_header(path: Path, magic: int) -> tuple[int, ...]:
    """Validate an IDX file's magic number and return its dimensions (reads only the header)."""
    ndim = magic & 0xFF
    try:
        with _open_idx(path) as f:
            head = f.read(4 + 4 * ndim)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt IDX file {path}: {exc}") from exc
    if len(head) < 4 + 4 * ndim or int.from_bytes(head[:4], "big") != magic:
        raise ValueError(f"corrupt IDX file {path}: bad magic number (expected {magic:#010x})")
    return tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def _read_idx(path: Path, magic: int) -> np.ndarray:
    ndim = magic & 0xFF
    try:
        with _open_idx(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt IDX file {path}: {exc}") from exc
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"corrupt IDX file {path}: bad magic number (expected {magic:#010x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(shape):
        raise ValueError(f"corrupt IDX file {path}: {len(raw) - offset} data bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _download_fashion(data_dir: str | None) -> None:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    logger.warning("downloading Fashion-MNIST to %s", root / "FashionMNIST" / "raw")
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
    except Exception as exc:  # network, disk, archive: all mean "not available"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetNotFoundError(
            f"Fashion-MNIST download to {root} failed ({reason}): install the Debian package dataset-fashion-mnist "
            f"({FASHION_MNIST_INSTALL}; as root without sudo), or pass --data-dir DIR with the IDX files"
        ) from exc


def _check_fashion(data_dir: str | None, download: bool, val_fraction: float) -> DataInfo:
    files = _fashion_files(data_dir)
    if files is None and download:
        _download_fashion(data_dir)
        files = _fashion_files(data_dir)
    if files is None:
        raise _fashion_not_found(data_dir)
    sizes = {}
    for split, (images, labels) in files.items():
        n, h, w = _idx_header(images, _IDX_IMAGES_MAGIC)
        (n_labels,) = _idx_header(labels, _IDX_LABELS_MAGIC)
        if n != n_labels or (h, w) != (28, 28):
            detail = f"{n} images of {h}x{w}, {n_labels} labels"
            raise ValueError(f"corrupt Fashion-MNIST files {images}, {labels}: {detail}")
        sizes[split] = n
    n_train, n_val = _split_sizes(sizes["train"], val_fraction)
    mean, std = _STATS["fashion-mnist"]
    return DataInfo("fashion-mnist", 10, mean, std, 28, {"train": n_train, "val": n_val, "test": sizes["test"]})


def _load_fashion(data_dir: str | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    files = _fashion_files(data_dir)
    if files is None:
        raise _fashion_not_found(data_dir)
    out = {}
    for split, (image_path, label_path) in files.items():
        images = _read_idx(image_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(label_path, _IDX_LABELS_MAGIC)
        if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.max(initial=0) > 9:
            raise ValueError(f"corrupt Fashion-MNIST files {image_path}, {label_path}")
        out[split] = (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    return out


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10/100 via torchvision


def _cifar_root(name: str, data_dir: str | None) -> Path:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    folder = _CIFAR[name][0]
    return root.parent if root.name == folder else root  # accept the extracted folder itself


def _cifar_missing(name: str, root: Path) -> list[str]:
    folder, files = _CIFAR[name][:2]
    return [f for f in files if not (root / folder / f).is_file()]


def _cifar_not_found(name: str, root: Path, detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} not found in {root / _CIFAR[name][0]} ({detail}): pass --data-dir DIR holding "
        f"{_CIFAR[name][0]}/, or allow download"
    )


def _download_cifar(name: str, root: Path) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    logger.warning("downloading %s to %s", name, root)
    try:
        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=False, download=True)
    except Exception as exc:  # network, disk, archive: all mean "not available"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetNotFoundError(
            f"{name} download to {root} failed ({reason}): pass --data-dir DIR holding {_CIFAR[name][0]}/"
        ) from exc


def _check_cifar(name: str, data_dir: str | None, download: bool, val_fraction: float) -> DataInfo:
    root = _cifar_root(name, data_dir)
    missing = _cifar_missing(name, root)
    if missing and download:
        _download_cifar(name, root)
        missing = _cifar_missing(name, root)
    if missing:
        raise _cifar_not_found(name, root, f"missing {', '.join(missing)}")
    _, _, num_classes, n_train, n_test = _CIFAR[name]
    n_train, n_val = _split_sizes(n_train, val_fraction)
    mean, std = _STATS[name]
    return DataInfo(name, num_classes, mean, std, 32, {"train": n_train, "val": n_val, "test": n_test})


def _load_cifar(name: str, data_dir: str | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from torchvision.datasets import CIFAR10, CIFAR100

    root = _cifar_root(name, data_dir)
    missing = _cifar_missing(name, root)
    if missing:
        raise _cifar_not_found(name, root, f"missing {', '.join(missing)}")
    out = {}
    for split in ("train", "test"):
        try:
            ds = (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=split == "train", download=False)
        except RuntimeError as exc:  # torchvision's md5 check
            raise _cifar_not_found(name, root, "files corrupted") from exc
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        out[split] = (images, torch.as_tensor(ds.targets, dtype=torch.int64))
    return out


# --------------------------------------------------------------------------------------------------------------
# ImageFolder trees


@dataclass(frozen=True)
class _Folders:
    classes: tuple[str, ...]
    samples: dict[str, tuple[tuple[str, int], ...]]  # split ("train", optional "val", "test") -> (path, label)


def _imagefolder_root(data_dir: str | None) -> Path:
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


def _check_imagefolder(data_dir: str | None, val_fraction: float) -> DataInfo:
    folders = _scan_folders(_imagefolder_root(data_dir).resolve())
    n_train = len(folders.samples["train"])
    if "val" in folders.samples:
        n_val = len(folders.samples["val"])
    else:
        n_train, n_val = _split_sizes(n_train, val_fraction)
    native = _native_side([p for p, _ in folders.samples["train"]])
    mean, std = _STATS["imagefolder"]
    sizes = {"train": n_train, "val": n_val, "test": len(folders.samples.get("test", ()))}
    return DataInfo("imagefolder", len(folders.classes), mean, std, native, sizes)


def _load_imagefolder(root: Path, val_fraction: float) -> dict[str, Split]:
    folders = _scan_folders(root)
    mean, std = _STATS["imagefolder"]

    def split(samples: Sequence[tuple[str, int]], index: torch.Tensor) -> Split:
        # ImageFolder lists samples sorted by class; index puts them in class-interleaved order
        labels = torch.tensor([y for _, y in samples], dtype=torch.int64)
        return Split([p for p, _ in samples], labels, mean=mean, std=std, index=index)

    def labels_of(samples: Sequence[tuple[str, int]]) -> torch.Tensor:
        return torch.tensor([y for _, y in samples], dtype=torch.int64)

    train = folders.samples["train"]
    out = {}
    if "val" in folders.samples:
        out["train"] = split(train, _holdout(labels_of(train), 0.0)[0])
        out["val"] = split(folders.samples["val"], _holdout(labels_of(folders.samples["val"]), 0.0)[0])
    else:
        train_idx, val_idx = _holdout(labels_of(train), val_fraction)
        out["train"], out["val"] = split(train, train_idx), split(train, val_idx)
    test = folders.samples.get("test", ())
    out["test"] = split(test, _holdout(labels_of(test), 0.0)[0])
    return out


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def check_dataset(
    name: str, data_dir: str | None = None, download: bool = False, val_fraction: float = 0.1
) -> DataInfo:
    """Cheap validation before anything starts (headers and file lists, no decoding).

    Raises ``ValueError`` (unknown name, bad layout, corrupt file) or :class:`DatasetNotFoundError` with one
    clear line. With ``download=True`` a missing Fashion-MNIST / CIFAR is downloaded here, once, so that trials
    running in parallel later never race to download.
    """
    _check_name_and_fraction(name, val_fraction)
    if name == "fashion-mnist":
        return _check_fashion(data_dir, download, val_fraction)
    if name in _CIFAR:
        return _check_cifar(name, data_dir, download, val_fraction)
    return _check_imagefolder(data_dir, val_fraction)


def load_splits(
    name: str, data_dir: str | None = None, download: bool = False, val_fraction: float = 0.1
) -> tuple[DataInfo, dict[str, Split]]:
    """Load a dataset as ``(info, {"train": Split, "val": Split, "test": Split})``.

    Decoded data is cached in-process (keyed by the directory it was read from), so repeated trials in one
    process do not re-read files; the returned splits are shared and must not be modified.
    """
    info = check_dataset(name, data_dir, download, val_fraction)
    if name == "fashion-mnist":
        files = _fashion_files(data_dir)
        assert files is not None  # check_dataset raised otherwise
        source = files["train"][0].parent.resolve()
    elif name in _CIFAR:
        source = _cifar_root(name, data_dir).resolve()
    else:
        source = _imagefolder_root(data_dir).resolve()
    return info, _load_cached(name, source, val_fraction)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, source: Path, val_fraction: float) -> dict[str, Split]:
    if name == "imagefolder":
        return _load_imagefolder(source, val_fraction)
    mean, std = _STATS[name]
    arrays = _read_arrays(name, source)
    images, labels = arrays["train"]
    train_idx, val_idx = _holdout(labels, val_fraction)
    return {
        "train": Split(images, labels, mean=mean, std=std, index=train_idx),
        "val": Split(images, labels, mean=mean, std=std, index=val_idx),
        "test": Split(*arrays["test"], mean=mean, std=std),  # official order, untouched
    }


@functools.lru_cache(maxsize=2)
def _read_arrays(name: str, source: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decoded (images, labels) of the official "train" and "test" sets; cached apart from the hold-out."""
    return _load_fashion(str(source)) if name == "fashion-mnist" else _load_cifar(name, str(source))
