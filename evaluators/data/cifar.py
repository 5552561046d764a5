"""CIFAR-10 and CIFAR-100 through torchvision, in its layout (``cifar-10-batches-py``, ``cifar-100-python``) under
``data_dir``, else under :func:`~.source.default_data_dir`. Downloaded only with ``download=True``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .holdout import split_sizes
from .source import Arrays, ArraySource, DataInfo, DatasetNotFoundError, default_data_dir, fetch, register

__all__ = ["CIFAR10", "CIFAR100"]


class _CIFAR(ArraySource):
    folder = ""
    files: tuple[str, ...] = ()
    num_classes = 0
    sizes = (50000, 10000)  # train, test

    def _dataset(self):
        from torchvision.datasets import CIFAR10 as Ten
        from torchvision.datasets import CIFAR100 as Hundred

        return Ten if self.name == "cifar10" else Hundred

    def root(self, data_dir: str | None) -> Path:
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        return root.parent if root.name == self.folder else root  # accept the extracted folder itself

    def missing(self, root: Path) -> list[str]:
        return [f for f in self.files if not (root / self.folder / f).is_file()]

    def not_found(self, root: Path, detail: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(f"{self.name} not found in {root / self.folder} ({detail}): pass --data-dir DIR "
                                    f"holding {self.folder}/, or add --download")

    def check(self, data_dir: str | None, download: bool, val_fraction: float) -> DataInfo:
        root = self.root(data_dir)
        missing = self.missing(root)
        if missing and download:
            fetch(self.name, root, lambda: self._dataset()(str(root), train=False, download=True),
                  f"pass --data-dir DIR holding {self.folder}/")
            missing = self.missing(root)
        if missing:
            raise self.not_found(root, f"missing {', '.join(missing)}")
        n_train, n_val = split_sizes(self.sizes[0], val_fraction)
        return DataInfo(self.name, self.num_classes, self.mean, self.std, 32,
                        {"train": n_train, "val": n_val, "test": self.sizes[1]})

    def location(self, data_dir: str | None) -> Path:
        return self.root(data_dir).resolve()

    def read(self, location: Path) -> Arrays:
        missing = self.missing(location)
        if missing:
            raise self.not_found(location, f"missing {', '.join(missing)}")
        out = {}
        for split in ("train", "test"):
            try:
                ds = self._dataset()(str(location), train=split == "train", download=False)
            except RuntimeError as exc:  # torchvision's md5 check
                raise self.not_found(location, "files corrupted") from exc
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            out[split] = (images, torch.as_tensor(ds.targets, dtype=torch.int64))
        return out


@register
class CIFAR10(_CIFAR):
    name = "cifar10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    folder = "cifar-10-batches-py"
    files = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
             "batches.meta")
    num_classes = 10


@register
class CIFAR100(_CIFAR):
    name = "cifar100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
    files = ("train", "test", "meta")
    num_classes = 100
