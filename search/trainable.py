"""What one Ray trial runs: cost the config, train the proxy, report after every epoch.

Every result carries the objectives (accuracy so far; GFLOPs, parameters and latency, known before training and
the same in every result, so the scheduler can rank at any rung), the progress (``epoch`` of ``epochs``) and the
search's own trial id (``trial_key``).

A trial that raises — :class:`~evaluators.proxy.TrainingDiverged` on a NaN loss, an out-of-memory error, anything
else — fails in Ray, which retries it up to ``--retries`` times (``FailureConfig(max_failures=...)``) and
otherwise records it ``failed`` with the reason; the search goes on. Training is deterministic per seed, so a
retry uses the next seed (``seed + attempt``; the driver sets ``attempt`` in the trial's config when Ray requeues
it): the same seed would only diverge again.
"""

from __future__ import annotations

import ctypes
import gc
import os
import traceback
from typing import Any

from .settings import TrialSettings

__all__ = ["FAULT_ENV", "TrialError", "release_freed_memory", "train_trial"]

# Fault injection, for testing the failure and retry paths end to end with real trials: a comma-separated list of
# search trial ids (``t0003``) that fail at their first epoch, on every attempt, or only on attempt k with
# ``t0003@k``; a suffix picks the fault: ``:diverge`` (the default: TrainingDiverged, as on a NaN loss), ``:kill``
# (the worker process dies by SIGKILL, as when the kernel's OOM killer or a lost node takes it) or ``:oom`` (a real
# allocation larger than any machine's memory, so the allocator's own out-of-memory error is raised). Unset in
# normal use.
FAULT_ENV = "SCSA_SEARCH_INJECT_FAULT"
FAULT_KINDS = ("diverge", "kill", "oom")


def _inject_fault(trial_key: str, attempt: int) -> str | None:
    """The fault kind to inject into this trial's attempt, or None."""
    for item in filter(None, (t.strip() for t in os.environ.get(FAULT_ENV, "").split(","))):
        spec, _, kind = item.partition(":")
        name, _, only = spec.partition("@")
        kind = kind or "diverge"
        if kind not in FAULT_KINDS:
            raise ValueError(f"{FAULT_ENV}: unknown fault kind {kind!r} in {item!r}; choose from {FAULT_KINDS}")
        if name == trial_key and (not only or int(only) == attempt):
            return kind
    return None


def _raise_fault(kind: str, epoch: int) -> None:
    import torch

    from evaluators.proxy import TrainingDiverged

    if kind == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "oom":
        torch.empty(2**62, dtype=torch.uint8)  # 4 EiB: the allocator refuses it at once, nothing is touched
    raise TrainingDiverged(f"injected by {FAULT_ENV} at epoch {epoch}", epoch=epoch, step=None, loss=float("nan"))


class TrialError(RuntimeError):
    """Why a trial failed, as ``"<exception type>: <message>"``.

    Ray pickles a trial's exception to the driver; an exception class whose constructor takes keyword-only
    arguments (``TrainingDiverged``) cannot be unpickled there, and the reason would arrive as a ``TypeError``
    about the constructor. One positional string always survives the trip.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


def train_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """Ray Tune function trainable. ``config``: what the searcher suggested (``arch``, ``trial_key``, ``number``,
    ``reference``; ``replicate`` and ``phase``; ``attempt``, set by the driver on a retry); ``settings``: the
    search's fixed settings for trials (the fidelities, data, seed, device, threads, cost objectives)."""
    try:
        _train(config, settings)
    except Exception as e:
        if isinstance(e, TrialError) or type(e).__module__.startswith("ray."):
            raise  # Ray's own errors keep their type: Ray acts on some of them
        # The full traceback goes to the worker's log; the exception that travels is the one-line reason, without
        # the original chained to it (Ray copies the whole chain, which is what fails for such exceptions).
        traceback.print_exc()
        reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
        if _is_out_of_memory(e):
            reason = f"out of memory: {reason}"
        raise TrialError(reason) from None
    finally:
        release_freed_memory()


def release_freed_memory() -> bool:
    """Hand the memory a finished trial freed back to the operating system; True where the C library can.

    Ray runs each trial of a reused worker (``reuse_actors=True``) in a new thread. glibc serves each thread from
    its own malloc arena and keeps what is freed there for later reuse instead of returning it, so a worker that
    trains one model after another grows by 60-200 MB per trial (measured: two workers reached 12 GB and 9 GB
    after 90 resnet50 trials each, and Ray's memory monitor killed one). ``malloc_trim(0)`` after each trial keeps
    a worker flat (resnet18 smoke trials: 1.00 GB after 12 trials instead of 2.06 GB after 8). Other C libraries
    have no such call and nothing to do.
    """
    gc.collect()  # tensors held only by reference cycles (tracebacks, closures) are freed before trimming
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the process's own symbols, the C library's among them
    except OSError:
        return None


# What the allocators say when they refuse: CUDA raises torch.OutOfMemoryError, the CPU allocator a plain
# RuntimeError whose message is the only sign.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def _is_out_of_memory(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _OOM_MESSAGES)


def _train(config: dict[str, Any], settings: TrialSettings) -> None:
    import torch
    from ray import tune

    from evaluators.device import resolve_device
    from evaluators.flops import measure
    from evaluators.proxy import Fidelity, train_proxy
    from evaluators.scores import SCORES
    from results.schema import PHASE, VERIFY
    from space import ArchConfig

    from .finalists import run_seed

    threads = int(settings.threads or 1)
    torch.set_num_threads(threads)
    arch = ArchConfig.from_dict(config["arch"]).validate()
    device = resolve_device(settings.device)
    cost = measure(arch, resolution=settings.resolution)
    costs: dict[str, Any] = {"gflops": cost.gflops, "params": int(cost.params)}
    if "latency_ms" in settings.objectives:
        # interleaved with the plain backbone and scaled by its cached time: a ratio that ranks configs run to run,
        # cached per config in the search's shared cache (one scale for every trial; a replicate reuses it)
        from evaluators.latency import latency_ratio
        from evaluators.latency_cache import cache_at

        costs["latency_ms"] = latency_ratio(arch, resolution=settings.resolution, device=device, threads=threads,
                                            cache=cache_at(settings.latency_cache)).latency_ms
    attempt = int(config.get("attempt", 0))
    phase = config.get(PHASE, "")
    seed = run_seed(int(settings.seed), int(config.get("replicate", 0)), attempt, phase)
    # a verification run trains at --verify's fidelity; every other run at the proxy's
    recipe = settings.verify_fidelity if phase == VERIFY and settings.verify_fidelity else settings.fidelity
    fid = Fidelity(**{**recipe, "threads": threads})
    fault = _inject_fault(config["trial_key"], attempt)
    for ep in train_proxy(arch, settings.dataset, settings.data_dir, fid, seed, device):
        if fault:
            _raise_fault(fault, ep.epoch)
        tune.report({
            **{score: getattr(ep, score) for score in SCORES},  # accuracy, val_loss, loss, tse, tse_ema
            **costs,
            "epoch": ep.epoch,
            "epochs": ep.epochs,
            "images_seen": ep.images_seen,
            "train_time_s": ep.time_s,
            "trial_key": config["trial_key"],
            "reference": config.get("reference", ""),
            "seed": seed,
            "attempt": attempt,
        })
