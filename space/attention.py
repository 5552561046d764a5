"""Attention factory: ``none | scsa | se | eca | cbam``.

The baselines come from ``timm.layers.create_attn`` so that they are exactly the modules timm users know; SCSA is
this project's. Settings that only SCSA has are ignored by the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import create_attn
from torch import nn

from .scsa import SCSA

ATTENTION_TYPES = ("none", "scsa", "se", "eca", "cbam")


def create_attention(
    attn: str,
    channels: int,
    *,
    groups: int = 4,
    kernels: Sequence[int] = (3, 5, 7, 9),
    window: int = 7,
    heads: int = 1,
    gate: str = "sigmoid",
    pool: str = "avg",
) -> nn.Module | None:
    """Build the attention module ``attn`` for ``channels`` channels; ``None`` for ``"none"``."""
    if attn == "none":
        return None
    if attn == "scsa":
        return SCSA(channels, groups=groups, kernels=kernels, window=window, heads=heads, gate=gate, pool=pool)
    if attn in ATTENTION_TYPES:
        return create_attn(attn, channels)
    raise ValueError(f"unknown attention type {attn!r}; choose one of {', '.join(ATTENTION_TYPES)}")
