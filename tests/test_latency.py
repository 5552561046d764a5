"""Latency measurement, the interleaved ratio and its cache, device selection (measured values are not asserted:
latency is noisy by nature; the ratio's logic is checked on a fake clock)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

from evaluators import latency
from evaluators.device import resolve_device
from evaluators.latency import LatencyResult, interleaved_times, latency_ratio, measure_latency, ratio_stats
from evaluators.latency_cache import LatencyCache, cache_at
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


# --- latency as a ratio to the plain backbone, interleaved, cached -------------------------------------------


class FakeMachine:
    """A clock that calls advance: each call costs its nominal time times the machine's slowdown at that moment."""

    def __init__(self, slowdown) -> None:
        self.now = 0.0
        self.slowdown = slowdown
        self.calls: list[str] = []

    def clock(self) -> float:
        return self.now

    def call(self, name: str, cost: float):
        def run() -> None:
            self.calls.append(name)
            self.now += cost * self.slowdown(self.now)

        return run


def test_interleaved_rounds_alternate_the_order():
    m = FakeMachine(lambda t: 1.0)
    plain, config = interleaved_times(m.call("p", 1.0), m.call("c", 2.0), repeats=4, warmup=2, clock=m.clock)
    assert m.calls == ["p", "c"] * 2 + ["p", "c", "c", "p", "p", "c", "c", "p"]
    assert plain == [1e3] * 4 and config == [2e3] * 4


def _sequential_times(m: FakeMachine, plain, config, repeats: int) -> tuple[list[float], list[float]]:
    """What timing all plain calls first and then all config calls would see."""
    times: tuple[list[float], list[float]] = ([], [])
    for i, call in enumerate((plain, config)):
        for _ in range(repeats):
            start = m.clock()
            call()
            times[i].append((m.clock() - start) * 1e3)
    return times


def test_a_drift_cancels_in_the_interleaved_ratio():
    # The machine gets 3x slower part of the way through (another process starts).
    def slowdown(t: float) -> float:
        return 3.0 if t > 16.0 else 1.0

    m = FakeMachine(slowdown)
    plain, config = interleaved_times(m.call("p", 1.0), m.call("c", 1.25), repeats=15, warmup=0, clock=m.clock)
    assert ratio_stats(plain, config)[0] == pytest.approx(1.25, rel=1e-12)
    m = FakeMachine(slowdown)
    plain, config = _sequential_times(m, m.call("p", 1.0), m.call("c", 1.25), repeats=15)
    assert statistics.median(config) / statistics.median(plain) == pytest.approx(3.75)  # the whole step on one side
    # A steady drift favours whichever runs first in a round; alternating the order makes it cancel.
    m = FakeMachine(lambda t: 1.0 + t / 20.0)
    plain, config = interleaved_times(m.call("p", 1.0), m.call("c", 1.25), repeats=20, warmup=0, clock=m.clock)
    ratio, iqr = ratio_stats(plain, config)
    assert ratio == pytest.approx(1.25, rel=0.01) and iqr > 0
    m = FakeMachine(lambda t: 1.0 + t / 20.0)
    plain, config = _sequential_times(m, m.call("p", 1.0), m.call("c", 1.25), repeats=20)
    assert statistics.median(config) / statistics.median(plain) > 2


def test_ratio_stats():
    assert ratio_stats([2.0, 4.0, 1.0], [3.0, 6.0, 1.5]) == (1.5, 0.0)
    assert ratio_stats([1.0], [2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="equally many"):
        ratio_stats([1.0, 1.0], [1.0])


@pytest.fixture
def fake_pair(monkeypatch):
    """``latency_ratio`` without building models: each measurement returns preset times and is counted."""
    measured: list[str] = []

    def fake(plain_arch, arch, resolution, batch, dev, repeats, warmup, threads, num_classes):
        measured.append(arch.describe())
        scale = 1.0 + 0.1 * len(measured)  # later measurements see a slower machine
        config = 1.0 if arch == plain_arch else 1.5
        return [10.0 * scale] * repeats, [10.0 * scale * config] * repeats

    monkeypatch.setattr(latency, "_measure_pair", fake)
    return measured


def test_latency_ratio_is_cached_per_config_and_settings(fake_pair):
    cache = LatencyCache()
    paper = ArchConfig.paper_default("resnet18")
    first = latency_ratio(paper, resolution=32, threads=1, cache=cache)
    assert first.ratio == 1.5 and first.plain_ms == pytest.approx(11.0) and first.latency_ms == pytest.approx(16.5)
    assert latency_ratio(paper, resolution=32, threads=1, cache=cache) == first
    assert len(fake_pair) == 1
    # the plain backbone's entry came with it: ratio 1, and the scale every later config shares
    plain = latency_ratio(ArchConfig.baseline("resnet18"), resolution=32, threads=1, cache=cache)
    assert plain.ratio == 1.0 and plain.latency_ms == pytest.approx(11.0) and len(fake_pair) == 1
    other = latency_ratio(ArchConfig("resnet18", paper.stages[:3] + (ArchConfig.baseline("resnet18").stages[3],)),
                          resolution=32, threads=1, cache=cache)
    assert other.plain_ms == pytest.approx(12.0)  # measured on the slower machine ...
    assert other.reference_ms == first.reference_ms  # ... but reported on the same scale
    # any other setting is another measurement
    latency_ratio(paper, resolution=64, threads=1, cache=cache)
    latency_ratio(paper, resolution=32, threads=2, cache=cache)
    latency_ratio(paper, resolution=32, batch=2, threads=1, cache=cache)
    assert len(fake_pair) == 5


def test_latency_ratio_without_cache_measures_anew(fake_pair):
    cache = LatencyCache()
    paper = ArchConfig.paper_default("resnet18")
    a = latency_ratio(paper, resolution=32, threads=1, cache=cache, use_cache=False)
    b = latency_ratio(paper, resolution=32, threads=1, cache=cache, use_cache=False)
    assert len(fake_pair) == 2 and len(cache) == 0
    assert a.ratio == b.ratio == 1.5 and a.reference_ms != b.reference_ms


def test_latency_cache_on_disk(tmp_path, fake_pair):
    paper = ArchConfig.paper_default("resnet18")
    first = latency_ratio(paper, resolution=32, threads=1, cache=LatencyCache(tmp_path))
    assert len(list(tmp_path.glob("*.json"))) == 2  # the config and its plain backbone
    again = latency_ratio(paper, resolution=32, threads=1, cache=LatencyCache(tmp_path))  # another process
    assert again == first and len(fake_pair) == 1
    for f in tmp_path.glob("*.json"):
        f.write_text("{half a fil")  # a writer that crashed: measured again, not an error
    latency_ratio(paper, resolution=32, threads=1, cache=LatencyCache(tmp_path))
    assert len(fake_pair) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_search_shares_one_latency_scale_between_driver_and_trials(tmp_path, fake_pair, monkeypatch):
    from search.settings import SearchSettings

    monkeypatch.delenv("SCSA_LATENCY_CACHE", raising=False)
    trial = SearchSettings(backbone="resnet18", budget=4, out=str(tmp_path / "run"),
                           objectives=["accuracy", "latency_ms"]).for_trials()
    assert trial.latency_cache == str((tmp_path / "run" / "latency_cache").resolve())
    assert SearchSettings(backbone="resnet18", budget=4, out=str(tmp_path)).for_trials().latency_cache is None
    # the driver measures the plain backbone before the trials (the cost spread line) ...
    driver = latency_ratio(ArchConfig.baseline("resnet18"), resolution=32, threads=1,
                           cache=cache_at(trial.latency_cache))
    assert cache_at(Path(trial.latency_cache)) is cache_at(trial.latency_cache)
    # ... and a trial worker (another process: another cache over the same directory) on a busier machine
    # reports its ratio on the driver's scale; its replicate reuses the measurement
    worker = LatencyCache(trial.latency_cache)
    paper = latency_ratio(ArchConfig.paper_default("resnet18"), resolution=32, threads=1, cache=worker)
    assert paper.plain_ms > driver.plain_ms and paper.reference_ms == driver.plain_ms
    assert paper.latency_ms == pytest.approx(1.5 * driver.plain_ms)
    again = latency_ratio(ArchConfig.paper_default("resnet18"), resolution=32, threads=1,
                          cache=LatencyCache(trial.latency_cache))
    assert again == paper and len(fake_pair) == 2


def test_latency_cache_key():
    config = ArchConfig.baseline("resnet18").to_dict()
    key = LatencyCache.key(config, 224, 1, "cpu", 1)
    assert key == LatencyCache.key(dict(reversed(list(config.items()))), 224, 1, torch.device("cpu"), 1)
    others = [LatencyCache.key(config, 128, 1, "cpu", 1), LatencyCache.key(config, 224, 2, "cpu", 1),
              LatencyCache.key(config, 224, 1, "cpu", 2), LatencyCache.key(config, 224, 1, "cpu", 1, num_classes=10),
              LatencyCache.key(ArchConfig.paper_default("resnet18").to_dict(), 224, 1, "cpu", 1)]
    assert len({key, *others}) == 6


def test_latency_ratio_measures_real_models():
    threads = torch.get_num_threads()
    cache = LatencyCache()
    r = latency_ratio(ArchConfig.paper_default("resnet18"), resolution=32, repeats=3, warmup=1, threads=1,
                      cache=cache)
    assert math.isfinite(r.ratio) and r.ratio > 0 and r.ratio_iqr >= 0 and r.plain_ms > 0 and r.config_ms > 0
    assert (r.repeats, r.device, r.batch, r.threads) == (3, "cpu", 1, 1)
    assert torch.get_num_threads() == threads
    plain = latency_ratio(ArchConfig.baseline("resnet18"), resolution=32, repeats=3, warmup=1, threads=1,
                          cache=cache, use_cache=False)
    assert plain.ratio == 1.0 and plain.ratio_iqr == 0.0


@pytest.mark.parametrize("kwargs", [dict(repeats=0), dict(warmup=-1), dict(batch=0), dict(threads=0)])
def test_latency_ratio_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        latency_ratio(ArchConfig.baseline("resnet18"), **kwargs)
    with pytest.raises(TypeError):
        latency_ratio(SCSA(16))  # type: ignore[arg-type]
