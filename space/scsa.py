"""SCSA: Spatial and Channel Synergistic Attention (Si et al., arXiv 2407.05128).

SMSA (shareable multi-semantic spatial attention) guides PCSA (progressive channel-wise self-attention)::

    Xs  = X * Ah * Aw                    # SMSA: strip-pooled, multi-scale depthwise 1-D convolutions, GroupNorm, gate
    out = Xs * gate(mean_N(attn(Y)))     # PCSA: Y = GroupNorm(1, C)(pool(Xs)), channels are the attention tokens

This implementation generalises the authors' module (any number of SMSA groups, one odd kernel per group, avg or
max pooling, global pooling, heads, sigmoid or softmax gates, attention dropout, qkv bias) and is faster:

* All SMSA groups and both strips go through **one** depthwise ``conv1d``: group kernels are zero-padded to the
  largest kernel (exact: a zero tap adds nothing) and the H and W strips are laid end to end with a zero gap of
  ``k_max // 2`` so that no output position sees the other strip.
* PCSA never materialises the C x C attention matrix: channels are the tokens of a standard attention whose feature
  dimension is the N pooled positions, so ``F.scaled_dot_product_attention`` applies. With one pooled cell
  (N = 1) on CPU not even the C x C exponentials are computed: the attention is a power series in the logits'
  scalar factors, exact to float32 precision (``scsa_ops.channel_attention``).

Maps smaller than the window: the authors' ``AvgPool2d(window)`` fails on them (window 7 on a 4x4 map). Here the
pooling window is clamped per axis to the map (``min(window, H)``, ``min(window, W)``), so such a map is pooled to a
single row/column/cell. Wherever the authors' module runs (both sides >= window) nothing changes and the outputs
are identical.

Parameters follow the paper's count: 16·C per module with 4 groups and kernels 3/5/7/9.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from .scsa_ops import (
    channel_attention,
    depthwise_conv1d,
    gated_strip_product,
    pool_plain,
    strip_means,
    tracing_or_compiling,
)

GATES = ("sigmoid", "softmax")
POOLS = ("avg", "max")

# The authors' names for the four group convolutions, in the order of ``group_kernel_sizes``.
_OFFICIAL_DWC = ("local_dwc", "global_dwc_s", "global_dwc_m", "global_dwc_l")
_OFFICIAL_POOL = {"avg_pool": "avg", "max_pool": "max"}


@dataclass(frozen=True)
class ScsaSetting:
    """SCSA's searchable settings, typed; :data:`PAPER` holds the paper's."""

    groups: int = 4
    kernels: tuple[int, ...] = (3, 5, 7, 9)
    window: int = 7
    heads: int = 1
    gate: str = "sigmoid"
    pool: str = "avg"


#: The paper's setting: the defaults of :class:`SCSA` and :func:`check_scsa_args` (their one source).
PAPER = ScsaSetting()
#: The same as a read-only mapping (for ``**`` and JSON).
PAPER_SETTING: Mapping[str, object] = MappingProxyType(asdict(PAPER))


def check_scsa_args(channels: int, **options: object) -> None:
    """Raise a ``ValueError`` naming the first setting SCSA cannot take; return ``None`` when all are valid.

    ``options``: any of :class:`SCSA`'s settings (``groups``, ``kernels``, ``window``, ``heads``, ``gate``,
    ``pool``, ``attn_drop``); those not given are the paper's (:data:`PAPER_SETTING`). Kept apart from the
    constructor so that a search space can test a candidate without building it.
    """
    unknown = sorted(set(options) - {*PAPER_SETTING, "attn_drop"})
    if unknown:
        raise ValueError(f"SCSA takes no setting {', '.join(unknown)}")
    o = {**PAPER_SETTING, "attn_drop": 0.0, **options}
    groups, kernels, window, heads = o["groups"], o["kernels"], o["window"], o["heads"]
    gate, pool, attn_drop = o["gate"], o["pool"], o["attn_drop"]
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"SCSA channels must be a positive integer, got {channels!r}")
    if not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"SCSA groups must be a positive integer, got {groups!r}")
    if channels % groups:
        raise ValueError(f"SCSA channels={channels} is not divisible by groups={groups}")
    kernels = tuple(kernels)
    if len(kernels) != groups:
        raise ValueError(f"SCSA kernels={list(kernels)} must give one kernel per group: {groups} expected")
    for k in kernels:
        if not isinstance(k, int) or k <= 0 or k % 2 == 0:
            raise ValueError(f"SCSA kernels={list(kernels)}: every kernel must be a positive odd integer, got {k!r}")
    if not isinstance(window, int) or not (window == -1 or window >= 1):
        raise ValueError(f"SCSA window={window!r} must be a positive integer or -1 (global pooling)")
    if not isinstance(heads, int) or heads <= 0:
        raise ValueError(f"SCSA heads must be a positive integer, got {heads!r}")
    if channels % heads:
        raise ValueError(f"SCSA channels={channels} is not divisible by heads={heads}")
    if gate not in GATES:
        raise ValueError(f"SCSA gate={gate!r} is unknown; choose one of {', '.join(GATES)}")
    if pool not in POOLS:
        raise ValueError(f"SCSA pool={pool!r} is unknown; choose one of {', '.join(POOLS)}")
    if not 0.0 <= float(attn_drop) < 1.0:
        raise ValueError(f"SCSA attn_drop={attn_drop!r} must lie in [0, 1)")


class SCSA(nn.Module):
    """Spatial and Channel Synergistic Attention.

    Args:
        channels: input (and output) channels C.
        groups: SMSA channel groups G; GroupNorm of the strips uses G groups too (the paper: 4).
        kernels: one odd 1-D kernel size per group (the paper: 3, 5, 7, 9).
        window: PCSA pooling window (the pool ratio, the paper: 7); -1 pools globally to 1x1.
        heads: PCSA attention heads; C must be divisible by them.
        gate: ``"sigmoid"`` or ``"softmax"`` (softmax over the strip length for SMSA, over channels for PCSA).
        pool: ``"avg"`` or ``"max"`` pooling for PCSA's progressive compression.
        attn_drop: dropout on the channel attention weights (training only).
        qkv_bias: bias in the depthwise 1x1 q/k/v projections.

    Example::

        >>> m = SCSA(64)
        >>> m(torch.randn(2, 64, 56, 56)).shape
        torch.Size([2, 64, 56, 56])
    """

    def __init__(
        self,
        channels: int,
        groups: int = PAPER.groups,
        kernels: Sequence[int] = PAPER.kernels,
        window: int = PAPER.window,
        heads: int = PAPER.heads,
        gate: str = PAPER.gate,
        pool: str = PAPER.pool,
        attn_drop: float = 0.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        check_scsa_args(channels, groups=groups, kernels=kernels, window=window, heads=heads, gate=gate, pool=pool,
                        attn_drop=attn_drop)
        self.channels, self.groups, self.kernels = channels, groups, tuple(kernels)
        self.window, self.heads, self.gate, self.pool = window, heads, gate, pool
        self.attn_drop = float(attn_drop)
        group_chans = channels // groups
        # SMSA: one depthwise 1-D convolution per group (own parameters, as in the paper; they are fused into a
        # single zero-padded kernel at run time so that padded taps never receive gradients).
        self.dwc = nn.ModuleList(
            nn.Conv1d(group_chans, group_chans, k, padding=k // 2, groups=group_chans) for k in self.kernels
        )
        self.norm_h = nn.GroupNorm(groups, channels)
        self.norm_w = nn.GroupNorm(groups, channels)
        # PCSA
        self.norm = nn.GroupNorm(1, channels)
        # q, k and v are depthwise 1x1 convolutions, i.e. one scale (and bias) per channel: kept as one (3, C)
        # tensor so that a single broadcast multiply produces all three.
        self.qkv_weight = nn.Parameter(torch.ones(3, channels))
        self.qkv_bias = nn.Parameter(torch.zeros(3, channels)) if qkv_bias else None
        self.reset_qkv()

    def reset_qkv(self) -> None:
        # Same init as a depthwise nn.Conv2d(C, C, 1, groups=C): kaiming_uniform(a=sqrt(5)) with fan_in 1.
        nn.init.uniform_(self.qkv_weight, -1.0, 1.0)
        if self.qkv_bias is not None:
            nn.init.uniform_(self.qkv_bias, -1.0, 1.0)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, groups={self.groups}, kernels={self.kernels}, window={self.window}, "
            f"heads={self.heads}, gate={self.gate}, pool={self.pool}, attn_drop={self.attn_drop}, "
            f"qkv_bias={self.qkv_bias is not None}"
        )

    def _fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        k_max = max(self.kernels)
        weights, biases = [], []
        for conv, k in zip(self.dwc, self.kernels):
            pad = (k_max - k) // 2
            weights.append(F.pad(conv.weight, (pad, pad)) if pad else conv.weight)
            biases.append(conv.bias)
        return torch.cat(weights), torch.cat(biases)

    def pooled_size(self, height: int, width: int) -> tuple[int, int]:
        """PCSA's pooled grid (H', W') for a ``height`` x ``width`` map, after clamping the window to the map."""
        kh, kw = self.pool_kernel(height, width)
        return height // kh, width // kw

    def pool_kernel(self, height: int, width: int) -> tuple[int, int]:
        """PCSA's pooling window (= stride) on a ``height`` x ``width`` map: the window clamped to the map."""
        if self.window == -1:
            return height, width
        return min(self.window, height), min(self.window, width)

    def _pool(self, xs: torch.Tensor) -> torch.Tensor:
        return pool_plain(xs, self.pool_kernel(*xs.shape[-2:]), self.pool)

    def _strip_gates(self, x_h: torch.Tensor, x_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SMSA: the strip means (B, C, H) and (B, C, W) -> the spatial gates a_h, a_w of the same shapes."""
        b, c, h = x_h.shape
        k_max = max(self.kernels)
        gap = k_max // 2
        weight, bias = self._fused_kernel()
        # H strip, zero gap, W strip: one convolution serves both strips and all groups exactly.
        parts = [x_h, x_h.new_zeros(b, c, gap), x_w] if gap else [x_h, x_w]
        strips = depthwise_conv1d(torch.cat(parts, dim=2), weight, bias)
        a_h = F.group_norm(strips[:, :, :h], self.groups, self.norm_h.weight, self.norm_h.bias, self.norm_h.eps)
        a_w = F.group_norm(strips[:, :, h + gap :], self.groups, self.norm_w.weight, self.norm_w.bias, self.norm_w.eps)
        if self.gate == "sigmoid":
            return a_h.sigmoid(), a_w.sigmoid()
        return a_h.softmax(dim=2), a_w.softmax(dim=2)

    def _channel_params(self) -> list[torch.Tensor]:
        params = [self.norm.weight, self.norm.bias, self.qkv_weight]
        return params if self.qkv_bias is None else [*params, self.qkv_bias]

    def _channel_gate(
        self,
        y: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        qkv_weight: torch.Tensor,
        qkv_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """PCSA on the pooled map y (B, C, H', W') -> channel gate (B, C, 1, 1); parameters passed explicitly
        so that the fused full-map node can differentiate this small graph on its own."""
        b, c = y.shape[0], self.channels
        y = F.group_norm(y, 1, norm_weight, norm_bias, self.norm.eps).flatten(2)  # (B, C, N)
        qkv = y.unsqueeze(1) * qkv_weight[None, :, :, None]
        if qkv_bias is not None:
            qkv = qkv + qkv_bias[None, :, :, None]
        head_dim = c // self.heads
        # (B, 3, C, N) -> 3 x (B, heads, C/heads, N): channels are the tokens, pooled positions the features.
        q, k, v = qkv.view(b, 3, self.heads, head_dim, -1).unbind(1)
        z = channel_attention(q, k, v, head_dim**-0.5, self.attn_drop if self.training else 0.0)
        z = z.reshape(b, c, 1, 1)
        return z.sigmoid() if self.gate == "sigmoid" else z.softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SCSA expects (B, {self.channels}, H, W) input, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x_h, x_w = (x.mean(dim=3), x.mean(dim=2)) if tracing_or_compiling() else strip_means(x)
        a_h, a_w = self._strip_gates(x_h, x_w)
        return gated_strip_product(
            x, a_h, a_w, self.pool_kernel(h, w), self.pool, self._channel_gate, self._channel_params()
        )

    @classmethod
    def from_official(cls, config: Mapping, state_dict: Mapping[str, torch.Tensor] | None = None) -> SCSA:
        """Build from the authors' constructor names and, if given, their state dict.

        ``config`` keys: ``dim, head_num, window_size, group_kernel_sizes, down_sample_mode, gate_layer`` and optional
        ``qkv_bias, attn_drop_ratio``. The authors' module always has 4 groups. Their global pooling (window -1)
        is an average whatever the pooling mode, and so it is here.
        """
        known = {"dim", "head_num", "window_size", "group_kernel_sizes", "down_sample_mode", "gate_layer",
                 "qkv_bias", "attn_drop_ratio"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown SCSA config keys {unknown}; the authors' keys are {sorted(known)}")
        mode = config.get("down_sample_mode", "avg_pool")
        if mode not in _OFFICIAL_POOL:
            raise ValueError(f"down_sample_mode={mode!r} is not supported; choose one of {sorted(_OFFICIAL_POOL)}")
        window = int(config.get("window_size", 7))
        kernels = tuple(int(k) for k in config.get("group_kernel_sizes", (3, 5, 7, 9)))
        module = cls(
            channels=int(config["dim"]),
            groups=4,
            kernels=kernels,
            window=window,
            heads=int(config.get("head_num", 1)),
            gate=str(config.get("gate_layer", "sigmoid")),
            pool="avg" if window == -1 else _OFFICIAL_POOL[mode],
            attn_drop=float(config.get("attn_drop_ratio", 0.0)),
            qkv_bias=bool(config.get("qkv_bias", False)),
        )
        if state_dict is not None:
            module.load_state_dict(convert_official_state_dict(state_dict))
        return module


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the authors' parameter names and shapes onto this module's layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.partition(".")
        if prefix in _OFFICIAL_DWC:
            out[f"dwc.{_OFFICIAL_DWC.index(prefix)}.{leaf}"] = value
        elif prefix in ("norm_h", "norm_w", "norm"):
            out[key] = value
        elif prefix in ("q", "k", "v") and leaf in ("weight", "bias"):
            continue  # gathered below
        else:
            raise KeyError(f"unexpected key {key!r} in the authors' SCSA state dict")
    for leaf, name in (("weight", "qkv_weight"), ("bias", "qkv_bias")):
        parts = [state_dict.get(f"{p}.{leaf}") for p in ("q", "k", "v")]
        if all(p is None for p in parts):
            continue
        if any(p is None for p in parts):
            raise KeyError(f"the authors' state dict must hold all of q.{leaf}, k.{leaf}, v.{leaf}")
        out[name] = torch.stack([p.reshape(-1) for p in parts])
    return out
