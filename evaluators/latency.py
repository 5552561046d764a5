"""Measured forward latency of an ArchConfig (or any module) on the present device.

Latency is noisy, unlike FLOPs: on a shared machine the same forward pass drifts by tens of percent with other
processes, CPU frequency scaling, thermal state and thread placement, and the first calls pay one-off costs
(allocator growth, kernel selection, lazy initialisation). Hence warm-up calls that are not timed, and the
**median** of the timed calls with their interquartile range: the median ignores the occasional pre-empted
or page-faulting call that would drag a mean, and the IQR says how far to trust it. Compare such latencies only
when they were taken on the same machine, with the same threads, close together in time.

To **rank** configs, use :func:`latency_ratio`: each config's latency as a ratio to its plain backbone, the two
timed in alternating rounds in the same process, so that a drift (another process starting, the clock slowing)
weighs on both alike and cancels in the ratio; cached per config, input size, batch, device and threads
(:mod:`evaluators.latency_cache`). :func:`measure_latency` is the absolute median, for reporting.

    >>> from space import ArchConfig
    >>> r = measure_latency(ArchConfig.baseline("resnet18"), resolution=64, repeats=5)   # doctest: +SKIP
    >>> r.median_ms > 0                                                                 # doctest: +SKIP
    True
    >>> q = latency_ratio(ArchConfig.paper_default("resnet18"), resolution=64)           # doctest: +SKIP
    >>> q.ratio > 1, q.latency_ms == q.ratio * q.reference_ms                           # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from space import ArchConfig
from space.build import build_deployed

from .device import resolve_device, synchronize
from .latency_cache import LatencyCache, default_cache

__all__ = ["LatencyRatio", "LatencyResult", "interleaved_times", "latency_ratio", "measure_latency", "ratio_stats"]


@dataclass(frozen=True)
class LatencyResult:
    """Forward latency of one configuration: median and interquartile range over ``repeats`` timed calls."""

    median_ms: float
    iqr_ms: float
    repeats: int
    device: str
    batch: int


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_settings(resolution: int, batch: int, repeats: int, warmup: int, threads: int | None) -> None:
    _check_int("resolution", resolution, 1)
    _check_int("batch", batch, 1)
    _check_int("repeats", repeats, 1)
    _check_int("warmup", warmup, 0)
    if threads is not None:
        _check_int("threads", threads, 1)


def measure_latency(
    arch: ArchConfig | nn.Module,
    resolution: int = 224,
    batch: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 20,
    warmup: int = 5,
    threads: int | None = None,
    *,
    inputs: torch.Tensor | None = None,
    num_classes: int = 1000,
) -> LatencyResult:
    """Median wall-clock time of one forward pass (``torch.inference_mode``, eval mode).

    Args:
        arch: an ``ArchConfig`` (built fresh, on ``device``) or a module. A module is moved to ``device`` and put
            in eval mode for the measurement; its training flag and device are restored afterwards.
        resolution, batch: input ``(batch, 3, resolution, resolution)``, unless ``inputs`` is given.
        device: ``"cpu" | "cuda" | "cuda:N" | "mps" | "auto"`` (see ``resolve_device``); GPU work is synchronised
            around every call so that the time is the kernels', not the launch's.
        repeats, warmup: timed calls, and untimed calls before them.
        threads: intra-op CPU threads for the measurement (``torch.set_num_threads``, restored afterwards);
            ``None`` keeps the current setting.
        inputs: explicit input tensor (e.g. ``(B, C, H, W)`` for a lone attention module); its first dimension
            is reported as ``batch``.
        num_classes: classifier width when ``arch`` is an ``ArchConfig``.
    """
    _check_settings(resolution, batch, repeats, warmup, threads)
    dev = resolve_device(device)

    if isinstance(arch, ArchConfig):
        model, restore = build_deployed(arch, resolution, num_classes), None
    elif isinstance(arch, nn.Module):
        model = arch
        first = next(iter(model.parameters()), None)
        restore = (model.training, first.device if first is not None else None)
    else:
        raise TypeError(f"measure_latency() takes an ArchConfig or an nn.Module, got {type(arch).__name__}")
    x = inputs if inputs is not None else torch.randn(batch, 3, resolution, resolution)
    x = x.to(dev)

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model.to(dev).eval()
        times = _time_forward(model, x, dev, repeats, warmup)
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
        if restore is not None:
            training, original = restore
            model.train(training)
            if original is not None:
                model.to(original)

    median, iqr = _median_iqr(times)
    return LatencyResult(median_ms=median, iqr_ms=iqr, repeats=repeats, device=str(dev), batch=int(x.shape[0]))


def _median_iqr(values: Sequence[float]) -> tuple[float, float]:
    median = statistics.median(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    if not (math.isfinite(median) and median > 0):
        raise RuntimeError(f"latency measurement gave a non-positive or non-finite median: {median!r}")
    return median, iqr


def _time_forward(model: nn.Module, x: torch.Tensor, dev: torch.device, repeats: int, warmup: int) -> list[float]:
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        synchronize(dev)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            synchronize(dev)
            times.append((time.perf_counter() - start) * 1e3)
    return times


# ----------------------------------------------------------------------------------------------------------
# Latency relative to the plain backbone, for ranking.


@dataclass(frozen=True)
class LatencyRatio:
    """Latency of one config relative to its plain backbone, the two measured interleaved in one process.

    Attributes:
        ratio: median over the rounds of ``config time / plain time`` (each round times both back to back);
            exactly 1 for the plain backbone itself.
        ratio_iqr: interquartile range of the per-round ratios.
        plain_ms, config_ms: median forward times of this measurement (drift included: compare ratios, not these).
        reference_ms: the plain backbone's median as first measured under this cache key's settings; every config
            measured with the same cache shares it, so ``latency_ms`` ranks exactly as ``ratio`` does.
        repeats, device, batch, threads: how it was measured.
    """

    ratio: float
    ratio_iqr: float
    plain_ms: float
    config_ms: float
    reference_ms: float
    repeats: int
    device: str
    batch: int
    threads: int

    @property
    def latency_ms(self) -> float:
        """The ratio in milliseconds of the shared reference: a latency the search can rank."""
        return self.ratio * self.reference_ms

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LatencyRatio:
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def interleaved_times(
    plain: Callable[[], object],
    config: Callable[[], object],
    repeats: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """Milliseconds per call of ``plain()`` and ``config()`` over ``repeats`` rounds.

    Every round times both, back to back; the order alternates (plain first in even rounds, config first in odd
    ones), so that a steady drift, which favours whichever runs first, favours each equally often. ``sync`` runs
    after every call (a GPU's queue must be drained for the time to be the kernels'). ``clock`` is a seam for tests.
    """
    calls = (plain, config)
    for _ in range(warmup):
        plain()
        config()
    sync()
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = clock()
            calls[i]()
            sync()
            times[i].append((clock() - start) * 1e3)
    return times


def ratio_stats(plain_ms: Sequence[float], config_ms: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range of the per-round ratios ``config / plain``.

    Per round rather than a ratio of medians: the two times of a round were taken a few milliseconds apart, under
    the same load, so their ratio is free of whatever drifted between rounds.
    """
    if len(plain_ms) != len(config_ms) or not plain_ms:
        raise ValueError(f"need equally many rounds of both, got {len(plain_ms)} and {len(config_ms)}")
    return _median_iqr([c / p for p, c in zip(plain_ms, config_ms)])


def latency_ratio(
    arch: ArchConfig,
    resolution: int = 224,
    batch: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    *,
    num_classes: int = 1000,
    cache: LatencyCache | None = None,
    use_cache: bool = True,
) -> LatencyRatio:
    """``arch``'s forward latency as a ratio to ``ArchConfig.baseline(arch.backbone)``, measured interleaved.

    Both models are built fresh and timed in ``repeats`` alternating rounds (:func:`interleaved_times`) on the
    same input, in eval mode under ``torch.inference_mode``, after ``warmup`` untimed rounds. The result is
    cached (``cache``, default :func:`~evaluators.latency_cache.default_cache`) under the config's JSON, the
    resolution, batch, device, threads and classifier width; ``use_cache=False`` measures anew and stores
    nothing (for measuring the measurement, as ``bench/latency_repeat.py`` does).

    Args:
        arch: the config; its backbone gives the plain reference.
        resolution, batch: input ``(batch, 3, resolution, resolution)``.
        device: ``"cpu" | "cuda" | "cuda:N" | "mps" | "auto"``; GPU work is synchronised after every call.
        repeats, warmup: timed and untimed rounds (each round is one call of each model).
        threads: intra-op CPU threads (restored afterwards); ``None`` keeps the current setting. Part of the key.
        num_classes: classifier width of both models.
    """
    if not isinstance(arch, ArchConfig):
        raise TypeError(f"latency_ratio() takes an ArchConfig, got {type(arch).__name__}")
    _check_settings(resolution, batch, repeats, warmup, threads)
    dev = resolve_device(device)
    n_threads = threads if threads is not None else torch.get_num_threads()
    cache = default_cache() if cache is None else cache
    plain_arch = ArchConfig.baseline(arch.backbone)
    key_args = (resolution, batch, dev, n_threads, num_classes)
    key = cache.key(arch.to_dict(), *key_args)
    plain_key = cache.key(plain_arch.to_dict(), *key_args)
    if use_cache and (hit := cache.get(key)) is not None:
        return LatencyRatio.from_dict(hit)

    plain_times, config_times = _measure_pair(plain_arch, arch, resolution, batch, dev, repeats, warmup, threads,
                                              num_classes)
    ratio, ratio_iqr = ratio_stats(plain_times, config_times)
    plain_ms = statistics.median(plain_times)
    reference = cache.get(plain_key) if use_cache else None
    reference_ms = reference["reference_ms"] if reference else plain_ms
    result = LatencyRatio(ratio=ratio, ratio_iqr=ratio_iqr, plain_ms=plain_ms,
                          config_ms=statistics.median(config_times), reference_ms=reference_ms, repeats=repeats,
                          device=str(dev), batch=batch, threads=n_threads)
    if use_cache:
        if reference is None:  # the first measurement under these settings fixes the scale of latency_ms
            cache.put(plain_key, LatencyRatio(1.0, 0.0, plain_ms, plain_ms, plain_ms, repeats, str(dev), batch,
                                              n_threads).to_dict())
        cache.put(key, result.to_dict())
    return result


def _measure_pair(plain_arch: ArchConfig, arch: ArchConfig, resolution: int, batch: int, dev: torch.device,
                  repeats: int, warmup: int, threads: int | None, num_classes: int) -> tuple[list[float], list[float]]:
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(dev)
        plain = build_deployed(plain_arch, resolution, num_classes).to(dev).eval()
        same = arch == plain_arch
        model = plain if same else build_deployed(arch, resolution, num_classes).to(dev).eval()
        with torch.inference_mode():
            if same:  # the plain backbone against itself: ratio 1 by definition, its time is all there is to take
                times = _time_forward(plain, x, dev, repeats, warmup)
                return times, times
            return interleaved_times(lambda: plain(x), lambda: model(x), repeats, warmup, lambda: synchronize(dev))
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
