"""Attention factory: ``none | scsa | se | eca | cbam | ca | gc``.

The baselines come from ``timm.layers.create_attn`` so that they are exactly the modules timm users know (SE,
ECA, CBAM, and ``gc``: GCNet's global context block, timm's ``GlobalContext``); coordinate attention (``ca``)
is written here in timm's style (:mod:`space.coord_attention`) because the timm versions this project supports
do not all ship it; SCSA is this project's. Settings that only SCSA has are ignored by the others. Every type
keeps channels in = channels out, so any slot takes any of them.
"""

from __future__ import annotations

from timm.layers import create_attn
from torch import nn

from .coord_attention import CoordAttn
from .scsa import SCSA

ATTENTION_TYPES = ("none", "scsa", "se", "eca", "cbam", "ca", "gc")
#: Types built by ``timm.layers.create_attn`` under the same name.
TIMM_TYPES = ("se", "eca", "cbam", "gc")


def create_attention(attn: str, channels: int, **scsa: object) -> nn.Module | None:
    """Build the attention module ``attn`` for ``channels`` channels; ``None`` for ``"none"``. ``scsa``: SCSA's
    settings (``groups``, ``kernels``, ``window``, ``heads``, ``gate``, ``pool``; the paper's where not given),
    ignored by the other attentions."""
    if attn == "none":
        return None
    if attn == "scsa":
        return SCSA(channels, **scsa)  # type: ignore[arg-type]
    if attn == "ca":
        return CoordAttn(channels)
    if attn in TIMM_TYPES:
        return create_attn(attn, channels)
    raise ValueError(f"unknown attention type {attn!r}; choose one of {', '.join(ATTENTION_TYPES)}")
