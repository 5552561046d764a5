"""Fashion-MNIST: the IDX files read directly (``.gz`` or uncompressed), the project's offline default dataset.

Looked for in ``data_dir`` or ``data_dir/FashionMNIST/raw``; without ``data_dir`` in :data:`SYSTEM_DIR` (Debian's
``dataset-fashion-mnist`` package), then ``default_data_dir()/FashionMNIST/raw`` (where a download goes).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from .holdout import split_sizes
from .source import Arrays, ArraySource, DataInfo, DatasetNotFoundError, default_data_dir, fetch, register

__all__ = ["INSTALL", "SYSTEM_DIR", "FashionMNIST"]

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
#: How to install the embedded default dataset (Debian's package); as root, without ``sudo``.
INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _dims(path: Path, head: bytes, magic: int) -> tuple[int, ...]:
    """The dimensions an IDX header declares, after checking its magic number."""
    ndim = magic & 0xFF
    if len(head) < 4 + 4 * ndim or int.from_bytes(head[:4], "big") != magic:
        raise ValueError(f"corrupt IDX file {path}: bad magic number (expected {magic:#010x})")
    return tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def _read(path: Path, magic: int, header_only: bool = False) -> tuple[tuple[int, ...], bytes]:
    """``(dims, raw bytes)`` of an IDX file; with ``header_only`` only the header is read."""
    try:
        with _open(path) as f:
            raw = f.read(4 + 4 * (magic & 0xFF)) if header_only else f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupt IDX file {path}: {exc}") from exc
    return _dims(path, raw, magic), raw


def _array(path: Path, magic: int) -> np.ndarray:
    shape, raw = _read(path, magic)
    offset = 4 + 4 * len(shape)
    if len(raw) - offset != math.prod(shape):
        raise ValueError(f"corrupt IDX file {path}: {len(raw) - offset} data bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


@register
class FashionMNIST(ArraySource):
    name = "fashion-mnist"
    mean = (0.2860, 0.2860, 0.2860)
    std = (0.3530, 0.3530, 0.3530)

    @staticmethod
    def directories(data_dir: str | None) -> list[Path]:
        if data_dir is not None:
            root = Path(data_dir).expanduser()
            return [root, root / "FashionMNIST" / "raw"]
        return [SYSTEM_DIR, default_data_dir() / "FashionMNIST" / "raw"]

    def files(self, data_dir: str | None) -> dict[str, tuple[Path, Path]] | None:
        """The first searched directory holding all four IDX files, or None."""
        for directory in self.directories(data_dir):
            found = {split: (_find(directory, images), _find(directory, labels))
                     for split, (images, labels) in _FILES.items()}
            if all(p is not None for pair in found.values() for p in pair):
                return found
        return None

    def not_found(self, data_dir: str | None) -> DatasetNotFoundError:
        searched = ", ".join(str(d) for d in self.directories(data_dir))
        return DatasetNotFoundError(
            f"Fashion-MNIST not found (looked for train-images-idx3-ubyte.gz etc. in {searched}): install the Debian "
            f"package dataset-fashion-mnist ({INSTALL}; as root without sudo), or pass --data-dir DIR, "
            "or add --download"
        )

    def check(self, data_dir: str | None, download: bool, val_fraction: float) -> DataInfo:
        files = self.files(data_dir)
        if files is None and download:
            from torchvision.datasets import FashionMNIST as Download

            root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
            fetch("Fashion-MNIST", root / "FashionMNIST" / "raw",
                  lambda: Download(str(root), train=True, download=True),
                  f"install the Debian package dataset-fashion-mnist ({INSTALL}; as root without sudo), or pass "
                  "--data-dir DIR with the IDX files")
            files = self.files(data_dir)
        if files is None:
            raise self.not_found(data_dir)
        sizes = {}
        for split, (images, labels) in files.items():
            (n, h, w), _ = _read(images, _IMAGES_MAGIC, header_only=True)
            (n_labels,), _ = _read(labels, _LABELS_MAGIC, header_only=True)
            if n != n_labels or (h, w) != (28, 28):
                detail = f"{n} images of {h}x{w}, {n_labels} labels"
                raise ValueError(f"corrupt Fashion-MNIST files {images}, {labels}: {detail}")
            sizes[split] = n
        n_train, n_val = split_sizes(sizes["train"], val_fraction)
        return DataInfo(self.name, 10, self.mean, self.std, 28, {"train": n_train, "val": n_val, "test": sizes["test"]})

    def location(self, data_dir: str | None) -> Path:
        files = self.files(data_dir)
        if files is None:
            raise self.not_found(data_dir)
        return files["train"][0].parent.resolve()

    def read(self, location: Path) -> Arrays:
        files = self.files(str(location))
        if files is None:
            raise self.not_found(str(location))
        out = {}
        for split, (image_path, label_path) in files.items():
            images = _array(image_path, _IMAGES_MAGIC)
            labels = _array(label_path, _LABELS_MAGIC)
            if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.max(initial=0) > 9:
                raise ValueError(f"corrupt Fashion-MNIST files {image_path}, {label_path}")
            out[split] = (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
        return out
