"""The attention factory's baselines: coordinate attention (CA) and global context (GC)."""

from __future__ import annotations

import pytest
import torch
from timm.layers import GlobalContext

from evaluators.flops import count_module, measure
from space import ArchConfig, SearchSpace, build_model
from space.attention import ATTENTION_TYPES, create_attention
from space.backbones import slots
from space.config import StageConfig
from space.coord_attention import CoordAttn
from space.space import StageChoices


def _randomise_bn(bn: torch.nn.BatchNorm2d, gen: torch.Generator) -> None:
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=gen))
        bn.running_mean.copy_(torch.randn(n, generator=gen))
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def _reference_ca(x: torch.Tensor, w1, bn, wh, ww, training: bool) -> torch.Tensor:
    """The paper's CA, one step at a time with plain tensor ops (no nn modules, no cat/split)."""
    n, c, h, w = x.shape
    z_h = x.sum(dim=3) / w  # (n, c, h): pooled along the width, one value per row
    z_w = x.sum(dim=2) / h  # (n, c, w): one value per column
    f_h = torch.einsum("mc,nch->nmh", w1, z_h)  # shared 1x1 conv (no bias)
    f_w = torch.einsum("mc,ncw->nmw", w1, z_w)
    if training:  # BN statistics over the batch and both strips together
        both = torch.cat([f_h, f_w], dim=2)
        mean = both.mean(dim=(0, 2))
        var = ((both - mean[None, :, None]) ** 2).mean(dim=(0, 2))
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = bn.weight / torch.sqrt(var + bn.eps)
    f_h = (f_h - mean[None, :, None]) * scale[None, :, None] + bn.bias[None, :, None]
    f_w = (f_w - mean[None, :, None]) * scale[None, :, None] + bn.bias[None, :, None]
    f_h = f_h * torch.clamp(f_h + 3, 0, 6) / 6  # h-swish
    f_w = f_w * torch.clamp(f_w + 3, 0, 6) / 6
    g_h = 1 / (1 + torch.exp(-torch.einsum("cm,nmh->nch", wh, f_h)))
    g_w = 1 / (1 + torch.exp(-torch.einsum("cm,nmw->ncw", ww, f_w)))
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = x[:, :, i, j] * g_h[:, :, i] * g_w[:, :, j]
    return out


@pytest.mark.parametrize("training", [False, True])
def test_coord_attention_matches_step_by_step(training):
    gen = torch.Generator().manual_seed(0)
    ca = CoordAttn(16)
    _randomise_bn(ca.bn1, gen)
    ca.train(training)
    x = torch.randn(2, 16, 5, 3, generator=gen)
    want = _reference_ca(x, ca.conv1.weight[:, :, 0, 0], ca.bn1, ca.conv_h.weight[:, :, 0, 0],
                         ca.conv_w.weight[:, :, 0, 0], training)
    with torch.no_grad():
        got = ca(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_coord_attention_mid_channels_are_the_papers():
    for channels in (16, 64, 128, 256, 512, 1024, 2048):  # power-of-two widths: the paper's max(8, C // 32)
        assert CoordAttn(channels).conv1.out_channels == max(8, channels // 32)
    assert CoordAttn(384).conv1.out_channels == 16  # elsewhere rounded to a multiple of 8, as timm's SE (paper: 12)
    assert CoordAttn(64, rd_channels=5).conv1.out_channels == 5


def test_coord_attention_loads_into_timms_module():
    coord = pytest.importorskip("timm.layers.coord_attn")  # recent timm ships it (1.0.31 does, 1.0.9 does not)
    ours = CoordAttn(64).eval()
    _randomise_bn(ours.bn1, torch.Generator().manual_seed(1))
    theirs = coord.CoordAttn(64, rd_ratio=1 / 32, se_factor=1.0).eval()
    theirs.load_state_dict(ours.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 64, 6, 4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def ca_flops(c: int, h: int, w: int, mid: int) -> int:
    """CA on (1, c, h, w) under evaluators.flops' convention (one MAC = one flop, bias not counted)."""
    return (
        c * h * w + c * h * w  # the two strip means: one per input element each
        + mid * c * (h + w)  # shared 1x1 conv on the h + w concatenated strip cells
        + 2 * mid * (h + w)  # BatchNorm in eval: 2 per element (fvcore's)
        + mid * (h + w)  # h-swish
        + c * mid * h + c * mid * w  # conv_h, conv_w
        + c * h + c * w  # the two sigmoid gates
        + 2 * c * h * w  # x * a_w * a_h: two broadcast products at full size
    )  # fmt: skip


def gc_flops(c: int, h: int, w: int, rd: int) -> int:
    """timm's GlobalContext (use_attn, fuse_scale) on (1, c, h, w), same convention."""
    return (
        c * h * w  # conv_attn: c -> 1 logit per pixel
        + 3 * h * w  # softmax over the pixels
        + c * h * w  # context = x @ attention weights
        + c * rd + 5 * rd + rd + rd * c  # ConvMlp: fc1, LayerNorm2d (5 per element, fvcore's), ReLU, fc2
        + c  # sigmoid gate
        + c * h * w  # x * gate
    )  # fmt: skip


def test_coord_attention_flops_by_hand():
    ca = CoordAttn(64).eval()
    cost = count_module(ca, torch.zeros(1, 64, 7, 5))
    assert cost.flops == ca_flops(64, 7, 5, mid=8) == 22304
    assert not cost.uncounted
    assert cost.params == 64 * 8 + 2 * 8 + 2 * 8 * 64  # conv1, BN affine, conv_h + conv_w


def test_global_context_flops_by_hand():
    gc = create_attention("gc", 64).eval()
    assert isinstance(gc, GlobalContext)
    cost = count_module(gc, torch.zeros(1, 64, 7, 5))
    assert cost.flops == gc_flops(64, 7, 5, rd=gc.mlp_scale.fc1.out_channels) == 7961
    assert not cost.uncounted


@pytest.mark.parametrize("attn, by_hand", [("ca", "ca"), ("gc", "gc")])
def test_measure_counts_each_module_by_hand(attn, by_hand):
    """Inside a built model, ``measure`` gives every CA / GC module exactly the hand count at its slot."""
    resolution = 64
    arch = ArchConfig("resnet18", tuple(StageConfig(attn, pos, "all") for pos in ("mid", "end", "mid", "end")))
    cost = measure(arch, resolution=resolution)
    plain = measure(ArchConfig.baseline("resnet18"), resolution=resolution)
    expected = {}
    for stage, stage_cfg in zip(slots("resnet18", resolution), arch.stages):
        for s in stage:
            if s.position == stage_cfg.position:
                module = create_attention(attn, s.channels)
                mid = module.conv1.out_channels if attn == "ca" else module.mlp_scale.fc1.out_channels
                count = ca_flops if by_hand == "ca" else gc_flops
                expected[f"{s.block_path}.attn_{s.position}"] = count(s.channels, s.height, s.width, mid)
    assert dict(cost.by_module) == expected
    assert cost.flops == plain.flops + sum(expected.values())
    assert dict(cost.uncounted) == dict(plain.uncounted)


def test_the_space_offers_them_as_it_offers_se_eca_cbam():
    assert {"se", "eca", "cbam", "ca", "gc"} <= set(ATTENTION_TYPES)
    assert StageChoices().attn == ATTENTION_TYPES  # the default space offers every type, the new ones included
    space = SearchSpace.from_spec("resnet18", {"attn": ["ca", "gc"]})
    for seed in range(4):
        arch = space.sample(seed)
        assert {s.attn for s in arch.stages} <= {"ca", "gc"}
        assert all(s.groups is None and s.window is None for s in arch.stages)  # no SCSA settings carried
        assert space.params_of(arch)["s1_attn"] == arch.stages[0].attn
    arch = ArchConfig("resnet18", (StageConfig("ca", "mid", "all"), StageConfig("gc", "end", "last"),
                                   StageConfig("ca", "end", "alternate"), StageConfig()))
    model = build_model(arch, num_classes=10).eval()
    assert isinstance(model.layer1[0].attn_mid, CoordAttn) and isinstance(model.layer2[1].attn_end, GlobalContext)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_attention():
    with pytest.raises(ValueError, match="choose one of"):
        create_attention("coord", 16)
