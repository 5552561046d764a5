"""Gradient checks (float64, tiny tensors) for SCSA's custom autograd Functions and for the module that uses them."""

import math

import pytest
import torch
import torch.nn.functional as F

import space.scsa_ops as ops
from space.scsa import SCSA


def _gate(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A small channel gate with a parameter, standing in for PCSA."""
    return (y.mean(dim=(2, 3), keepdim=True) * weight[None, :, None, None]).sigmoid()


def _plain_gated_strip_product(x, a_h, a_w, kernel, mode, weight):
    xs = x * a_h.unsqueeze(3) * a_w.unsqueeze(2)
    return xs * _gate(ops.pool_plain(xs, kernel, mode), weight)


@pytest.fixture
def small_chunks(monkeypatch):
    # several chunks even on tiny maps, so that the chunked loops are checked across chunk boundaries
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 40)
    monkeypatch.setattr(ops, "ATTENTION_CHUNK", 40)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(
    "size,kernel",
    [((6, 6), (3, 3)), ((7, 5), (3, 2)), ((5, 4), (5, 4)), ((4, 6), (4, 3)), ((3, 3), (1, 1))],
)
def test_gated_strip_product_gradcheck(size, kernel, mode, small_chunks):
    torch.manual_seed(0)
    h, w = size
    x = torch.randn(3, 4, h, w, dtype=torch.float64, requires_grad=True)
    a_h = torch.rand(3, 4, h, dtype=torch.float64, requires_grad=True)
    a_w = torch.rand(3, 4, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def fused(x, a_h, a_w, weight):
        return ops.gated_strip_product(x, a_h, a_w, kernel, mode, _gate, [weight])

    assert torch.autograd.gradcheck(fused, (x, a_h, a_w, weight))
    out = fused(x, a_h, a_w, weight)
    assert out.grad_fn.name().endswith("_GatedStripProductBackward")
    expected = _plain_gated_strip_product(x, a_h, a_w, kernel, mode, weight)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (x, a_h, a_w, weight))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, a_h, a_w, weight))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_gated_strip_product_partial_requires_grad():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)  # e.g. the first layer's input
    a_h = torch.rand(2, 4, 6, dtype=torch.float64, requires_grad=True)
    a_w = torch.rand(2, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, dtype=torch.float64)  # a frozen gate
    assert torch.autograd.gradcheck(
        lambda a_h, a_w: ops.gated_strip_product(x, a_h, a_w, (3, 3), "avg", _gate, [weight]), (a_h, a_w)
    )


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("tokens,features", [(6, 3), (5, 2), (4, 1)])
def test_channel_attention_gradcheck(tokens, features, keep, small_chunks, monkeypatch):
    monkeypatch.setattr(ops, "ATTENTION_KEEP", 10**6 if keep else 0)
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, tokens, features, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: ops.channel_attention(q, k, v, 0.7), (q, k, v))
    z = ops.channel_attention(q, k, v, 0.7)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.7).mean(dim=-1, keepdim=True)
    torch.testing.assert_close(z, expected)


def _graph_names(t: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``t``."""
    seen, todo = set(), [t.grad_fn]  # by node, not by name: a graph holds several nodes of one kind
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {node.name() for node in seen}


@pytest.fixture
def series_everywhere(monkeypatch):
    # the series form on every one-feature attention, however few the tokens
    monkeypatch.setattr(ops, "SERIES_TERM_COST", 0)
    monkeypatch.setattr(ops, "SERIES_MIN_LOGITS", 0)


@pytest.mark.parametrize(("heads", "chunk"), [(1, None), (3, None), (3, 1)])
def test_series_attention_equals_the_softmax_and_gradchecks(heads, chunk, series_everywhere, monkeypatch):
    if chunk is not None:  # one row per chunk: the powers are computed again in backward
        monkeypatch.setattr(ops, "SERIES_CHUNK", chunk)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, heads, 12, 1, dtype=torch.float64, requires_grad=True) for _ in range(3))
    z = ops.channel_attention(q, k, v, 0.9)
    assert "_SeriesAttentionBackward" in _graph_names(z)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.9)
    torch.testing.assert_close(z, expected, rtol=1e-11, atol=1e-11)
    assert torch.autograd.gradcheck(lambda q, k, v: ops.channel_attention(q, k, v, 0.9), (q, k, v))


def test_series_attention_in_float32_agrees_with_the_float64_softmax():
    # the model's dtype: the series (in float64 inside) is as close to the exact softmax as SDPA in float32 is
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 1, 512, 1) * 3 for _ in range(3))
    z = ops.channel_attention(q, k, v, 512**-0.5)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=512**-0.5)
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=512**-0.5)
    assert z.dtype == torch.float32
    assert (z.double() - exact).abs().max() <= (sdpa.double() - exact).abs().max() + 1e-7


@pytest.mark.parametrize("bound", [0.0, 0.3, 1.0, 2.5, 4.0])
def test_series_terms_bound_the_truncation_of_exp_and_its_derivative(bound):
    terms = ops.series_terms(bound)
    x = torch.linspace(-bound, bound, 101, dtype=torch.float64)
    for m in (terms, terms - 1):  # the series and its derivative's
        # the tail itself, summed far out (exp(x) minus the partial sum would be float64's rounding of exp(x))
        term = x**m / float(math.factorial(m))
        tail = torch.zeros_like(x)
        for j in range(m + 1, m + 80):
            tail, term = tail + term, term * x / j
        assert (tail.abs() / math.exp(-bound)).max() <= ops.SERIES_TOL
    assert ops.series_terms(bound + 0.5) > terms


def test_series_attention_falls_back_to_the_softmax_past_its_bound(series_everywhere):
    q, k, v = (torch.randn(2, 1, 64, 1, requires_grad=True) for _ in range(3))
    assert ops.series_terms(1e3) is None
    z = ops.channel_attention(q * 1e3, k, v, 1.0)  # logits far past the series' bound: the softmax itself
    assert "_SeriesAttentionBackward" not in _graph_names(z)
    torch.testing.assert_close(z, F.scaled_dot_product_attention(q * 1e3, k, v, scale=1.0))


@pytest.mark.parametrize(("tokens", "series"), [(256, False), (512, False), (960, True)])
def test_series_attention_runs_where_it_costs_fewer_logits_than_the_softmax(tokens, series):
    # one row, small logits (a few terms): the series' fixed cost outweighs 256^2 and 512^2 exponentials, not 960^2
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, tokens, 1, requires_grad=True) for _ in range(3))
    z = ops.channel_attention(q, k, v, 0.01)
    assert ("_SeriesAttentionBackward" in _graph_names(z)) is series
    torch.testing.assert_close(z, F.scaled_dot_product_attention(q, k, v, scale=0.01), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,length", [(1, 7), (3, 7), (5, 7), (9, 8), (13, 4)])  # strips shorter than the kernel
def test_depthwise_conv1d_gradcheck(kernel, length):
    torch.manual_seed(0)
    x = torch.randn(2, 3, length, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.depthwise_conv1d, (x, weight, bias))
    expected = F.conv1d(x, weight, bias, padding=kernel // 2, groups=3)
    torch.testing.assert_close(ops.depthwise_conv1d(x, weight, bias), expected)


MODULE_CASES = [
    dict(),
    dict(gate="softmax"),
    dict(pool="max"),
    dict(window=-1),
    dict(window=9),  # larger than the map
    dict(window=3, heads=2, qkv_bias=True),
    dict(window=2, heads=4, groups=8, kernels=(3,) * 8),
    dict(window=4, groups=2, kernels=(3, 5), pool="max", gate="softmax"),
    dict(window=3, heads=2, gate="softmax", qkv_bias=True),
]


def _case_id(kw: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


@pytest.mark.parametrize("kwargs", MODULE_CASES, ids=_case_id)
@pytest.mark.parametrize("size", [(7, 7), (9, 6)])
def test_module_gradcheck(kwargs, size, small_chunks, series_everywhere):
    torch.manual_seed(0)
    m = SCSA(16, **kwargs).double()
    with torch.no_grad():  # non-trivial norms so that every parameter matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 16, *size, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())
    # fast mode: random projections of the full Jacobian (the module has a few hundred parameters)
    assert torch.autograd.gradcheck(lambda x, *_: m(x), (x, *params), fast_mode=True)


@pytest.mark.parametrize("kwargs", MODULE_CASES[:6], ids=lambda kw: ",".join(kw) or "default")
def test_module_fused_path_equals_plain_ops(kwargs):
    torch.manual_seed(0)
    m = SCSA(16, **kwargs).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 16, 9, 8, dtype=torch.float64, requires_grad=True)
    out = m(x)
    with torch.no_grad():
        inference = m(x)  # the node's forward passes without the node
        plain = torch.jit.trace(m, x, check_trace=False)(x)  # traced: plain aten ops
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(inference, plain)


def test_custom_functions_bypassed_without_grad_and_under_tracing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("custom autograd Function used")

    for fn in (ops._GatedStripProduct, ops._ChannelAttention, ops._DepthwiseConv1d):
        monkeypatch.setattr(fn, "apply", refuse)
    m = SCSA(16, window=3)
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        m(x)
    traced = torch.jit.trace(m, x.requires_grad_())  # a FLOP counter traces the module like this
    assert "PythonOp" not in str(traced.graph)
    assert all(p.requires_grad for p in m.parameters())
    with pytest.raises(AssertionError, match="custom autograd Function used"):
        m(x)


def test_series_attention_serves_inference_and_is_bypassed_under_tracing(series_everywhere, monkeypatch):
    # the series form of one-feature attention is no autograd trick: inference (the latency objective) uses it
    # too. A tracer (a FLOP counter) still sees the softmax.
    def refuse(*args, **kwargs):
        raise AssertionError("series used")

    monkeypatch.setattr(ops._SeriesAttention, "apply", refuse)
    m = SCSA(16, window=-1)
    x = torch.randn(2, 16, 9, 9)
    # as fvcore traces: no check run of the module outside the tracer
    assert "PythonOp" not in str(torch.jit.trace(m, x, check_trace=False).graph)
    with pytest.raises(AssertionError, match="series used"), torch.no_grad():
        m(x)


def test_compiles_to_one_graph_with_the_same_values_and_gradients():
    # fullgraph=True raises at the first graph break: under torch.compile SCSA must be plain ops (the custom nodes'
    # nested autograd.grad breaks the graph); aot_eager traces forward and backward without building C++.
    torch.manual_seed(0)
    m = SCSA(16, window=3)
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    eager = m(x)
    eager.square().sum().backward()
    grads = [x.grad, *(p.grad for p in m.parameters())]
    x.grad = None
    m.zero_grad(set_to_none=True)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager)
    for got, want in zip([x.grad, *(p.grad for p in m.parameters())], grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kwargs", [dict(window=3), dict(window=3, pool="max"), dict(window=-1)], ids=_case_id)
def test_channels_last_input_gives_the_same_values_and_gradients_in_its_own_format(kwargs, small_chunks):
    # a proxy trains channels-last: SCSA must neither change the values nor hand the next layer another layout
    torch.manual_seed(0)
    m = SCSA(16, **kwargs).double()
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.contiguous(memory_format=fmt).requires_grad_()
        out = m(xi)
        assert out.is_contiguous(memory_format=fmt)
        grads = torch.autograd.grad(out.square().sum(), (xi, *m.parameters()))
        assert grads[0].is_contiguous(memory_format=fmt) or kwargs.get("pool") == "max"
        with torch.no_grad():  # the inference path: the same passes without the autograd node
            inferred = m(xi)
        assert inferred.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(inferred, out)
        results.append((out, grads))
    (out, grads), (out_cl, grads_cl) = results
    torch.testing.assert_close(out_cl, out)
    for got, want in zip(grads_cl, grads):
        torch.testing.assert_close(got, want)


def test_strips_of_a_channels_last_map_come_out_channels_innermost():
    # the layout the passes over a channels-last map read them fastest in; the values are the plain means
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    for fmt, inner in ((torch.contiguous_format, False), (torch.channels_last, True)):
        xi = x.contiguous(memory_format=fmt)
        x_h, x_w = ops.strip_means(xi)
        torch.testing.assert_close(x_h, x.mean(3))
        torch.testing.assert_close(x_w, x.mean(2))
        assert (x_h.stride(1) == 1, x_w.stride(1) == 1) == (inner, inner)
        a = torch.randn(2, 5, 4, dtype=torch.float64)
        laid = ops.in_map_layout(a, xi)
        assert laid.stride(1) == 1 if inner else laid is a
        torch.testing.assert_close(laid, a)
