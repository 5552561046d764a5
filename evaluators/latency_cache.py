"""A small cache of latency measurements, keyed by what makes them comparable.

A latency is only comparable with others taken on the same device with the same threads, at the same input size
and batch; the key holds exactly those and the config's JSON. Entries live in memory and, when the cache has a
directory, also on disk (one small JSON file per entry, written atomically), so trial workers of one search, and
a resumed search, share them. Set ``SCSA_LATENCY_CACHE=DIR`` to give the default cache a directory.

    >>> cache = LatencyCache()                      # in memory only
    >>> key = cache.key({"backbone": "resnet18", "stages": []}, 224, 1, "cpu", 1)
    >>> cache.get(key) is None
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["LatencyCache", "cache_at", "default_cache", "device_label"]

ENV_DIR = "SCSA_LATENCY_CACHE"


def device_label(device: str | torch.device) -> str:
    """What the device *is*, not just its name: ``cuda:0`` on one machine is not ``cuda:0`` on another."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}@{platform.node()}"
    return f"{dev.type}:{platform.machine()}@{platform.node()}"


class LatencyCache:
    """Measurements by key: in memory, and in ``directory`` (if given) as ``<key>.json``."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self._memory: dict[str, dict[str, Any]] = {}

    @staticmethod
    def key(config: Mapping[str, Any], resolution: int, batch: int, device: str | torch.device, threads: int,
            num_classes: int = 1000) -> str:
        """A hex digest of the canonical JSON of everything a latency depends on."""
        fields = {"config": config, "resolution": resolution, "batch": batch, "device": str(torch.device(device)),
                  "device_label": device_label(device), "threads": threads, "num_classes": num_classes}
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return dict(self._memory[key])
        if self.directory is None:
            return None
        try:
            entry = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or half-written by a crashed writer: measure again
            return None
        if not isinstance(entry, dict):
            return None
        self._memory[key] = entry
        return dict(entry)

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        self._memory[key] = dict(entry)
        if self.directory is None:
            return
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(dict(entry), f, sort_keys=True)
            os.replace(tmp, self.directory / f"{key}.json")  # atomic: readers see the old file or the new one
        except OSError:
            # A cache that cannot be written must not fail a trial: the entry stays in memory.
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        self._memory.clear()

    def __len__(self) -> int:
        return len(self._memory)


_DEFAULT: LatencyCache | None = None


def default_cache() -> LatencyCache:
    """The process-wide cache; on disk under ``$SCSA_LATENCY_CACHE`` when that is set at first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LatencyCache(os.environ.get(ENV_DIR) or None)
    return _DEFAULT


_AT: dict[str, LatencyCache] = {}


def cache_at(directory: str | os.PathLike[str] | None) -> LatencyCache:
    """The process-wide cache on disk under ``directory`` (the default cache for ``None``).

    A search gives its driver and every trial worker the same directory: the first measurement of the plain
    backbone (the driver's, before the trials) then fixes the scale of ``latency_ms`` for every trial, and a config
    measured once keeps its latency in every replicate, instead of each worker scaling ratios by its own first,
    load-dependent, measurement of the plain backbone.
    """
    if directory is None:
        return default_cache()
    key = str(Path(directory).expanduser().resolve())
    if key not in _AT:
        _AT[key] = LatencyCache(key)
    return _AT[key]
