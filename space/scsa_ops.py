"""Full-map products of SCSA with hand-written backward passes.

SCSA's cost on large maps is not its convolutions or its attention but the elementwise passes over the whole
(B, C, H, W) map: ``x * a_h * a_w`` and ``xs * gate``. Autograd differentiates them op by op, saving an
intermediate map and spending a multiply pass and a reduction pass per operand. Here the reductions are batched
matrix-vector products (one read of the map each) and the intermediate map is never saved.

Both functions are exact (the same arithmetic as the plain ops) and are bypassed while tracing, so that FLOP
counters and exporters see plain aten ops.
"""

from __future__ import annotations

import torch


class _StripProduct(torch.autograd.Function):
    """``x * a_h[..., None] * a_w[..., None, :]`` for x (B, C, H, W), a_h (B, C, H), a_w (B, C, W)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, a_h, a_w)
        return x * (a_h.unsqueeze(3) * a_w.unsqueeze(2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, a_h, a_w = ctx.saved_tensors
        grad_x = grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * (a_h.unsqueeze(3) * a_w.unsqueeze(2))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gx = grad * x
            # mul + sum rather than batched matmul: CPU bmm loops over B*C tiny matrices one by one
            if ctx.needs_input_grad[1]:
                grad_h = (gx * a_w.unsqueeze(2)).sum(3)
            if ctx.needs_input_grad[2]:
                grad_w = (gx * a_h.unsqueeze(3)).sum(2)
        return grad_x, grad_h, grad_w


class _ChannelProduct(torch.autograd.Function):
    """``xs * gate`` for xs (B, C, H, W) and gate (B, C, 1, 1)."""

    @staticmethod
    def forward(ctx, xs: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(xs, gate)
        return xs * gate

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xs, gate = ctx.saved_tensors
        grad_xs = grad * gate if ctx.needs_input_grad[0] else None
        grad_gate = None
        if ctx.needs_input_grad[1]:
            grad_gate = (grad * xs).sum(dim=(2, 3), keepdim=True)
        return grad_xs, grad_gate


def strip_product(x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor) -> torch.Tensor:
    if torch.jit.is_tracing() or torch.jit.is_scripting() or not torch.is_grad_enabled():
        return x * (a_h.unsqueeze(3) * a_w.unsqueeze(2))
    return _StripProduct.apply(x, a_h, a_w)


def channel_product(xs: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    if torch.jit.is_tracing() or torch.jit.is_scripting() or not torch.is_grad_enabled():
        return xs * gate
    return _ChannelProduct.apply(xs, gate)
