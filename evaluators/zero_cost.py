"""Training-free scores for pre-screening configs: SynFlow, NASWOT, and the parameter count (and GFLOPs).

Zero-cost proxies score an untrained network in one or two forward passes. They are cheap but weak predictors
(on NAS benchmarks they rarely beat the parameter count or the FLOPs by much), so the parameter count, and the
GFLOPs when :mod:`evaluators.flops` is available, are always reported next to them as the baselines to beat::

    >>> from space.config import ArchConfig
    >>> scores = zero_cost_scores(ArchConfig.paper_default("resnet18"))  # doctest: +SKIP
    >>> sorted(scores)                                                      # doctest: +SKIP
    ['gflops', 'naswot', 'params', 'synflow']

* **SynFlow** (Tanaka et al. 2020; as a NAS proxy: Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
  ICLR 2021): all parameters replaced by their absolute values, an all-ones input, ``R = sum(f(1))``; the score is
  ``sum |theta * dR/dtheta|``. Returned as ``log10`` because the raw value spans hundreds of orders of magnitude
  across depths; the ranking is the same.
* **NASWOT** (Mellor et al., "Neural Architecture Search without Training", ICML 2021): the binary activation
  codes of a minibatch at every rectifier-like activation, ``K[i, j] = #units where inputs i and j agree``; the
  score is ``log |det K|``. Higher means the untrained network already separates the inputs.

Both work on a copy or restore what they change, so the model passed in is left exactly as it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from evaluators.data import DEFAULT_DATASET
from space.build import build_model
from space.config import ArchConfig

__all__ = ["ACTIVATIONS", "naswot", "synflow", "unzero_residual_branches", "zero_cost_scores"]

# Activations whose output is positive exactly where their input is (so the output's sign is the ReLU code):
# matched by class name, so that timm's own activation classes (timm.layers.activations) count as well.
ACTIVATIONS = frozenset(
    {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "SiLU", "Swish", "GELU", "GELUTanh", "Hardswish", "HardSwish",
     "Mish", "ELU", "CELU", "SELU"}
)
# The norms with running statistics, by their public classes (torch's common base, _NormBase, is private).
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d)


def synflow(model: nn.Module, input_shape: Sequence[int] = (1, 3, 64, 64)) -> float:
    """``log10`` of the SynFlow score of ``model`` for inputs of ``input_shape`` ((C, H, W) or (B, C, H, W)).

    Works on a float64 copy (the product of absolute weights overflows float32 in deep networks) whose
    normalisation layers are in eval mode with fresh statistics (mean 0, variance 1), i.e. plain per-channel
    affines: the data-free equivalent of the original's "no BatchNorm" copy, and what batch-1 all-ones inputs need.
    The model itself is not touched. ``-inf`` when the score is 0 (e.g. a layer with all-zero weights).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W), got {tuple(input_shape)}")
    device = next(model.parameters()).device
    net = copy.deepcopy(model).double().eval()
    for m in net.modules():
        if isinstance(m, _NORMS) and m.track_running_stats:
            m.reset_running_stats()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    out = net(torch.ones(shape, dtype=torch.float64, device=device))
    torch.sum(out).backward()
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                total += (p * p.grad).abs().sum()
    value = float(total)
    if not math.isfinite(value):
        raise ValueError(f"SynFlow overflowed float64 ({value}) for input shape {shape}")
    return math.log10(value) if value > 0 else -math.inf


def naswot(model: nn.Module, batch: torch.Tensor | Sequence[torch.Tensor], *, batch_stats: bool = True) -> float:
    """NASWOT score: ``log |det K|`` of the binary activation-code kernel of ``batch`` (images, or (images, labels)).

    Every module whose class name is in :data:`ACTIVATIONS` is hooked (timm ResNets use ``ReLU(inplace=True)``,
    so the code is read from the module's output, which is positive exactly where its input was). With
    ``batch_stats`` (as in the original, which scores the network in training mode) BatchNorm normalises with the
    batch's statistics, while everything else stays in eval mode (no dropout or drop-path: the score stays
    deterministic); running statistics and every module's train/eval flag are restored afterwards.
    ``-inf`` when K is singular (e.g. two identical images in the batch). Needs a batch of at least 2.
    """
    x = batch[0] if isinstance(batch, list | tuple) else batch
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"naswot needs a batch of at least 2 images (B, C, H, W), got {shape}")
    device = next(model.parameters()).device
    x = x.to(device)
    n = x.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64, device=device)
    hooked = 0

    def record(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        codes = (output.detach().reshape(n, -1) > 0).float()
        # c c^T counts units where both are active, (1-c)(1-c)^T where both are inactive: together, agreement.
        # Exact in float32 (integer counts below 2**24 per layer), accumulated in float64 across layers.
        agree = codes @ codes.T + (1.0 - codes) @ (1.0 - codes).T
        kernel.add_(agree.double())

    handles = []
    for m in model.modules():
        if type(m).__name__ in ACTIVATIONS:
            handles.append(m.register_forward_hook(record))
            hooked += 1
    if not hooked:
        raise ValueError(f"naswot: {type(model).__name__} has no activation module of the types {sorted(ACTIVATIONS)}")

    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]  # BatchNorm running stats and counters
    try:
        model.eval()
        if batch_stats:
            for m in model.modules():
                if isinstance(m, _NORMS):
                    m.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) != 0 else -math.inf


def unzero_residual_branches(model: nn.Module) -> int:
    """Give every normalisation layer whose scale is initialised to zero a scale of one; the number changed.

    timm zero-initialises the last BatchNorm of each residual branch (``zero_init_last``), so at initialisation
    every branch outputs zero and the network is its shortcut path: any score of the untrained network is then
    blind to everything inside the branches, attention included (baseline and SCSA configs score identically).
    Scoring the network as it would be without that trick (a plain unit-scale init) makes the branches count.
    """
    changed = 0
    with torch.no_grad():
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, (*_NORMS, nn.GroupNorm, nn.LayerNorm)) and weight is not None and not weight.any():
                weight.fill_(1.0)
                changed += 1
    return changed


def _default_batch(
    dataset: str, data_dir: str | None, batch_size: int, resolution: int
) -> torch.Tensor:
    """The first ``batch_size`` val images (a fixed, class-balanced prefix): the same batch for every config."""
    from .data import load_splits

    _, splits = load_splits(dataset, data_dir)
    x, _ = next(splits["val"].batches(batch_size, resolution, train=False, seed=0, limit=batch_size))
    return x


def zero_cost_scores(
    arch: ArchConfig,
    batch: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    num_classes: int = 10,
    resolution: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    gflops: bool = True,
) -> dict[str, float]:
    """Zero-cost scores of ``arch`` freshly initialised with ``seed``: ``synflow``, ``naswot``, ``params`` and,
    when :mod:`evaluators.flops` can be imported, ``gflops`` (at the batch's resolution).

    The residual branches' zero-initialised norms are set to one first (:func:`unzero_residual_branches`):
    otherwise both scores ignore every attention module inside a branch.

    ``batch``: images (B, 3, H, W) or (images, labels); default: the first ``batch_size`` val images of ``dataset``
    at ``resolution``. Deterministic for a given seed and batch; the caller's RNG state is left untouched.
    """
    from .device import resolve_device

    dev = resolve_device(device)
    x = _default_batch(dataset, data_dir, batch_size, resolution) if batch is None else batch
    x = x[0] if isinstance(x, list | tuple) else x
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build_model(arch, num_classes=num_classes).to(dev)
    unzero_residual_branches(model)
    scores: dict[str, Any] = {
        "synflow": synflow(model, (1, *x.shape[1:])),
        "naswot": naswot(model, x),
        "params": float(sum(p.numel() for p in model.parameters())),
    }
    if gflops:
        try:
            from .flops import measure
        except ImportError:  # optional: the FLOP counter needs fvcore
            pass
        else:
            scores["gflops"] = float(measure(arch, resolution=int(x.shape[-1])).gflops)
    return scores
