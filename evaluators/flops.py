"""FLOPs and parameters of an ArchConfig: fvcore for the backbone, fvcore plus extra op handles for attention.

    >>> from space import ArchConfig
    >>> cost = measure(ArchConfig.baseline("resnet50"))          # doctest: +SKIP
    >>> round(cost.gflops, 4), cost.params                        # doctest: +SKIP
    (4.1115, 25557032)

Convention (fvcore's, extended; "flop" below means one such unit):

* **Matmuls and convolutions**: one flop per multiply-add (MAC); bias additions are not counted. This is
  fvcore's own convention and its handles (``aten::_convolution``, ``aten::linear``, ``aten::matmul`` ...).
  A convolution costs ``batch * out_channels * in_channels/groups * prod(kernel) * prod(out_spatial)``; a
  depthwise 1-D convolution therefore costs ``k`` per output element.
* **Normalisation** (fvcore's handles, kept): GroupNorm / LayerNorm 5 per input element with affine (4 without),
  BatchNorm in eval 2 per input element with affine (1 without).
* **Elementwise arithmetic** (``add sub rsub mul div`` and activations/gates ``sigmoid relu hardtanh
  hardsigmoid hardswish silu gelu tanh exp clamp ...``, in-place variants included): 1 per *output* element,
  whatever the function's internal cost, broadcasting included (``(C, H, 1) * (C, 1, W)`` costs C·H·W).
  Ops whose output is an integer or bool tensor are shape/index arithmetic the tracer recorded: 0.
* **Reductions** (``mean sum amax amin max min`` over dims): 1 per *input* element (the division of a mean
  is folded in). ``adaptive_avg_pool2d`` (fvcore's handle) and ``adaptive_max_pool2d``: 1 per input element.
* **Pooling with a window** (``avg_pool1d/2d``, ``max_pool1d/2d``): ``prod(kernel)`` per output element (a
  reduction over each window; padding cells included).
* **Softmax / log-softmax**: 3 per element (exp, the sum that normalises, the division).
* **scaled_dot_product_attention**: counted as its decomposition so that an explicit attention costs the same:
  Q·Kᵀ (``B·L·S·E`` MACs) + scaling the scores (``B·L·S``) + softmax (``3·B·L·S``) + A·V (``B·L·S·Ev`` MACs)
  + an additive mask if given (``B·L·S``); ``B`` = all leading (batch, head) dims, ``L``/``S`` the query/key
  lengths. A causal mask is counted as full (an upper bound); dropout does not run in eval.
* **Data movement** (``pad constant_pad_nd cat expand expand_as repeat view reshape slice unbind flatten
  new_zeros ...``): 0 flops. fvcore already treats most of them as free; the rest get explicit zero handles.

Where the convention applies — the backbone is counted exactly as fvcore counts it by default (plain timm
``resnet50`` at 224 px: 4.1115 GFLOPs), so numbers stay comparable with every fvcore figure in the literature.
fvcore deliberately leaves ops it has no handle for (``add_`` of the residual, ReLUs, the stem's ``max_pool2d``)
uncounted; for the backbone that is kept, and every such op that costs flops under the convention below is
reported in ``Cost.uncounted``. Inside the attention modules an
ArchConfig adds (registered as ``<block>.attn_mid`` / ``<block>.attn_end`` by ``space.build``), *every* op is
counted under the convention above, because there those ops (means, gates, broadcast multiplies, pooling,
softmax, attention) are most of what SCSA, SE, ECA and CBAM cost: fvcore alone sees only their convolutions
and GroupNorms.

How: one trace with fvcore's ``FlopCountAnalysis``; the extra handles are wrapped so that they count only for
ops whose owning module (fvcore's "owner" scope, the same attribution as ``by_module()``) lies inside an
attention module, and return 0 elsewhere (what fvcore counts for it) while recording the op as uncounted
where it costs flops. So ``total = fvcore-default(backbone) + full-convention(attention)`` from a single trace,
without subtracting two analyses (which would need two traces) and without changing any count fvcore makes
for the backbone (the extra handles are only for ops fvcore has no handle for).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from evaluators.fvcore_nn import FlopCountAnalysis, get_shape
from space import ArchConfig
from space.backbones import POSITIONS
from space.build import build_deployed

__all__ = ["Cost", "attention_scopes", "count_module", "explicit_backbone_attention", "measure", "EXTRA_HANDLES"]

#: Names under which ``space.build.attach`` registers added attention modules on a block.
ATTENTION_NAMES = frozenset(f"attn_{p}" for p in POSITIONS)

_INTEGER_TYPES = frozenset({"Long", "Int", "Short", "Char", "Byte", "Bool", "UInt16", "UInt32", "UInt64"})

Handle = Callable[[list[Any], list[Any]], int]


@dataclass(frozen=True)
class Cost:
    """What one model costs at one input size (batch 1).

    Attributes:
        gflops: ``flops / 1e9``.
        params: number of parameters (sum of ``numel``).
        uncounted: op name -> occurrences that no handle counted (the backbone's, per fvcore's convention).
            Read-only (the object may be shared by the cache): ``dict(cost.uncounted)`` for a copy.
        flops: exact count in the module docstring's convention.
        by_module: attention module name -> its flops (every op counted); ``{"": flops}`` for ``count_module``
            on a lone module.
    """

    gflops: float
    params: int
    uncounted: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    flops: int = 0
    by_module: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def attention_gflops(self) -> float:
        """GFLOPs spent in the added attention modules."""
        return sum(self.by_module.values()) / 1e9

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable copy."""
        return {
            "gflops": self.gflops,
            "params": self.params,
            "flops": self.flops,
            "uncounted": dict(self.uncounted),
            "by_module": dict(self.by_module),
        }


# ----------------------------------------------------------------------------------------------------------
# Handles (the convention of the module docstring). Each takes fvcore's (inputs, outputs) lists of jit Values.


def _numel(value: Any) -> int:
    shape = get_shape(value)
    if shape is None:
        raise ValueError(f"the trace holds no complete shape for {value.debugName()!r}; cannot count its flops")
    return math.prod(shape)


def _is_tensor(value: Any) -> bool:
    return value.type().kind() == "TensorType"


def _is_float_output(outputs: list[Any]) -> bool:
    """False for integer/bool results (shape arithmetic the tracer recorded, e.g. ``h + gap``) and non-tensors."""
    out = outputs[0]
    if not _is_tensor(out):
        return False
    return out.type().scalarType() not in _INTEGER_TYPES


def _elementwise(inputs: list[Any], outputs: list[Any]) -> int:
    return _numel(outputs[0]) if _is_float_output(outputs) else 0


def _reduction(inputs: list[Any], outputs: list[Any]) -> int:
    return _numel(inputs[0]) if _is_float_output(outputs) else 0


def _max_min(inputs: list[Any], outputs: list[Any]) -> int:
    # aten::max / aten::min are a reduction (max.dim, max()) or, with two tensors, an elementwise maximum.
    if len(inputs) >= 2 and _is_tensor(inputs[1]):
        return _elementwise(inputs, outputs)
    return _reduction(inputs, outputs)


def _softmax(inputs: list[Any], outputs: list[Any]) -> int:
    return 3 * _numel(inputs[0])


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


def _int_list(value: Any) -> list[int] | None:
    """The constant int list behind a jit Value (a ``prim::ListConstruct`` of constants), else ``None``."""
    node = value.node()
    try:
        if node.kind() == "prim::ListConstruct":
            return [int(v.toIValue()) for v in node.inputs()]
        ivalue = value.toIValue()
    except RuntimeError:  # not a constant (e.g. computed from traced sizes)
        return None
    if isinstance(ivalue, int):
        return [ivalue]
    return [int(v) for v in ivalue] if ivalue is not None else None


def _pool(spatial_dims: int) -> Handle:
    def pool_flops(inputs: list[Any], outputs: list[Any]) -> int:
        kernel = _int_list(inputs[1])
        if kernel is None:
            # Not recoverable from the graph: count it as the reduction it is over non-overlapping windows.
            return _numel(inputs[0])
        if len(kernel) == 1:
            kernel = kernel * spatial_dims
        return _numel(outputs[0]) * math.prod(kernel)

    return pool_flops


def _sdpa(inputs: list[Any], outputs: list[Any]) -> int:
    # aten::scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p, is_causal, scale, ...)
    q, k, v = (get_shape(t) for t in inputs[:3])
    *lead, length, embed = q
    source = k[-2]
    batch = math.prod(lead)
    scores = batch * length * source
    flops = scores * embed + scores + 3 * scores + scores * v[-1]  # QKᵀ, scale, softmax, AV
    if len(inputs) > 3 and _is_tensor(inputs[3]) and get_shape(inputs[3]) is not None:
        flops += scores  # additive (or boolean) mask
    return flops


_ELEMENTWISE_OPS = (
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg",
    "sigmoid", "sigmoid_", "relu", "relu_", "hardtanh", "hardtanh_", "hardsigmoid", "hardsigmoid_",
    "hardswish", "hardswish_", "silu", "silu_", "gelu", "tanh", "tanh_", "exp", "sqrt", "rsqrt", "pow",
    "clamp", "clamp_", "clamp_min", "maximum", "minimum", "abs", "where",
)  # fmt: skip
_REDUCTION_OPS = ("mean", "sum", "amax", "amin", "adaptive_max_pool2d", "adaptive_max_pool1d")
_ZERO_OPS = (  # data movement the trace can show and fvcore does not already skip
    "pad", "expand_as", "repeat", "unflatten", "clone", "movedim", "flip", "repeat_interleave",
    "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "tensor_split",
    "masked_fill_", "fill_", "zero_", "new_ones", "empty_like", "ones_like", "dropout_", "feature_dropout",
    "alpha_dropout",
)  # fmt: skip

#: op name -> handle, for ops fvcore has no handle for (its own handles — convolutions, matmuls, norms,
#: adaptive_avg_pool2d — are kept as they are). Applied inside attention modules only.
EXTRA_HANDLES: Mapping[str, Handle] = MappingProxyType(
    {
        **{f"aten::{op}": _elementwise for op in _ELEMENTWISE_OPS},
        **{f"aten::{op}": _reduction for op in _REDUCTION_OPS},
        "aten::max": _max_min,
        "aten::min": _max_min,
        "aten::softmax": _softmax,
        "aten::_softmax": _softmax,
        "aten::log_softmax": _softmax,
        "aten::avg_pool1d": _pool(1),
        "aten::max_pool1d": _pool(1),
        "aten::avg_pool2d": _pool(2),
        "aten::max_pool2d": _pool(2),
        "aten::scaled_dot_product_attention": _sdpa,
        **{f"aten::{op}": _zero for op in _ZERO_OPS},
    }
)


class _ScopedHandle:
    """An extra handle that counts only for ops owned by a module inside ``scopes``.

    Elsewhere it returns 0, as fvcore's convention has it, and records one uncounted occurrence in ``skipped``
    where the op costs flops under this module's convention (a residual's ``add_``, a ReLU, the stem's
    ``max_pool2d``); data movement (0 either way) is not recorded. Which ops fvcore skips silently and which it
    reports is a private set of fvcore's, so the line is drawn by this module's own convention instead.
    """

    def __init__(self, op: str, handle: Handle, scopes: frozenset[str] | None, skipped: Counter) -> None:
        self.op, self.handle, self.scopes, self.skipped = op, handle, scopes, skipped

    def __call__(self, inputs: list[Any], outputs: list[Any]) -> int:
        owner = outputs[0].node().scopeName().split("/")[-1]  # fvcore's "owner" attribution
        if _inside(owner, self.scopes):
            return self.handle(inputs, outputs)
        try:
            costs = self.handle(inputs, outputs) > 0
        except ValueError:  # no complete shape to count it by: say it was not counted
            costs = True
        if costs:
            self.skipped[self.op] += 1
        return 0


def _inside(name: str, scopes: frozenset[str] | None) -> bool:
    if scopes is None:
        return True
    return any(name == s or name.startswith(s + ".") for s in scopes)


# ----------------------------------------------------------------------------------------------------------


def attention_scopes(model: nn.Module) -> frozenset[str]:
    """Names of the attention modules ``space.build`` added to ``model`` (``...attn_mid``, ``...attn_end``)."""
    return frozenset(name for name, _ in model.named_modules() if name.rpartition(".")[2] in ATTENTION_NAMES)


def count_module(
    module: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    scopes: Iterable[str] | None = None,
) -> Cost:
    """Count ``module(*inputs)`` (as given: put it in eval mode first if that is what should be counted).

    Args:
        module: any traceable module, e.g. a lone ``SCSA`` or a whole built model.
        inputs: a tensor or a tuple of tensors (fvcore traces ``module(*inputs)``).
        scopes: names of submodules whose every op is counted with the extended convention; the rest follows
            fvcore's defaults. ``None``: the whole module is counted with the extended convention.

    Returns:
        A ``Cost``; ``by_module`` holds each scope's flops (``{"": flops}`` when ``scopes`` is ``None``).
    """
    scope_set = None if scopes is None else frozenset(scopes)
    skipped: Counter = Counter()
    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    for op, handle in EXTRA_HANDLES.items():
        analysis.set_op_handle(op, _ScopedHandle(op, handle, scope_set, skipped))
    with torch.no_grad():
        flops = int(analysis.total())
    uncounted = Counter(analysis.unsupported_ops()) + skipped
    by_module = {"": flops} if scope_set is None else {name: int(analysis.total(name)) for name in sorted(scope_set)}
    params = sum(p.numel() for p in module.parameters())
    return Cost(
        gflops=flops / 1e9,
        params=params,
        uncounted=MappingProxyType(dict(sorted(uncounted.items()))),
        flops=flops,
        by_module=MappingProxyType(by_module),
    )


def measure(arch: ArchConfig | Mapping, resolution: int = 224, num_classes: int = 1000) -> Cost:
    """FLOPs (batch 1, ``resolution`` x ``resolution`` RGB input) and parameters of ``arch``; cached.

    The model is built on the CPU in eval mode for ``resolution`` (Swin: ``img_size=resolution``), as deployed
    (RepVGG: re-parameterised, ``space.build.deploy_model``), and traced once; repeated calls with an equal config
    return the same ``Cost`` object. ``arch`` may also be an ``ArchConfig.to_dict()`` mapping.
    """
    if isinstance(arch, Mapping):
        arch = ArchConfig.from_dict(arch)
    if not isinstance(arch, ArchConfig):
        raise TypeError(f"measure() takes an ArchConfig, got {type(arch).__name__}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    # Normalised positionally so that measure(a) and measure(a, 224) share one cache entry.
    return _measure_cached(arch, resolution, num_classes)


def explicit_backbone_attention(model: nn.Module, scopes: Iterable[str]) -> None:
    """Make the backbone's own attention (Swin's windows) run as explicit matmuls, outside ``scopes``.

    fvcore has no handle for a fused ``scaled_dot_product_attention`` and would leave the backbone's attention out
    of the count; its explicit Q·Kᵀ and A·V matmuls are what fvcore counts (and what published Swin figures
    count). Same maths, so the count is of the network that runs either way.
    """
    for name, module in model.named_modules():
        if isinstance(getattr(module, "fused_attn", None), bool) and not _inside(name, frozenset(scopes)):
            module.fused_attn = False


@functools.lru_cache(maxsize=512)
def _measure_cached(arch: ArchConfig, resolution: int, num_classes: int) -> Cost:
    # deployed: RepVGG re-parameterised, so FLOPs and params are those of the folded network
    model = build_deployed(arch, resolution, num_classes)
    scopes = attention_scopes(model)
    explicit_backbone_attention(model, scopes)
    x = torch.zeros(1, 3, resolution, resolution)  # values do not matter: only shapes reach the handles
    return count_module(model, x, scopes=scopes)


measure.cache_clear = _measure_cached.cache_clear  # type: ignore[attr-defined]
measure.cache_info = _measure_cached.cache_info  # type: ignore[attr-defined]
