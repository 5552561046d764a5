"""Gradient checks (float64, tiny tensors) for SCSA's custom autograd Functions and for the module that uses them."""

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
def test_module_gradcheck(kwargs, size, small_chunks):
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
        plain = m(x)  # no grad: plain ops
    torch.testing.assert_close(out, plain)


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
