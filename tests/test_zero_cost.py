"""Tests for evaluators.zero_cost: SynFlow and NASWOT on real timm ResNets with and without SCSA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evaluators import data
from evaluators.zero_cost import naswot, synflow, unzero_residual_branches, zero_cost_scores
from space.build import build_model
from space.config import ArchConfig, StageConfig

needs_fmnist = pytest.mark.skipif(
    not (data.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)

RES = 40  # smallest size at which stage 4 of a ResNet sees 2x2 (keeps these tests fast)


def _batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, RES, RES, generator=torch.Generator().manual_seed(seed))


def _scsa_resnet18() -> ArchConfig:
    s = StageConfig.scsa(position="end", blocks="last")
    return ArchConfig("resnet18", (s, StageConfig(), s, StageConfig()))


def _model(arch: ArchConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10)
    unzero_residual_branches(model)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_scores_are_finite_deterministic_and_gflops_optional():
    arch = _scsa_resnet18()
    a = zero_cost_scores(arch, _batch(), seed=0)
    b = zero_cost_scores(arch, (_batch(), torch.zeros(16, dtype=torch.int64)), seed=0, gflops=False)
    assert set(b) == {"synflow", "naswot", "params"}
    try:
        import evaluators.flops  # noqa: F401
    except ImportError:
        assert "gflops" not in a  # skipped quietly where the FLOP counter cannot be imported
    else:
        assert a.pop("gflops") > 0
    assert a == b
    assert all(math.isfinite(v) for v in a.values())
    assert a["params"] == sum(p.numel() for p in build_model(arch, num_classes=10).parameters())
    c = zero_cost_scores(arch, _batch(), seed=1, gflops=False)
    assert c["naswot"] != a["naswot"]  # another initialisation, another score


def test_scores_tell_architectures_apart():
    x = _batch()
    base = zero_cost_scores(ArchConfig.baseline("resnet18"), x, gflops=False)
    scsa = zero_cost_scores(_scsa_resnet18(), x, gflops=False)
    assert base["naswot"] != scsa["naswot"]
    assert base["synflow"] != scsa["synflow"]
    assert base["params"] < scsa["params"]


def test_zero_init_residual_branches_would_hide_attention():
    """Why unzero_residual_branches exists: with timm's zero-initialised last BN per block, the attention inside a
    branch cannot change any activation, and NASWOT scores two different configs identically."""
    x = _batch()
    scores = []
    for arch in (ArchConfig.baseline("resnet18"), _scsa_resnet18()):
        torch.manual_seed(0)
        scores.append(naswot(build_model(arch, num_classes=10), x))
    assert scores[0] == scores[1]
    torch.manual_seed(0)
    assert unzero_residual_branches(build_model(ArchConfig.baseline("resnet18"))) == 8  # one per BasicBlock


def test_scores_leave_the_model_untouched():
    model = _model(_scsa_resnet18())
    model.train()
    model.layer1.eval()  # a mixed state must come back exactly
    before = _state(model)
    modes = [m.training for m in model.modules()]
    synflow(model, (3, RES, RES))
    naswot(model, _batch())
    after = _state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_synflow_is_float64_safe_on_resnet50():
    model = _model(ArchConfig.baseline("resnet50"))
    score = synflow(model, (1, 3, 33, 33))
    assert math.isfinite(score) and score > 10  # log10: far beyond what float32 could hold in products


def test_naswot_needs_distinct_inputs():
    model = _model(ArchConfig.baseline("resnet18"))
    x = _batch(8)
    x[1] = x[0]
    assert naswot(model, x) == -math.inf  # two identical codes: K is singular
    with pytest.raises(ValueError, match="at least 2 images"):
        naswot(model, _batch(1))
    with pytest.raises(ValueError, match="no activation module"):
        naswot(nn.Sequential(nn.Conv2d(3, 4, 3)), _batch(4))


def test_synflow_input_shape_errors():
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\) or \(B, C, H, W\)"):
        synflow(_model(ArchConfig.baseline("resnet18")), (RES, RES))


@needs_fmnist
def test_default_batch_comes_from_the_dataset():
    scores = zero_cost_scores(ArchConfig.baseline("resnet18"), resolution=RES, batch_size=8, gflops=False)
    again = zero_cost_scores(ArchConfig.baseline("resnet18"), resolution=RES, batch_size=8, gflops=False)
    assert scores == again and math.isfinite(scores["naswot"])
