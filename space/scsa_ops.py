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

On a channels-last map (as a proxy trains) the strips meet the map with C innermost (:func:`in_map_layout`), and
reductions over its rows or columns write into tensors laid out the same way: a pass that broadcasts a (B, C, L)
strip over such a map, or reduces the map into one, otherwise strides across the strip at every element.

Everything is exact (the same products and sums as the plain ops, in another order) and is bypassed while
tracing (FLOP counters and exporters see plain aten ops) and under ``torch.compile`` (one graph for inductor to
fuse). When no gradient is needed the forward passes run without the autograd node (inference).

PCSA on a map its pooling window covers (one pooled cell, one feature per channel token; most maps of a proxy and
the last stage at 224 px) spends most of SCSA's time on CPU in the C^2 exponentials of its softmax, with or
without gradients. There the logits are products of two scalars and the attention is evaluated as a power series
(:func:`channel_attention`), in float64 with a truncation error bounded far below float32's rounding, in training
and inference alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ChannelGate = Callable[..., torch.Tensor]


def tracing_or_compiling() -> bool:
    """True while a tracer, TorchScript or ``torch.compile`` records the module: it must see plain aten ops (FLOP
    counters count them, inductor fuses them) and no data-dependent Python branches."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def use_plain_ops(*tensors: torch.Tensor | None) -> bool:
    """True where the custom autograd nodes bring nothing (or must not appear): tracing, scripting, compiling,
    no grad. Under ``torch.compile`` the nodes' nested ``torch.autograd.grad`` would break the graph in three per
    SCSA (and a model with many SCSA then runs past dynamo's recompile limit); plain ops give one graph that
    inductor fuses itself."""
    if tracing_or_compiling() or not torch.is_grad_enabled():
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


def channels_inner(x: torch.Tensor) -> bool:
    """True for a (B, C, H, W) map whose channels are innermost in memory (channels-last, as a proxy trains)."""
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1


def in_map_layout(strip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The strip (B, C, L) laid out as x: C innermost ((B, L, C) in memory) for a channels-last x, otherwise as it
    is. A pass over a channels-last map that broadcasts a (B, C, L) strip reads it along C: with C innermost that
    read is contiguous and vectorised, 3-6x faster on CPU than striding across the strip's rows."""
    if channels_inner(x) and strip.stride(1) != 1:
        return strip.transpose(1, 2).contiguous().transpose(1, 2)
    return strip


def _empty_in_map_layout(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised (B, C, ...) tensor in x's layout (see :func:`in_map_layout`). A reduction over a
    channels-last map's H or W written into it runs vectorised along C (5-25x faster on CPU than into a (B, C, L)
    tensor, whose layout makes it reduce strided)."""
    if not channels_inner(x):
        return x.new_empty(shape)
    b, c, *rest = shape
    return x.new_empty(b, *rest, c).movedim(-1, 1)


def strip_means(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SMSA's strip means of x (B, C, H, W): over W (B, C, H) and over H (B, C, W).

    As sums divided on the strip: sum's backward is a broadcast view that autograd adds in place into grad_x,
    where mean's materialises a full-size map. A channels-last map is reduced through its (B, H, W, C) view (see
    :func:`_empty_in_map_layout`), and its strips come out with C innermost: one view per strip, so that each
    strip's gradient is added into grad_x on its own (through a shared view autograd would first add the two
    broadcast gradients into a fresh full-size map)."""
    h, w = x.shape[-2:]
    if channels_inner(x):
        x_h, x_w = x.permute(0, 2, 3, 1).sum(2), x.permute(0, 2, 3, 1).sum(1)
        return x_h.div(w).transpose(1, 2), x_w.div(h).transpose(1, 2)
    return x.sum(dim=3).div(w), x.sum(dim=2).div(h)


def _strip_product_and_pool(
    x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor, kernel: tuple[int, int], mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward passes over the full map: ``(out, y, pool_state)`` with y the pooled ``x * a_h * a_w``.

    For average pooling ``out`` holds ``x * a_h`` only (still to be scaled by ``a_w`` times the gate) and
    ``pool_state`` the tile row sums; for max pooling ``out`` is ``x * a_h * a_w`` and ``pool_state`` the indices.
    a_h and a_w are expected in x's layout (:func:`in_map_layout`).
    """
    b, c, h, w = x.shape
    kh, kw = kernel
    hp, wp = h // kh, w // kw
    col_h, row_w = a_h.unsqueeze(3), a_w.unsqueeze(2)
    out = torch.empty_like(x)  # x's memory format: see _GatedStripProduct.backward
    if mode == "avg":
        # Tile sums of x * a_h over the tile's rows: a reduction over a middle dimension (vectorised along W, or
        # along C on a channels-last map), unlike sums over a tile's few columns. Times a_w and summed over the
        # tile's columns on this 1/kh-size map they give the pooled map; backward reuses them for pooling's share
        # of grad_a_w.
        rows = _empty_in_map_layout(x, b, c, hp, w)
        for ch in _chunks(b, c * h * w):
            o = torch.mul(x[ch], col_h[ch], out=out[ch])
            torch.sum(o[:, :, : hp * kh].unflatten(2, (hp, kh)), 3, out=rows[ch])
        y = (rows * row_w)[..., : wp * kw].unflatten(3, (wp, kw)).sum(4).div_(kh * kw)
        return out, y, rows
    torch.mul(x, col_h, out=out).mul_(row_w)
    y, indices = F.max_pool2d(out, kernel, kernel, return_indices=True)
    return out, y, indices


def _apply_gate(out: torch.Tensor, a_w: torch.Tensor, g: torch.Tensor, mode: str) -> torch.Tensor:
    """The last pass of :func:`_strip_product_and_pool`'s ``out``, in place: times the gate g (B, C, 1, 1), and for
    average pooling times ``a_w`` too, which ``out`` does not hold yet."""
    return out.mul_(a_w.unsqueeze(2) * g if mode == "avg" else g)


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
        a_h, a_w = in_map_layout(a_h, x), in_map_layout(a_w, x)
        out, y, pool_state = _strip_product_and_pool(x, a_h, a_w, kernel, mode)
        # The gate is an ordinary autograd graph on detached leaves, differentiated in backward.
        with torch.enable_grad():
            y_leaf = y.detach().requires_grad_()
            leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
            g = gate(y_leaf, *leaves)
        _apply_gate(out, a_w, g.detach(), mode)
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
        # In x's memory format (channels-last as a proxy trains: otherwise every pass mixes layouts and the next
        # convolution copies); max pooling's scatter needs a contiguous (B, C, H*W) view of it.
        grad_x = torch.empty_like(x) if mode == "avg" else torch.empty(x.shape, dtype=x.dtype, device=x.device)
        scratch = torch.empty_like(x[chunks[0]])

        # Column sums of grad * x * a_h give d gate (sum over the map of grad * xs) and the product's share of
        # grad_a_w (gate times them).
        col_sums = _empty_in_map_layout(x, b, c, w)
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
            spread = _empty_in_map_layout(x, b, c, hp, w).zero_()
            spread[..., : wp * kw] = (grad_y / (kh * kw)).repeat_interleave(kw, dim=3)
            grad_a_w += (spread * pool_state).sum(2)  # pooling's share: sum_h spread * x * a_h = spread * rows
            spread = spread.unsqueeze(3)
        grad_a_h = _empty_in_map_layout(x, b, c, h)
        if mode != "avg":  # d is contiguous (B, C, H, W) for max pooling's scatter: strips to match it
            col_h, row_w = a_h.contiguous().unsqueeze(3), a_w.contiguous().unsqueeze(2)
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


#: Bound on the series form's truncation error, relative to the exponentials' sums (in float64): far below float32's
#: rounding (6e-8), so its values and gradients are the softmax's to the precision of the model.
SERIES_TOL = 1e-12
#: Where the series form pays (measured on CPU, one thread, forward + backward and inference at batch 32, inference
#: at batch 1, 64 to 960 tokens and 4 to 40 terms): a term costs about as much as 2 to 3.5 of the softmax's logits
#: per token with gradients and 4 without, and its fixed cost of some 40 small ops as 2^18 logits in all. So the
#: series runs where ``rows T^2 >= 2^18 + 3 rows T M`` (its cost in logits), and never past 40 terms.
SERIES_TERM_COST, SERIES_MIN_LOGITS, SERIES_MAX_TERMS = 3, 2**18, 40


def series_terms(bound: float) -> int | None:
    """Terms M of exp's Taylor series that keep the truncation error of every ``exp(x)``, ``|x| <= bound``, and of
    its derivative's series (one term fewer) below ``SERIES_TOL`` relative to a row's sum, whose every term is at
    least ``exp(-bound)``: the smallest M with ``bound^(M-1) / (M-1)! * exp(2 bound) <= SERIES_TOL``. ``None`` past
    ``SERIES_MAX_TERMS``."""
    if bound <= 0.0:
        return 2
    log_term, log_tol = 0.0, math.log(SERIES_TOL) - 2.0 * bound
    for k in range(1, SERIES_MAX_TERMS):
        log_term += math.log(bound) - math.log(k)  # log(bound^k / k!)
        if log_term <= log_tol:
            return k + 1
    return None


def _powers(x: torch.Tensor, terms: int) -> torch.Tensor:
    """``x^0 .. x^(terms-1)`` of x (R, T) as one (terms, R, T) tensor.

    Filled by repeated doubling: ``x^(n-1) * [x^1 .. x^(n-1)]`` gives the next n - 1 powers in one broadcast
    product that runs along T, so about log2(terms) passes. A cumulative product along a short inner term axis
    (``cumprod``) runs element by element on CPU: it cost 5 ns per element, most of the series' time.
    """
    p = x.new_empty(terms, *x.shape)
    p[0].fill_(1.0)
    p[1].copy_(x)
    done = 2
    while done < terms:
        n = min(done - 1, terms - done)
        torch.mul(p[done - 1], p[1 : 1 + n], out=p[done : done + n])
        done += n
    return p


def _inverse_factorials(terms: int, like: torch.Tensor) -> torch.Tensor:
    """``1 / m!`` for m < terms, shaped (terms, 1, 1) to scale a :func:`_powers` tensor."""
    return like.new_tensor([1.0 / math.factorial(m) for m in range(terms)]).view(terms, 1, 1)


def _series_powers(a: torch.Tensor, u: torch.Tensor, inverse_factorials: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The series' powers of a chunk of rows: ``a^m`` and ``u^m / m!``, each (terms, rows, T)."""
    terms = inverse_factorials.shape[0]
    return _powers(a, terms), _powers(u, terms).mul_(inverse_factorials)


#: Elements of one (terms, rows, T) tensor of powers: the series runs over chunks of rows this size so that a chunk's
#: powers stay in cache and are served from the heap (a fresh tensor of several MiB is mapped and page-faulted anew
#: on every call, which made the series' time vary 3-4-fold from call to call at 960 tokens).
SERIES_CHUNK = 2**20


class _SeriesAttention(torch.autograd.Function):
    """``softmax_j(a_i u_j) @ v`` for one feature per token as a power series: a, u, v (R, T) in float64.

    With ``U[m, j] = u_j^m / m!`` and ``A[m, i] = a_i^m`` ((M, R, T) tensors, the term axis outermost so that every
    elementwise pass runs along T), the moments ``P = [1, v]^T U^T`` (R, 2, M) give every row's sums
    ``P A = [sum_j exp(a_i u_j), sum_j exp(a_i u_j) v_j]`` and z is their ratio.

    Backward by hand (autograd's gradient of the powers costs several times the rest). Where the rows take more
    than one chunk (:data:`SERIES_CHUNK`) the powers are computed again chunk by chunk rather than kept: they cost
    a few products. Every product is a thin matrix (2 or 3 rows) times an (M x T) or (T x M) one, the orientation
    in which CPU GEMMs are fast (3-4x faster than the same product with the thin matrix on the right, at 960 tokens
    and 35 terms).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, u: torch.Tensor, v: torch.Tensor, terms: int) -> torch.Tensor:
        rows, t = a.shape
        ones_v = torch.stack([torch.ones_like(v), v], 1)  # (R, 2, T)
        moments, sums = a.new_empty(rows, 2, terms), a.new_empty(rows, 2, t)
        chunks = _chunks(rows, terms * t, SERIES_CHUNK)
        inverse_factorials = _inverse_factorials(terms, u)
        for ch in chunks:
            a_pow, u_pow = _series_powers(a[ch], u[ch], inverse_factorials)
            torch.bmm(ones_v[ch], u_pow.permute(1, 2, 0), out=moments[ch])
            torch.bmm(moments[ch], a_pow.transpose(0, 1), out=sums[ch])
        den = sums[:, 0]
        z = sums[:, 1] / den
        ctx.save_for_backward(a, u, v, moments, den, z)
        # the powers of a single chunk are small: kept rather than computed again
        ctx.terms, ctx.powers = terms, (a_pow, u_pow) if len(chunks) == 1 else None
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_z: torch.Tensor):
        a, u, v, moments, den, z = ctx.saved_tensors
        terms, (rows, t) = ctx.terms, a.shape
        # z = num / den: the gradients of the two sums, (R, 2, T) in the order of ``moments``' rows
        grad_sums = torch.stack([-grad_z * z, grad_z], 1).div_(den.unsqueeze(1))
        # d/da_i sum_m a_i^m P_m = sum_m m a_i^(m-1) P_m: the derivative series at every a_i (``slopes``), then its
        # dot with the sums' gradients
        derived = moments[:, :, 1:] * torch.arange(1, terms, dtype=a.dtype, device=a.device)
        slopes = torch.empty_like(grad_sums)
        # moments = [1, v]^T U^T: d/dv_j = sum_m dP1_m U_mj and, with dU_m/du = U_(m-1),
        # d/du_j = sum_m (dP0_(m+1) + v_j dP1_(m+1)) U_mj: one product of ``left`` = [dP1; dP shifted by a term]
        # with U, ``w`` (R, 3, T)
        left, w = a.new_zeros(rows, 3, terms), a.new_empty(rows, 3, t)
        inverse_factorials = None if ctx.powers else _inverse_factorials(terms, u)
        for ch in _chunks(rows, terms * t, SERIES_CHUNK):
            a_pow, u_pow = ctx.powers or _series_powers(a[ch], u[ch], inverse_factorials)
            torch.bmm(derived[ch], a_pow[:-1].transpose(0, 1), out=slopes[ch])
            grad_moments = torch.bmm(grad_sums[ch], a_pow.permute(1, 2, 0))  # (r, 2, M)
            left[ch, 0] = grad_moments[:, 1]
            left[ch, 1:, :-1] = grad_moments[:, :, 1:]
            torch.bmm(left[ch], u_pow.transpose(0, 1), out=w[ch])
        grad_a = (slopes * grad_sums).sum(1)
        grad_u = torch.addcmul(w[:, 1], v, w[:, 2])
        return grad_a, grad_u, w[:, 0], None


def _series_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor | None:
    """``softmax(scale * q k^T) @ v`` for one feature per token, q, k, v (R, T, 1), without the T x T matrix.

    With one feature the logits are the products ``a_i u_j`` of two scalars (``a = scale * q``, ``u = k - c``: a
    shift of k changes no softmax row), so every row's sums of exponentials are one power series in ``a_i``
    whose coefficients are the moments of ``u`` shared by all rows::

        sum_j exp(a_i u_j) v_j = sum_m a_i^m * (sum_j v_j u_j^m / m!)

    A few (T x M) products replace T^2 exponentials. The number of terms M follows from the largest
    ``|a_i u_j|`` (``series_terms``); ``c`` centres k's range to keep it small. Computed in float64, so the
    alternating sums lose nothing to cancellation at the bounds allowed. Returns ``None`` where the series would
    cost more than the softmax.
    """
    rows, t, _ = q.shape
    if rows * t * t < SERIES_MIN_LOGITS:
        return None
    a, kd = q.double().mul(scale), k.double()
    with torch.no_grad():
        lo, hi = torch.aminmax(kd, dim=1, keepdim=True)
        center = (hi + lo) / 2
        bound = float((a.abs().amax(1, keepdim=True) * (hi - lo) / 2).max())
    terms = series_terms(bound)
    if terms is None or rows * t * t < SERIES_MIN_LOGITS + SERIES_TERM_COST * rows * t * terms:
        return None
    z = _SeriesAttention.apply(*(x.reshape(rows, t) for x in (a, kd - center, v.double())), terms)
    return z.to(q.dtype).view(rows, t, 1)


def channel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """Mean over the feature dimension of ``scaled_dot_product_attention(q, k, v, dropout_p, scale=scale)``,
    keepdim. q, k, v: (..., T, N).

    The mean commutes with the attention's product by V, so only the mean of V enters the hand-written kernel.
    It is used on CPU for 2 to 8 features, where the fused SDPA kernel is slowest (its small GEMMs). With one
    feature (PCSA on a map the pooling window covers, most maps of a proxy) the softmax's T^2 exponentials are
    most of SCSA's time on CPU, and the series form replaces them (training and inference alike). With 16 and more
    features, and with dropout, SDPA is as fast or faster.
    """
    n = q.shape[-1]
    if n == 1 and not dropout_p and q.device.type == "cpu" and not tracing_or_compiling():
        lead, t = q.shape[:-2], q.shape[-2]
        z = _series_attention(*(a.reshape(-1, t, 1) for a in (q, k, v)), scale)
        if z is not None:
            return z.reshape(*lead, t, 1)
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
    if tracing_or_compiling():
        xs = x * a_h.unsqueeze(3) * a_w.unsqueeze(2)
        return xs * gate(pool_plain(xs, kernel, mode), *params)
    if use_plain_ops(x, a_h, a_w, *params):
        # Inference: the node's forward passes without the node (one full-size buffer instead of three, a pass
        # fewer for average pooling).
        a_h, a_w = in_map_layout(a_h, x), in_map_layout(a_w, x)
        out, y, _ = _strip_product_and_pool(x, a_h, a_w, kernel, mode)
        return _apply_gate(out, a_w, gate(y, *params), mode)
    return _GatedStripProduct.apply(x, a_h, a_w, kernel, mode, gate, *params)
