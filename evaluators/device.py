"""Pick a torch device by name, failing early and clearly when it is not there."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` (or a ``torch.device``).

    ``"auto"`` picks the first CUDA device, else MPS, else the CPU. A device that this machine does not have
    raises ``ValueError`` saying what is available, rather than failing later inside a forward pass.

    Example::

        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but CUDA is not available here "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use 'cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} requested but only {count} CUDA device(s) are visible (cuda:0..)")
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {device!r} requested but Apple MPS is not available here; use 'cpu' or 'auto'")
        return dev
    raise ValueError(f"unsupported device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU), so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
