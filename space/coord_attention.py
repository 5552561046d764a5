"""Coordinate Attention (CA).

Paper: `Coordinate Attention for Efficient Mobile Network Design` (Hou, Zhou, Feng; CVPR 2021)
    - https://arxiv.org/abs/2103.02907

Two strip poolings (along W, giving a column per channel, and along H, giving a row) are encoded together by a
shared 1x1 convolution, BatchNorm and h-swish, split again, and turned by one 1x1 convolution each into a sigmoid
gate per row and per column: ``y = x * a_h * a_w``.

Written in timm's layer style. Recent timm (1.0.31 here) ships the same module as
``timm.layers.coord_attn.CoordAttn``, but the oldest timm this project supports (1.0.9, from 2024) does not; the
parameter names match timm's, so state dicts load either way (tests/test_attention.py checks the outputs agree).

Defaults are the paper's: reduction 32 with at least 8 mid channels (``make_divisible`` rounds to multiples of 8,
which equals the paper's ``max(8, C // 32)`` for every power-of-two width), h-swish, BN, sigmoid gates. One
departure, timm's: the convolutions carry no bias (``bias=True`` gives the paper's). Before BN a bias is cancelled
anyway; the two gate convolutions lose a learned per-channel offset of the sigmoid (2·C parameters).
"""

from __future__ import annotations

import torch
from timm.layers import create_act_layer, make_divisible
from torch import nn

__all__ = ["CoordAttn"]


class CoordAttn(nn.Module):
    """Coordinate attention for ``channels`` channels (in = out, any map size).

    Example::

        >>> attn = CoordAttn(64)
        >>> attn(torch.randn(2, 64, 14, 10)).shape
        torch.Size([2, 64, 14, 10])
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1.0 / 32,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        bias: bool = False,
        act_layer: type[nn.Module] | str = nn.Hardswish,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        gate_layer: type[nn.Module] | str = "sigmoid",
    ) -> None:
        super().__init__()
        if not rd_channels:
            # make_divisible's minimum is the divisor: the paper's floor of 8 mid channels.
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.conv1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias)
        self.bn1 = norm_layer(rd_channels) if norm_layer is not None else nn.Identity()
        self.act = create_act_layer(act_layer)
        self.conv_h = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias)
        self.conv_w = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x_h = x.mean(3, keepdim=True)  # (N, C, H, 1)
        x_w = x.mean(2, keepdim=True).transpose(-1, -2)  # (N, C, W, 1): both strips share one encoder
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.gate(self.conv_h(y_h))  # (N, C, H, 1)
        a_w = self.gate(self.conv_w(y_w.transpose(-1, -2)))  # (N, C, 1, W)
        return x * a_w * a_h
