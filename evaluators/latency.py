"""Measured forward latency of an ArchConfig (or any module) on the present device.

Latency is noisy, unlike FLOPs: on a shared machine the same forward pass drifts by tens of percent with other
processes, CPU frequency scaling, thermal state and thread placement, and the first calls pay one-off costs
(allocator growth, kernel selection, lazy initialisation). Hence warm-up calls that are not timed, and the
**median** of the timed calls with their interquartile range: the median ignores the occasional pre-empted
or page-faulting call that would drag a mean, and the IQR says how far to trust it. Compare latencies only
when they were taken on the same machine, with the same threads, close together in time.

    >>> from space import ArchConfig
    >>> r = measure_latency(ArchConfig.baseline("resnet18"), resolution=64, repeats=5)   # doctest: +SKIP
    >>> r.median_ms > 0                                                                 # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from space import ArchConfig, build_model

from .device import resolve_device, synchronize

__all__ = ["LatencyResult", "measure_latency"]


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
    _check_int("resolution", resolution, 1)
    _check_int("batch", batch, 1)
    _check_int("repeats", repeats, 1)
    _check_int("warmup", warmup, 0)
    if threads is not None:
        _check_int("threads", threads, 1)
    dev = resolve_device(device)

    if isinstance(arch, ArchConfig):
        model, restore = build_model(arch, num_classes=num_classes), None
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

    median = statistics.median(times)
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        iqr = q3 - q1
    else:
        iqr = 0.0
    if not (math.isfinite(median) and median > 0):
        raise RuntimeError(f"latency measurement gave a non-positive or non-finite median: {median!r} ms")
    return LatencyResult(median_ms=median, iqr_ms=iqr, repeats=repeats, device=str(dev), batch=int(x.shape[0]))


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
