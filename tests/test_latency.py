"""Latency measurement and device selection (values are not asserted: latency is noisy by nature)."""

from __future__ import annotations

import math

import pytest
import torch

from evaluators.device import resolve_device
from evaluators.latency import LatencyResult, measure_latency
from space import ArchConfig
from space.scsa import SCSA


def test_latency_resnet18_tiny():
    r = measure_latency(ArchConfig.baseline("resnet18"), resolution=64, repeats=5, warmup=1, threads=1)
    assert isinstance(r, LatencyResult)
    assert math.isfinite(r.median_ms) and r.median_ms > 0
    assert math.isfinite(r.iqr_ms) and r.iqr_ms >= 0
    assert (r.repeats, r.device, r.batch) == (5, "cpu", 1)


def test_latency_module_restores_state():
    threads = torch.get_num_threads()
    module = SCSA(32).train()
    r = measure_latency(module, inputs=torch.randn(2, 32, 14, 14), repeats=3, warmup=0, threads=1)
    assert r.median_ms > 0 and r.batch == 2 and r.iqr_ms >= 0
    assert module.training  # training flag restored
    assert torch.get_num_threads() == threads


def test_latency_single_repeat():
    r = measure_latency(SCSA(16), inputs=torch.randn(1, 16, 8, 8), repeats=1, warmup=0)
    assert r.repeats == 1 and r.iqr_ms == 0.0 and r.median_ms > 0


@pytest.mark.parametrize("kwargs", [dict(repeats=0), dict(warmup=-1), dict(batch=0), dict(threads=0)])
def test_latency_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        measure_latency(SCSA(16), inputs=torch.randn(1, 16, 8, 8), **kwargs)


def test_latency_bad_arch():
    with pytest.raises(TypeError):
        measure_latency("resnet18")  # type: ignore[arg-type]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "", "gpu"])
def test_resolve_device_unknown(name):
    with pytest.raises(ValueError, match="choose one of"):
        resolve_device(name)


def test_resolve_device_unavailable():
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last visible device, or CUDA absent
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device(missing)
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS"):
            resolve_device("mps")
