import json

import pytest
import timm
import torch
from torch import nn

from space import ArchConfig, SearchSpace, StageConfig, build_model
from space.backbones import UnsupportedBackboneError, family, selected_blocks, slots
from space.build import attach, deploy_model

FAMILIES = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenetv2_100", "efficientnet_b0", "regnetx_002",
            "repvgg_a0", "swin_tiny_patch4_window7_224", "convnext_atto"]
SWIN = "swin_tiny_patch4_window7_224"


def test_references():
    base = ArchConfig.baseline("resnet50")
    paper = ArchConfig.paper_default("resnet50")
    assert all(s.attn == "none" for s in base.stages) and len(base.stages) == 4
    assert all(s == StageConfig.scsa() for s in paper.stages)
    s = paper.stages[0]
    assert (s.position, s.blocks, s.groups, s.kernels, s.window, s.heads, s.gate, s.pool) == (
        "mid", "all", 4, (3, 5, 7, 9), 7, 1, "sigmoid", "avg")


def test_params_of_references():
    assert sum(p.numel() for p in build_model(ArchConfig.baseline("resnet50")).parameters()) == 25_557_032
    assert sum(p.numel() for p in build_model(ArchConfig.paper_default("resnet50")).parameters()) == 25_617_448


@pytest.mark.parametrize("seed", range(5))
def test_json_round_trip_and_value_equality(seed):
    arch = SearchSpace("resnet50").sample(seed)
    text = json.dumps(arch.to_dict())
    back = ArchConfig.from_dict(json.loads(text))
    assert back == arch and hash(back) == hash(arch)
    assert ArchConfig.from_json(arch.to_json()) == arch


def test_canonical_form_makes_equal_networks_equal():
    a = StageConfig("se", "end", "all", groups=4, kernels=[3, 5, 7, 9])
    b = StageConfig("se", "end", "all")
    assert a == b and a.kernels is None
    assert StageConfig("none", "mid", "all", groups=8) == StageConfig()


def test_from_dict_rejects_unknown_keys():
    d = ArchConfig.baseline("resnet18").to_dict()
    d["stages"][0]["kernel"] = [3]
    with pytest.raises(ValueError, match=r"stage 1: unknown keys \['kernel'\]"):
        ArchConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown ArchConfig keys"):
        ArchConfig.from_dict({"backbone": "resnet18", "stages": [], "extra": 1})


@pytest.mark.parametrize(
    "stage,words",
    [
        (StageConfig.scsa(groups=3, kernels=(3, 5, 7)), "stage 1 .*not divisible by groups=3"),
        (StageConfig.scsa(heads=3), "not divisible by heads=3"),
        (StageConfig.scsa(kernels=(3, 5, 7, 8)), "odd"),
        (StageConfig.scsa(kernels=(3, 5)), "one kernel per group"),
        (StageConfig.scsa(gate="tanh"), "gate='tanh'"),
        (StageConfig("scsa", "mid", "all"), "SCSA needs groups"),
        (StageConfig("transformer", "mid", "all"), "attn='transformer' is unknown"),
        (StageConfig("se", "top", "all"), "position='top'"),
        (StageConfig("se", "mid", "some"), "blocks='some'"),
    ],
)
def test_validate_names_stage_and_setting(stage, words):
    arch = ArchConfig("resnet18", (stage,) + ArchConfig.baseline("resnet18").stages[1:])
    with pytest.raises(ValueError, match=words):
        arch.validate()


def test_validate_stage_count():
    with pytest.raises(ValueError, match="resnet18 has 4 stages, the config gives 2"):
        ArchConfig("resnet18", (StageConfig(), StageConfig())).validate()


def test_unsupported_backbones_list_families():
    with pytest.raises(UnsupportedBackboneError,
                       match="supported families: convnext, efficientnet, regnet, repvgg, resnet, swin"):
        ArchConfig.baseline("vit_tiny_patch16_224")
    with pytest.raises(UnsupportedBackboneError, match="'gernet_s' is a timm model of family 'byobnet'"):
        SearchSpace("gernet_s")  # byobnet builds RepVGG and others; only repvgg_* have known slots
    with pytest.raises(UnsupportedBackboneError, match="not a timm model name"):
        SearchSpace("resnet5000")


@pytest.mark.parametrize("backbone", FAMILIES)
def test_families_sample_build_and_run(backbone):
    space = SearchSpace(backbone)
    archs = [ArchConfig.paper_default(backbone)] + [space.sample(seed) for seed in range(2)]
    archs += [ArchConfig(backbone, tuple(StageConfig.scsa(position="end", groups=2, kernels=(3, 5), heads=2)
                                         for _ in archs[0].stages))]
    # the baselines the paper compares with, at both slots: coordinate attention and global context
    archs += [ArchConfig(backbone, tuple(StageConfig(attn=attn, position=pos, blocks="all") for _ in archs[0].stages))
              for attn, pos in (("ca", "mid"), ("gc", "end"))]
    for i, arch in enumerate(archs):
        model = build_model(arch, num_classes=10).eval()
        with torch.no_grad():
            for res in (64, 224) if i < 2 else (64,):  # 224 px for the paper default and one sample only: fast
                assert model(torch.randn(1, 3, res, res)).shape == (1, 10)


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv2_100", "regnetx_002", "repvgg_a0", SWIN,
                                      "convnext_atto"])
def test_timm_keys_untouched(backbone):
    plain = timm.create_model(backbone, num_classes=10).state_dict()
    model = build_model(ArchConfig.paper_default(backbone), num_classes=10)
    keys = model.state_dict().keys()
    added = [k for k in keys if k not in plain]
    assert set(plain) <= set(keys)
    assert added and all(".attn_mid." in k for k in added)
    # a timm checkpoint of the plain backbone loads strictly apart from the added modules
    missing, unexpected = model.load_state_dict(plain, strict=False)
    assert not unexpected and set(missing) == set(added)


def test_attention_really_runs_in_forward():
    arch = ArchConfig.paper_default("resnet18")
    model = build_model(arch, num_classes=10).eval()
    calls = []
    for name, mod in model.named_modules():
        if name.endswith("attn_mid"):
            mod.register_forward_hook(lambda m, a, o: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(calls) == 8  # every BasicBlock of resnet18


def test_block_patterns():
    assert selected_blocks(6, "all") == [0, 1, 2, 3, 4, 5]
    assert selected_blocks(6, "alternate") == [1, 3, 5]
    assert selected_blocks(3, "alternate") == [0, 2]
    assert selected_blocks(3, "last") == [2]


def test_slots_describe_resnet50():
    st = slots("resnet50", 224)
    mids = [next(s for s in stage if s.position == "mid") for stage in st]
    assert [(s.channels, s.height) for s in mids] == [(64, 56), (128, 28), (256, 14), (512, 7)]
    assert [len(stage) // 2 for stage in st] == [3, 4, 6, 3]


def test_sample_is_reproducible_and_valid():
    space = SearchSpace("mobilenetv2_100")
    assert space.sample(3) == space.sample(3)
    assert len({space.sample(s) for s in range(20)}) > 15
    for s in range(20):
        space.sample(s).validate()


def test_suggest_with_optuna_and_enqueued_references():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace("resnet50")
    study = optuna.create_study(directions=["maximize", "minimize"])
    for ref in (ArchConfig.baseline("resnet50"), ArchConfig.paper_default("resnet50")):
        study.enqueue_trial(space.params_of(ref))
    got = [space.suggest(study.ask()) for _ in range(4)]
    assert got[0] == ArchConfig.baseline("resnet50")
    assert got[1] == ArchConfig.paper_default("resnet50")
    assert all(a.validate() is a for a in got)


def test_divisibility_is_repaired_not_failed():
    # regnetx_002 stage 1 has 24 channels: 8 groups are allowed (24/8), 16 heads would not be
    space = SearchSpace.from_spec("regnetx_002", {"attn": ["scsa"], "heads": [1, 16], "groups": [8]})
    for s in range(10):
        arch = space.sample(s)
        assert all(st.heads in (1, 16) for st in arch.stages)
        arch.validate()


def test_space_size_and_summary():
    space = SearchSpace("resnet50")
    assert space.size() == space.stage_size(0) ** 4
    narrow = SearchSpace.from_spec("resnet50", {"attn": ["none", "scsa"], "position": ["mid"], "blocks": ["all"],
                                                "groups": [4], "kernel_start": [3], "kernel_step": [2],
                                                "window": [7], "heads": [1], "gate": ["sigmoid"], "pool": ["avg"]})
    assert narrow.size() == 2**4
    assert "16" in narrow.summary().splitlines()[0] or "1.600e+01" in narrow.summary()


def test_space_file_overrides_and_errors(tmp_path):
    good = tmp_path / "space.yaml"
    good.write_text("attn: [none, scsa]\nwindow: [4, 7]\nstages:\n  4: {attn: [none]}\n")
    space = SearchSpace.from_file("resnet50", good)
    assert space.stages[0].attn == ("none", "scsa") and space.stages[3].attn == ("none",)
    assert all(s.stages[3].attn == "none" for s in (space.sample(i) for i in range(5)))
    js = tmp_path / "space.json"
    js.write_text(json.dumps({"heads": [1, 2]}))
    assert SearchSpace.from_file("resnet50", js).stages[2].heads == (1, 2)
    cases = {
        "attn: [none, scsa\n": "not valid YAML/JSON",
        "atn: [none]\n": r"unknown keys \['atn'\]",
        "window: [0]\n": "'window' values \\[0\\] are invalid",
        "kernel_start: [2]\n": "positive and odd",
        "attn: [mamba]\n": "unknown values \\['mamba'\\]",
        "heads: []\n": "needs at least one value",
        "stages:\n  9: {attn: [none]}\n": "stage 9 does not exist",
        "- 1\n- 2\n": "must hold a mapping",
    }
    for text, words in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            SearchSpace.from_file("resnet50", bad)
    with pytest.raises(ValueError, match="cannot read space file"):
        SearchSpace.from_file("resnet50", tmp_path / "missing.yaml")


def test_params_of_rejects_configs_outside_the_space():
    narrow = SearchSpace.from_spec("resnet18", {"attn": ["none", "se"]})
    with pytest.raises(ValueError, match="outside this space"):
        narrow.params_of(ArchConfig.paper_default("resnet18"))


def test_slots_at_small_resolutions():
    # 32 px leaves resnet50's stage 4 at 1x1 (BatchNorm in training mode would refuse a 1x1 map at batch 1)
    heights = [[next(s for s in st if s.position == "mid").height for st in slots("resnet50", r)] for r in (32, 48)]
    assert heights == [[8, 4, 2, 1], [12, 6, 3, 2]]


@pytest.mark.parametrize("position", ["mid", "end"])
def test_repvgg_reparameterised_with_attention_keeps_outputs(position):
    arch = ArchConfig("repvgg_a0", tuple(StageConfig.scsa(position=position) for _ in range(4)))
    model = build_model(arch, num_classes=10)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding them is really tested
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    model.eval()
    deployed = deploy_model(model)
    calls = []
    for name, mod in deployed.named_modules():
        if name.endswith(f"attn_{position}"):
            mod.register_forward_hook(lambda m, a, o: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before, after = model.forward_features(x), deployed.forward_features(x)
    assert (before - after).abs().max().item() <= 1e-5 and before.abs().max() > 0.1
    assert len(calls) == 21  # every RepVggBlock of the four stages (2 + 4 + 14 + 1) still runs its attention
    keys = deployed.state_dict().keys()
    assert not any(".conv_kxk." in k or ".conv_1x1." in k for k in keys) and "stages.0.0.reparam_conv.weight" in keys
    assert sum(p.numel() for p in deployed.parameters()) < sum(p.numel() for p in model.parameters())
    plain = build_model(ArchConfig.baseline("resnet18"))
    assert deploy_model(plain) is plain  # nothing to fold elsewhere: the model itself


class _Probe(nn.Module):
    """Attention stand-in that differs per channel and per position, so a swapped axis changes the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        pos = torch.arange(h * w, dtype=x.dtype).reshape(1, 1, h, w) / (h * w)
        return x * (1 + pos) + torch.arange(c, dtype=x.dtype).reshape(1, c, 1, 1) / c


def _nchw(f, y):  # what a slot in channels-last layout should compute: f on the (B, C, H, W) map
    return f(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@pytest.mark.parametrize("position", ["mid", "end"])
def test_swin_slots_see_the_block_as_a_map(position):
    # a shifted block, fed a non-square map (timm's dynamic-size Swin builds its mask per input)
    block = build_model(ArchConfig.baseline(SWIN), num_classes=0).eval().layers[0].blocks[1]
    x = torch.randn(2, 14, 21, 96)
    probe = _Probe()
    with torch.no_grad():
        b, h, w, c = x.shape
        a = block._attn(block.norm1(x))
        x1 = x + (_nchw(probe, a) if position == "mid" else a)
        t = x1.reshape(b, -1, c)
        m = block.mlp(block.norm2(t))
        if position == "end":
            m = _nchw(probe, m.reshape(b, h, w, c)).reshape(b, -1, c)
        expected = (t + m).reshape(b, h, w, c)
        attach(block, "swin", position, probe)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_convnext_end_slot_on_channels_last_mlp():
    block = timm.create_model("convnext_tiny", num_classes=0).eval().stages[0].blocks[0]
    assert not block.use_conv_mlp  # timm's Linear MLP on (B, H, W, C): the slot must permute
    x = torch.randn(2, 96, 10, 13)
    probe = _Probe()
    with torch.no_grad():
        y = block.mlp(block.norm(block.conv_dw(x).permute(0, 2, 3, 1)))
        expected = _nchw(probe, y).permute(0, 3, 1, 2) * block.gamma.reshape(1, -1, 1, 1) + x
        attach(block, "convnext", "end", probe)
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_swin_small_inputs():
    arch = ArchConfig.paper_default(SWIN)
    model = build_model(arch, num_classes=10)  # the 224 px network, any input whose sides divide by 4
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()  # 8/4/2/1 px maps, padded to the 7x7 windows, train
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(AssertionError, match=r"Input height \(30\) should be divisible by patch size \(4\)"):
        model(torch.randn(1, 3, 30, 30))  # timm's own check, at the patch embedding
    sized = build_model(arch, num_classes=10, img_size=64).eval()  # timm's network for 64 px: windows clamped
    assert [blk.window_size for blk in (sized.layers[2].blocks[0], sized.layers[3].blocks[0])] == [(4, 4), (2, 2)]
    assert sized(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(AssertionError, match=r"Input height \(224\) doesn't match model \(64\)"):
        sized(torch.randn(1, 3, 224, 224))
    heights = [next(s for s in st if s.position == "end").height for st in slots(SWIN, 64)]
    assert heights == [16, 8, 4, 2]


def test_new_family_slots():
    assert family("repvgg_b0") == "repvgg" and family("convnextv2_atto") == "convnext"
    for backbone in ("repvgg_a0", SWIN, "convnext_atto"):
        space = SearchSpace(backbone)
        assert all(space.sample(seed).validate() for seed in range(20))
    st = slots("repvgg_a0", 224)
    assert [(s[0].channels, s[0].height, len(s) // 2) for s in st] == [(48, 56, 2), (96, 28, 4), (192, 14, 14),
                                                                        (1280, 7, 1)]
    assert {(s.position, s.anchor) for stage in st for s in stage} == {("mid", "act"), ("end", "attn")}
    st = slots(SWIN, 224)
    assert [(s[0].channels, s[0].height, len(s) // 2) for s in st] == [(96, 56, 2), (192, 28, 2), (384, 14, 6),
                                                                        (768, 7, 2)]
    assert {(s.position, s.anchor) for stage in st for s in stage} == {("mid", "drop_path1"), ("end", "mlp")}
    st = slots("convnext_atto", 224)
    assert [(s[0].channels, s[0].height, len(s) // 2) for s in st] == [(40, 56, 2), (80, 28, 2), (160, 14, 6),
                                                                        (320, 7, 2)]
