"""FLOPs / params of built configs, and SCSA's count against a formula derived by hand.

Each resnet50 config is traced once per session (a few seconds each); resnet18 checks run at small sizes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from evaluators import flops as flops_mod
from evaluators.flops import Cost, attention_scopes, count_module, measure
from space import ArchConfig, build_model
from space.build import build_deployed
from space.config import StageConfig
from space.scsa import SCSA

ROOT = Path(__file__).resolve().parents[1]

ATTENTION_OPS = {
    "aten::mean", "aten::sigmoid", "aten::softmax", "aten::mul", "aten::add", "aten::div", "aten::avg_pool2d",
    "aten::max_pool2d", "aten::amax", "aten::group_norm", "aten::scaled_dot_product_attention", "aten::pad",
    "aten::expand_as", "aten::relu_",
}  # fmt: skip


def scsa_flops(c, h, w, groups=4, kernels=(3, 5, 7, 9), window=7, heads=1, gate="sigmoid", pool="avg") -> int:
    """One SCSA on a (1, C, H, W) map under evaluators.flops' convention, derived from the paper's steps.

    The 1-D convolution is counted as this implementation runs it: all groups fused into one depthwise conv1d
    with every kernel zero-padded to k_max, over the H strip, a zero gap of k_max // 2 and the W strip.
    """
    assert c % groups == 0 and len(kernels) == groups
    k_max = max(kernels)
    gap = k_max // 2
    g = 1 if gate == "sigmoid" else 3  # sigmoid: 1 per element; softmax: exp + sum + divide
    # SMSA
    strip_means = 2 * c * h * w  # mean over W and over H: one per input element each
    conv = c * k_max * (h + gap + w)  # depthwise: k_max MACs per output element
    strip_norms = 5 * c * (h + w)  # GroupNorm(G) with affine: fvcore's 5 per element
    strip_gates = g * c * (h + w)
    strip_product = 2 * c * h * w  # a_h ⊗ a_w, then x * that
    # PCSA
    if window == -1:
        n, pooling = 1, c * h * w  # global mean / amax: one per input element
    else:
        kh, kw = min(window, h), min(window, w)
        n = (h // kh) * (w // kw)
        # a single cell is a plain reduction (c*h*w); otherwise kh*kw per output element (floor drops the rest)
        pooling = c * h * w if (kh, kw) == (h, w) else c * n * kh * kw
    norm = 5 * c * n  # GroupNorm(1)
    qkv = 3 * c * n  # three per-channel scales
    ch = c // heads
    attention = heads * (2 * ch * ch * n + ch * ch + 3 * ch * ch)  # QKᵀ and AV MACs, scale, softmax
    z_mean = c * n
    channel_gate = g * c
    final = c * h * w
    return (strip_means + conv + strip_norms + strip_gates + strip_product + pooling + norm + qkv + attention
            + z_mean + channel_gate + final)  # fmt: skip


def count_scsa(c, h, w, **kwargs) -> tuple[Cost, SCSA]:
    module = SCSA(c, **kwargs).eval()
    return count_module(module, torch.randn(1, c, h, w)), module


@pytest.fixture(scope="module")
def r50_plain() -> Cost:
    return measure(ArchConfig.baseline("resnet50"))


@pytest.fixture(scope="module")
def r50_paper() -> Cost:
    return measure(ArchConfig.paper_default("resnet50"))


# --- the backbone keeps fvcore's count ------------------------------------------------------------------------


def test_resnet50_plain(r50_plain):
    assert r50_plain.gflops == pytest.approx(4.1115, rel=1e-2)
    assert round(r50_plain.gflops, 4) == 4.1115
    assert r50_plain.params == 25_557_032
    assert dict(r50_plain.by_module) == {}
    # what fvcore itself leaves at 0 in the backbone and costs flops is reported: residual adds, the stem's pool,
    # the ReLUs (1 in the stem, 3 per bottleneck); data movement (flatten, ...) is not
    assert dict(r50_plain.uncounted) == {"aten::add_": 16, "aten::max_pool2d": 1, "aten::relu_": 49}


def test_resnet50_paper_default(r50_plain, r50_paper):
    assert r50_paper.params == 25_617_448
    assert r50_paper.gflops > 4.1214  # fvcore alone misses most of SCSA's cost
    assert len(r50_paper.by_module) == 16 and all(n.endswith(".attn_mid") for n in r50_paper.by_module)
    # attention ops are all counted: what is left uncounted is exactly the plain backbone's
    assert dict(r50_paper.uncounted) == dict(r50_plain.uncounted)
    assert not set(r50_paper.uncounted) & (ATTENTION_OPS - {"aten::max_pool2d", "aten::relu_"})  # the backbone's
    # backbone count untouched: total = plain + attention modules
    assert r50_paper.flops == r50_plain.flops + sum(r50_paper.by_module.values())


def test_resnet50_paper_default_matches_formula(r50_plain, r50_paper):
    # SCSA after act2 of every bottleneck: 64/128/256/512 channels at 56/28/14/7 px (224 input)
    expected = {1: scsa_flops(64, 56, 56), 2: scsa_flops(128, 28, 28), 3: scsa_flops(256, 14, 14),
                4: scsa_flops(512, 7, 7)}  # fmt: skip
    for name, f in r50_paper.by_module.items():
        assert f == expected[int(name[len("layer")])], name
    assert r50_paper.flops - r50_plain.flops == 3 * expected[1] + 4 * expected[2] + 6 * expected[3] + 3 * expected[4]


def test_backbone_counted_as_fvcore_default():
    """With attention inside, everything outside the attention modules is counted exactly as fvcore does."""
    arch = ArchConfig(
        "resnet18",
        (StageConfig("se", "end", "all"), StageConfig("eca", "mid", "all"), StageConfig("cbam", "end", "last"),
         StageConfig.scsa("mid", "alternate", window=-1)),
    )  # fmt: skip
    model = build_model(arch).eval()
    x = torch.zeros(1, 3, 64, 64)
    cost = count_module(model, x, scopes=attention_scopes(model))
    default = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        default_backbone = default.total() - sum(default.total(n) for n in cost.by_module)
    assert cost.flops - sum(cost.by_module.values()) == default_backbone
    assert cost.by_module.keys() == attention_scopes(model)


# --- every op of every attention module is counted ------------------------------------------------------------


@pytest.fixture(scope="module")
def r18_plain() -> Cost:
    return measure(ArchConfig.baseline("resnet18"), resolution=96)


@pytest.mark.parametrize("attn", ["se", "eca", "cbam"])
def test_timm_attention_fully_counted(attn, r18_plain):
    # mid slot in two stages, end slot in the others: both positions are covered
    stages = tuple(StageConfig(attn, pos, "all") for pos in ("mid", "end", "mid", "end"))
    cost = measure(ArchConfig("resnet18", stages), resolution=96)
    assert dict(cost.uncounted) == dict(r18_plain.uncounted)
    assert len(cost.by_module) == 8 and all(f > 0 for f in cost.by_module.values())
    assert cost.flops == r18_plain.flops + sum(cost.by_module.values())
    assert cost.params > r18_plain.params


def test_se_by_hand():
    # timm SEModule on (1, C, H, W): mean, fc1 (1x1 conv, bias not counted), relu, fc2, sigmoid, x * gate
    from timm.layers import create_attn

    c, h, w = 64, 8, 8
    se = create_attn("se", c).eval()
    rd = se.fc1.out_channels
    cost = count_module(se, torch.randn(1, c, h, w))
    assert cost.flops == c * h * w + c * rd + rd + rd * c + c + c * h * w
    assert not cost.uncounted


# --- SCSA against the hand-derived formula --------------------------------------------------------------------

SCSA_CASES = [
    dict(c=64, h=56, w=56),  # the paper's defaults at ResNet-50 stage 1
    dict(c=512, h=7, w=7),  # window == map: a single pooled cell
    dict(c=32, h=10, w=12, groups=2, kernels=(3, 7), window=4, heads=2, pool="max", gate="softmax"),
    dict(c=32, h=10, w=12, groups=2, kernels=(3, 7), window=4, heads=2),  # floors: 10x12 -> 2x3 cells of 4x4
    dict(c=48, h=9, w=5, groups=3, kernels=(1, 3, 5), window=-1, heads=4),  # global pooling
    dict(c=48, h=9, w=5, groups=3, kernels=(1, 3, 5), window=-1, pool="max", gate="softmax"),
    dict(c=16, h=3, w=4, groups=4, kernels=(1, 1, 1, 1), window=7),  # map smaller than the window, no conv gap
]


@pytest.mark.parametrize("case", SCSA_CASES, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_scsa_formula(case):
    cost, module = count_scsa(**case)
    assert cost.flops == scsa_flops(**case)
    assert not cost.uncounted
    assert cost.by_module == {"": cost.flops}
    assert cost.params == sum(p.numel() for p in module.parameters())


def test_scsa_formula_batch_scales():
    x = torch.randn(3, 64, 14, 14)
    assert count_module(SCSA(64).eval(), x).flops == 3 * scsa_flops(64, 14, 14)


def test_sdpa_counted_as_explicit_attention():
    """The scaled_dot_product_attention handle equals the same attention written with explicit ops."""

    class Explicit(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.softmax(q @ k.transpose(-1, -2) * 0.125, dim=-1) @ v

    class Fused(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.125)

    qkv = (torch.randn(2, 3, 5, 7), torch.randn(2, 3, 6, 7), torch.randn(2, 3, 6, 4))
    explicit, fused = count_module(Explicit(), qkv), count_module(Fused(), qkv)
    assert fused.flops == explicit.flops == 2 * 3 * 5 * 6 * (7 + 1 + 3 + 4)
    assert not fused.uncounted and not explicit.uncounted


# --- API ------------------------------------------------------------------------------------------------------


def test_cached(r50_plain, monkeypatch):
    calls = []
    monkeypatch.setattr(flops_mod, "build_deployed", lambda *a, **k: calls.append(a) or build_deployed(*a, **k))
    arch = ArchConfig.baseline("resnet50")
    assert measure(arch) is r50_plain
    assert measure(ArchConfig.from_dict(arch.to_dict()), 224, 1000) is r50_plain  # equal by value, same entry
    assert measure(arch.to_dict()) is r50_plain
    assert calls == []


def test_cost_read_only_and_serialisable(r50_plain):
    with pytest.raises(TypeError):
        r50_plain.uncounted["aten::add_"] = 0  # type: ignore[index]
    d = r50_plain.to_dict()
    assert d["params"] == 25_557_032 and isinstance(d["uncounted"], dict)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_resolution(bad):
    with pytest.raises(ValueError, match="resolution"):
        measure(ArchConfig.baseline("resnet18"), bad)


# --- RepVGG, Swin, ConvNeXt -----------------------------------------------------------------------------------

NEW_FAMILIES = {"repvgg_a0": 21, "swin_tiny_patch4_window7_224": 12, "convnext_atto": 12}  # blocks in stages


@pytest.mark.parametrize("backbone", NEW_FAMILIES)
def test_new_families_attention_fully_counted(backbone):
    plain, paper = measure(ArchConfig.baseline(backbone), 64), measure(ArchConfig.paper_default(backbone), 64)
    # every op of every added module is counted: what is left uncounted is exactly the plain backbone's
    assert dict(paper.uncounted) == dict(plain.uncounted)
    assert len(paper.by_module) == NEW_FAMILIES[backbone] and all(f > 0 for f in paper.by_module.values())
    assert all(name.endswith(".attn_mid") for name in paper.by_module)
    assert paper.flops == plain.flops + sum(paper.by_module.values())
    assert paper.params > plain.params


def test_repvgg_counted_as_deployed():
    import timm
    from timm.utils.model import reparameterize_model

    cost = measure(ArchConfig.baseline("repvgg_a0"), 64)
    training = timm.create_model("repvgg_a0").eval()
    deployed = reparameterize_model(training)
    x = torch.zeros(1, 3, 64, 64)
    assert cost.params == sum(p.numel() for p in deployed.parameters()) == 8_309_384  # RepVGG-A0's 8.30 M
    assert cost.flops == count_module(deployed, x, scopes=()).flops < count_module(training, x, scopes=()).flops


def test_swin_backbone_attention_counted_even_when_fused():
    """fvcore has no handle for a fused attention: the backbone's window attention is traced as explicit matmuls."""
    from evaluators.flops import explicit_backbone_attention

    arch = ArchConfig.paper_default("swin_tiny_patch4_window7_224")
    model = build_model(arch, num_classes=1000, img_size=64).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True  # as with TIMM_FUSED_ATTN=2
    x = torch.zeros(1, 3, 64, 64)
    scopes = attention_scopes(model)
    fused = count_module(model, x, scopes=scopes)
    assert fused.uncounted["aten::scaled_dot_product_attention"] == 12
    explicit_backbone_attention(model, scopes)
    explicit = count_module(model, x, scopes=scopes)
    assert "aten::scaled_dot_product_attention" not in explicit.uncounted
    assert explicit.flops > fused.flops and explicit.flops == measure(arch, 64).flops


def test_counting_flops_prints_no_warning_of_fvcores_import():
    """fvcore scripts a loss on import, which torch deprecates: commands that count FLOPs or train a proxy do not
    open with that warning (evaluators.fvcore_nn), and nothing else warns either."""
    code = "import evaluators.flops, evaluators.proxy"
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deprecated" not in proc.stderr
