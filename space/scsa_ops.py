"""SCSA's full-map part as one autograd node with a hand-written backward pass.

On a large map SCSA's cost is not its convolutions or its attention, which work on strips and on the pooled grid,
but the elementwise passes over the whole (B, C, H, W) map and the allocation of full-size tensors (on CPU each
fresh full-size buffer also costs its page faults). Differentiated op by op, ``out = x * a_h * a_w * gate`` with
``gate = PCSA(pool(x * a_h * a_w))`` saves two intermediate maps and spends about twenty full-map passes and a
dozen full-size buffers in forward and backward. :func:`gated_strip_product` does the same arithmetic in:

* forward: one buffer (the output) and three passes for average pooling (``x * a_h``, its sums over each
  pooling tile's rows, the final scale by ``a_w * gate``): the pooled map is assembled from the tile row sums, so the
  strip-scaled map ``x * a_h * a_w`` is never materialised apart from the output;
* backward: two buffers (one becomes ``grad_x``) and eight passes; ``dL/dxs = grad * gate + pooling's gradient``
  is built by one ``addcmul`` over a tiled view of the gradient and scaled by ``a_w`` once for both ``grad_a_h``
  and ``grad_x``, and pooling's share of ``grad_a_w`` comes from the tile row sums saved in forward (a 1/kh-size
  map) instead of another pass.

The channel gate (PCSA: norm, q/k/v, attention, gate) only sees the pooled grid; it runs as an ordinary small
autograd graph built inside ``forward`` and is differentiated with ``torch.autograd.grad`` inside ``backward``,
the way ``torch.utils.checkpoint`` nests graphs. Its parameters are inputs of the node so that their gradients
flow out.

Everything is exact (the same products and sums as the plain ops, in another order) and is bypassed while
tracing (FLOP counters and exporters see plain aten ops), under ``torch.compile`` (one graph for inductor to fuse)
and when no gradient is needed (plain ops are already lean for inference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ChannelGate = Callable[..., torch.Tensor]


def use_plain_ops(*tensors: torch.Tensor | None) -> bool:
    """True where the custom autograd nodes bring nothing (or must not appear): tracing, scripting, compiling,
    no grad. Under ``torch.compile`` the nodes' nested ``torch.autograd.grad`` would break the graph in three per
    SCSA (and a model with many SCSA then runs past dynamo's recompile limit); plain ops give one graph that
    inductor fuses itself."""
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or not torch.is_grad_enabled()):
        return True
    return not any(t is not None and t.requires_grad for t in tensors)


def pool_plain(xs: torch.Tensor, kernel: tuple[int, int], mode: str) -> torch.Tensor:
    """Non-overlapping pooling with window ``kernel`` (floor: a remainder of rows/columns is dropped)."""
    if kernel == tuple(xs.shape[-2:]):  # a single cell: a plain reduction is cheaper than a pooling kernel
        return xs.mean(dim=(2, 3), keepdim=True) if mode == "avg" else xs.amax(dim=(2, 3), keepdim=True)
    if mode == "avg":
        return F.avg_pool2d(xs, kernel, kernel)
    return F.max_pool2d(xs, kernel, kernel)


#: Samples per chunk are chosen so that a chunk of the map holds about this many elements: the several passes over
#: a chunk then run in cache (about 4x faster than passes over a map in main memory) and the scratch buffers stay
#: small.
CHUNK_ELEMENTS = 2**20


def _chunks(batch: int, per_sample: int, elements: int | None = None) -> list[slice]:
    step = max(1, (elements or CHUNK_ELEMENTS) // max(1, per_sample))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


class _GatedStripProduct(torch.autograd.Function):
    """``xs * gate(pool(xs))`` with ``xs = x * a_h[..., None] * a_w[..., None, :]``.

    x (B, C, H, W), a_h (B, C, H), a_w (B, C, W); ``gate(y, *params)`` maps the pooled map y (B, C, H', W')
    to a per-channel gate (B, C, 1, 1).
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        a_h: torch.Tensor,
        a_w: torch.Tensor,
        kernel: tuple[int, int],
        mode: str,
        gate: ChannelGate,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        kh, kw = kernel
        hp, wp = h // kh, w // kw
        col_h, row_w = a_h.unsqueeze(3), a_w.unsqueeze(2)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if mode == "avg":
            # Tile sums of x * a_h over the tile's rows: a reduction over a middle dimension (vectorised along W),
            # unlike sums over a tile's few columns. Times a_w and summed over the tile's columns on this 1/kh-size
            # map they give the pooled map; backward reuses them for pooling's share of grad_a_w.
            rows = x.new_empty(b, c, hp, w)
            for ch in _chunks(b, c * h * w):
                o = torch.mul(x[ch], col_h[ch], out=out[ch])
                torch.sum(o[:, :, : hp * kh].unflatten(2, (hp, kh)), 3, out=rows[ch])
            y = (rows * row_w)[..., : wp * kw].unflatten(3, (wp, kw)).sum(4).div_(kh * kw)
            pool_state = rows
        else:
            torch.mul(x, col_h, out=out).mul_(row_w)
            y, pool_state = F.max_pool2d(out, kernel, kernel, return_indices=True)
        # The gate is an ordinary autograd graph on detached leaves, differentiated in backward.
        with torch.enable_grad():
            y_leaf = y.detach().requires_grad_()
            leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
            g = gate(y_leaf, *leaves)
        out.mul_(row_w * g.detach() if mode == "avg" else g.detach())
        ctx.save_for_backward(x, a_h, a_w, pool_state)
        ctx.kernel, ctx.mode = kernel, mode
        ctx.graph = (y_leaf, leaves, g)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, a_h, a_w, pool_state = ctx.saved_tensors
        y_leaf, leaves, g = ctx.graph
        kernel, mode = ctx.kernel, ctx.mode
        b, c, h, w = x.shape
        kh, kw = kernel
        hp, wp = h // kh, w // kw
        col_h, row_w, gd = a_h.unsqueeze(3), a_w.unsqueeze(2), g.detach()
        chunks = _chunks(b, c * h * w)
        # grad_x first: it can then take over the block of a just-freed full-size tensor (such as the output)
        # instead of fresh memory, whose page faults cost more than a pass over the map.
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        scratch = x.new_empty((chunks[0].stop - chunks[0].start, c, h, w))

        # Column sums of grad * x * a_h give d gate (sum over the map of grad * xs) and the product's share of
        # grad_a_w (gate times them).
        col_sums = a_w.new_empty(b, c, w)
        for ch in chunks:
            e = torch.mul(grad[ch], x[ch], out=scratch[: ch.stop - ch.start])
            torch.sum(e.mul_(col_h[ch]), 2, out=col_sums[ch])
        grad_g = (col_sums * a_w).sum(2)[:, :, None, None]
        wanted = [y_leaf] + [leaf for leaf in leaves if leaf.requires_grad]
        grads = list(torch.autograd.grad(g, wanted, grad_g, retain_graph=True))
        grad_y = grads.pop(0)
        grad_params = [grads.pop(0) if leaf.requires_grad else None for leaf in leaves]

        grad_a_w = gd.view(b, c, 1) * col_sums
        if mode == "avg":
            # pooling's gradient dy / (kh kw) spread over the tile's columns (zero in columns no tile covers),
            # to be broadcast over the tile's rows
            spread = grad_y.new_zeros(b, c, hp, w)
            spread[..., : wp * kw] = (grad_y / (kh * kw)).repeat_interleave(kw, dim=3)
            grad_a_w += (spread * pool_state).sum(2)  # pooling's share: sum_h spread * x * a_h = spread * rows
            spread = spread.unsqueeze(3)
        grad_a_h = a_h.new_empty(b, c, h)
        covered = hp * kh  # rows inside a pooling tile; rows past the last tile get no pooling gradient
        for ch in chunks:
            n = ch.stop - ch.start
            # d = dL/dxs = grad * gate + pooling's gradient, built in the buffer that becomes grad_x; for average
            # pooling in one pass (addcmul: spread + grad * gate) over the tiled rows
            d = grad_x[ch]
            if mode == "avg":
                torch.addcmul(spread[ch], grad[ch, :, :covered].unflatten(2, (hp, kh)), gd[ch].unsqueeze(4),
                              out=d[:, :, :covered].unflatten(2, (hp, kh)))
                if covered < h:
                    torch.mul(grad[ch, :, covered:], gd[ch], out=d[:, :, covered:])
            else:
                torch.mul(grad[ch], gd[ch], out=d)
                index = pool_state[ch].flatten(2)
                d.view(n, c, h * w).scatter_add_(2, index, grad_y[ch].flatten(2))
                hit = x[ch].reshape(n, c, h * w).gather(2, index) * a_h[ch].gather(2, index // w)
                grad_a_w[ch].scatter_add_(2, index % w, hit * grad_y[ch].flatten(2))
            # d * a_w serves both grad_a_h (sum over W of it times x) and grad_x (it times a_h): one pass fewer
            # than scaling the product for grad_a_h and d for grad_x separately
            d.mul_(row_w[ch])
            torch.sum(torch.mul(d, x[ch], out=scratch[:n]), 3, out=grad_a_h[ch])
            d.mul_(col_h[ch])
        return (grad_x, grad_a_h, grad_a_w, None, None, None, *grad_params)


class _DepthwiseConv1d(torch.autograd.Function):
    """Depthwise 1-D convolution with "same" padding (odd kernel) and bias, for x (B, C, L), weight (C, 1, k).

    oneDNN computes the weight gradient of a depthwise convolution several times slower than its forward pass on
    SMSA's short strips laid out (B, C, L), but fast on the same strips laid out channels-last (B, L, C): the
    backward pass takes the input gradient as the convolution with the flipped kernel and the weight gradient
    from channels-last copies of the (small) strips.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv1d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        c, k = x.shape[1], weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv1d(grad, weight.flip(-1), padding=k // 2, groups=c)
        if ctx.needs_input_grad[1]:
            # oneDNN's weight gradient is several times slower again on a strip shorter than the kernel (2x2 and
            # 3x3 maps); zeros appended to both the strip and its gradient add nothing to any tap's sum.
            short = k - x.shape[-1]
            if short > 0:
                x, grad = F.pad(x, (0, short)), F.pad(grad, (0, short))
            x_cl, grad_cl = (t.unsqueeze(3).contiguous(memory_format=torch.channels_last) for t in (x, grad))
            grad_w = torch.ops.aten.convolution_backward(
                grad_cl, x_cl, weight.unsqueeze(3), None, [1, 1], [k // 2, 0], [1, 1], False, [0, 0], c,
                [False, True, False],
            )[1].squeeze(3)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2))
        return grad_x, grad_w, grad_b


def depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=k // 2, groups=C)`` with a faster backward pass on CPU."""
    if use_plain_ops(x, weight, bias) or x.device.type != "cpu":
        return F.conv1d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])
    return _DepthwiseConv1d.apply(x, weight, bias)


#: Attention logits per chunk of ``channel_attention``: the (C/heads)^2 matrices of a chunk stay in cache.
ATTENTION_CHUNK = 2**19
#: Attention matrices up to this many elements in all (8 MiB in float32: C=256 at batch 32) are kept for backward;
#: larger ones are recomputed there, chunk by chunk, rather than held (C=512 at batch 32 would hold 32 MiB).
ATTENTION_KEEP = 2**21


class _ChannelAttention(torch.autograd.Function):
    """``softmax(scale * q k^T) @ v_mean`` for q, k (BH, T, N) and v_mean (BH, T, 1): T channels are the tokens.

    Backward never forms the gradient of the T x T logits: with A the attention matrix and z its output,
    dL/dlogits_ij = A_ij dz_i (v_j - z_i), whose products with k and q reduce to products of A with thin
    matrices. All products are written as (thin x T) @ (T x T), the orientation in which CPU GEMMs are fast, and
    the T x T matrices of all chunks share one buffer (scaled logits, then softmax in place), which is kept for
    backward when small (``ATTENTION_KEEP``) and recomputed there otherwise.
    """

    @staticmethod
    def _attention(q: torch.Tensor, k_t: torch.Tensor, scale: float, buffer: torch.Tensor) -> torch.Tensor:
        attn = buffer[: q.shape[0]]
        torch.baddbmm(attn, q, k_t, beta=0.0, alpha=scale, out=attn)
        return torch.softmax(attn, dim=2, out=attn)

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v_mean: torch.Tensor, scale: float) -> torch.Tensor:
        bh, t, _ = q.shape
        k_t = k.transpose(1, 2).contiguous()
        chunks = _chunks(bh, t * t, ATTENTION_CHUNK)
        keep = bh * t * t <= ATTENTION_KEEP
        buffer = q.new_empty(bh if keep else chunks[0].stop, t, t)
        z_t = q.new_empty(bh, 1, t)
        for ch in chunks:
            attn = _ChannelAttention._attention(q[ch], k_t[ch], scale, buffer[ch] if keep else buffer)
            torch.bmm(v_mean[ch].transpose(1, 2), attn.transpose(1, 2), out=z_t[ch])
        z = z_t.transpose(1, 2)
        ctx.save_for_backward(q, k_t, v_mean, z, buffer if keep else None)
        ctx.scale = scale
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_z: torch.Tensor):
        q, k_t, v_mean, z, kept = ctx.saved_tensors
        scale = ctx.scale
        bh, t, n = q.shape
        # thin operands as (BH, rows, T)
        q_t, v_t, z_t, dz_t = (a.transpose(1, 2) for a in (q, v_mean, z, grad_z))
        dzq = dz_t * q_t
        right = torch.cat([v_t * k_t, k_t], 1)  # A @ right: sum_j A_ij v_j k_j and sum_j A_ij k_j
        left = torch.cat([dzq, dzq * z_t, dz_t], 1)  # left @ A: sum_i A_ij dz_i q_i, ... z_i q_i, ... dz_i
        a_right, left_a = torch.empty_like(right), torch.empty_like(left)
        chunks = _chunks(bh, t * t, ATTENTION_CHUNK)
        buffer = None if kept is not None else q.new_empty(chunks[0].stop, t, t)
        for ch in chunks:
            if kept is not None:
                attn = kept[ch]
            else:
                attn = _ChannelAttention._attention(q[ch], k_t[ch], scale, buffer)
            torch.bmm(right[ch], attn.transpose(1, 2), out=a_right[ch])
            torch.bmm(left[ch], attn, out=left_a[ch])
        grad_q = (a_right[:, :n] - z_t * a_right[:, n:]) * (dz_t * scale)
        grad_k = (v_t * left_a[:, :n] - left_a[:, n : 2 * n]) * scale
        return grad_q.transpose(1, 2), grad_k.transpose(1, 2), left_a[:, 2 * n :].transpose(1, 2), None


def channel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """Mean over the feature dimension of ``scaled_dot_product_attention(q, k, v, dropout_p, scale=scale)``,
    keepdim. q, k, v: (..., T, N).

    The mean commutes with the attention's product by V, so only the mean of V enters the hand-written kernel.
    It is used on CPU for 2 to 8 features, where the fused SDPA kernel is slowest (its small GEMMs); with one
    feature or with 16 and more, and with dropout, SDPA is as fast or faster.
    """
    n = q.shape[-1]
    if use_plain_ops(q, k, v) or dropout_p or q.device.type != "cpu" or not 2 <= n <= 8:
        z = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        return z.mean(dim=-1, keepdim=True)
    lead, t = q.shape[:-2], q.shape[-2]
    flat = [a.reshape(-1, t, a.shape[-1]) for a in (q, k, v.mean(dim=-1, keepdim=True))]
    return _ChannelAttention.apply(*flat, scale).reshape(*lead, t, 1)


def gated_strip_product(
    x: torch.Tensor,
    a_h: torch.Tensor,
    a_w: torch.Tensor,
    kernel: tuple[int, int],
    mode: str,
    gate: ChannelGate,
    params: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """``xs * gate(pool(xs), *params)`` with ``xs = x * a_h[..., None] * a_w[..., None, :]``.

    ``kernel`` is the pooling window (= stride, floor mode) and ``mode`` ``"avg"`` or ``"max"``; ``gate`` maps the
    pooled (B, C, H', W') map and ``params`` to a (B, C, 1, 1) gate.
    """
    if use_plain_ops(x, a_h, a_w, *params):
        xs = x * a_h.unsqueeze(3) * a_w.unsqueeze(2)
        return xs * gate(pool_plain(xs, kernel, mode), *params)
    return _GatedStripProduct.apply(x, a_h, a_w, kernel, mode, gate, *params)
