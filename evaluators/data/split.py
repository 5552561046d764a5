"""One split of a dataset, batched on tensors: uint8 images in memory (or image files decoded lazily) and labels.

Resizing, augmentation (random crop with zero padding + horizontal flip) and normalisation run batch-wise on
tensors, never per sample with PIL: what a proxy trainer on a couple of CPU cores needs, and nothing more.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGE_CACHE_BYTES", "Split", "crop_flip", "decode_image"]

IMAGE_CACHE_BYTES = 512 * 2**20  # decoded ImageFolder images kept in memory per split when they fit


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
        decode = functools.partial(decode_image, resolution=resolution)
        arrays = list(pool.map(decode, paths)) if pool is not None and len(paths) > 1 else [decode(p) for p in paths]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def decode_image(path: str, resolution: int) -> np.ndarray:
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
                    x = crop_flip(x, pad=max(1, (resolution + 4) // 8), generator=generator)
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


def crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
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
