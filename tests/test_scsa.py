import pytest
import torch
import torch.nn.functional as F

from space.scsa import SCSA, convert_official_state_dict


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_reference_vectors_reproduced(reference_vectors):
    assert len(reference_vectors) >= 7
    for case in reference_vectors:
        module = SCSA.from_official(case["config"], case["state_dict"]).eval()
        with torch.no_grad():
            out = module(case["input"])
        assert out.shape == case["output"].shape
        assert rel_err(out, case["output"]) <= 1e-5, case["config"]


def test_reference_vectors_reproduced_in_training_mode_with_grad(reference_vectors):
    # The training path (custom autograd functions) must compute the same values as the inference path.
    for case in reference_vectors:
        module = SCSA.from_official(case["config"], case["state_dict"]).train()
        x = case["input"].clone().requires_grad_(True)
        out = module(x)
        out.sum().backward()
        assert rel_err(out.detach(), case["output"]) <= 1e-5
        assert torch.isfinite(x.grad).all()


def test_official_state_dict_round_trip(reference_vectors):
    case = reference_vectors[0]
    converted = convert_official_state_dict(case["state_dict"])
    module = SCSA.from_official(case["config"])
    assert set(converted) == set(module.state_dict())
    module.load_state_dict(converted)  # strict: every key present, shapes right
    assert torch.equal(module.qkv_weight[0], case["state_dict"]["q.weight"].reshape(-1))
    assert torch.equal(module.dwc[3].weight, case["state_dict"]["global_dwc_l.weight"])


def test_parameter_count_matches_paper():
    # 16·C per module with 4 groups and kernels 3/5/7/9
    for c in (64, 128, 256, 512):
        assert sum(p.numel() for p in SCSA(c).parameters()) == 16 * c


@pytest.mark.parametrize("size", [(4, 4), (1, 1), (3, 9), (6, 2)])
def test_maps_smaller_than_window_run(size):
    m = SCSA(32, window=7).eval()
    x = torch.randn(2, 32, *size)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_small_map_rule_is_clamped_window():
    # A 4x4 map with window 7 is pooled with a 4x4 window: the same as global average pooling.
    torch.manual_seed(0)
    m = SCSA(32, window=7).eval()
    g = SCSA(32, window=-1).eval()
    g.load_state_dict(m.state_dict())
    x = torch.randn(2, 32, 4, 4)
    assert torch.allclose(m(x), g(x), atol=1e-6)
    assert m.pooled_size(4, 4) == (1, 1)
    assert m.pooled_size(15, 4) == (2, 1)
    assert m.pooled_size(15, 15) == (2, 2)


def test_unchanged_where_the_window_fits():
    # where both sides >= window, the clamp is a no-op: pooling is the authors' AvgPool2d(window, window)
    m = SCSA(16, groups=2, kernels=(3, 5), window=4).eval()
    x = torch.randn(1, 16, 9, 13)
    assert m._pool(x).shape == F.avg_pool2d(x, 4, 4).shape
    assert torch.equal(m._pool(x), F.avg_pool2d(x, 4, 4))


@pytest.mark.parametrize("groups,kernels", [(2, (3, 5)), (4, (1, 3, 5, 7)), (8, (3,) * 8)])
@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_general_settings_run_and_backprop(groups, kernels, gate, pool):
    m = SCSA(64, groups=groups, kernels=kernels, window=4, heads=2, gate=gate, pool=pool, attn_drop=0.1,
             qkv_bias=True)
    x = torch.randn(2, 64, 12, 10, requires_grad=True)
    m(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())


def test_fused_convolution_equals_group_convolutions():
    torch.manual_seed(0)
    m = SCSA(32, groups=4, kernels=(1, 3, 5, 9)).eval()
    x = torch.randn(2, 32, 11, 7)
    x_h = x.mean(3)
    parts = torch.chunk(x_h, 4, dim=1)
    expected = torch.cat([conv(p) for conv, p in zip(m.dwc, parts)], dim=1)
    weight, bias = m._fused_kernel()
    got = F.conv1d(x_h, weight, bias, padding=4, groups=32)
    assert torch.allclose(got, expected, atol=1e-6)


def test_padded_taps_never_learn():
    m = SCSA(8, groups=2, kernels=(1, 5))
    x = torch.randn(2, 8, 6, 6)
    m(x).sum().backward()
    assert m.dwc[0].weight.grad.shape == (4, 1, 1)  # the 1-tap kernel keeps one parameter per channel


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(channels=30, groups=4), "channels=30 is not divisible by groups=4"),
        (dict(channels=32, heads=3), "channels=32 is not divisible by heads=3"),
        (dict(channels=32, kernels=(3, 4, 5, 7)), "odd"),
        (dict(channels=32, kernels=(3, 5, 7)), "one kernel per group"),
        (dict(channels=32, gate="relu"), "gate='relu' is unknown"),
        (dict(channels=32, pool="median"), "pool='median' is unknown"),
        (dict(channels=32, window=0), "window=0"),
        (dict(channels=32, attn_drop=1.5), "attn_drop"),
        (dict(channels=0), "channels"),
        (dict(channels=32, groups=0), "groups"),
    ],
)
def test_invalid_settings_raise_precise_errors(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        SCSA(**kwargs)


def test_from_official_rejects_bad_config():
    with pytest.raises(ValueError, match="down_sample_mode"):
        SCSA.from_official({"dim": 32, "down_sample_mode": "recombination"})
    with pytest.raises(ValueError, match="unknown SCSA config keys"):
        SCSA.from_official({"dim": 32, "heads": 2})
    with pytest.raises(ValueError, match="not divisible by groups=4"):
        SCSA.from_official({"dim": 30})


def test_wrong_input_channels():
    with pytest.raises(ValueError, match=r"expects \(B, 32, H, W\)"):
        SCSA(32)(torch.randn(1, 16, 8, 8))
