"""Tests for evaluators.proxy: real (tiny) trainings on Fashion-MNIST at the smoke fidelity, determinism, divergence,
fidelity presets and overrides."""

from __future__ import annotations

import math

import pytest
import torch

from evaluators import data
from evaluators.proxy import (
    PRESETS,
    EpochResult,
    Fidelity,
    ProxyRun,
    TrainingDiverged,
    preset,
    train_proxy,
)
from space.config import ArchConfig, StageConfig

needs_fmnist = pytest.mark.skipif(
    not (data.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)

# Smaller than the smoke preset, so that every training test takes about a second on one or two CPU cores.
TINY = preset("smoke", train_images=128, val_images=64, batch_size=32, eval_batch_size=64)


def _scsa_resnet18() -> ArchConfig:
    """SCSA in the last block of stages 2 and 4 only: cheap, but attention on both a large and a small map."""
    s = StageConfig.scsa(position="mid", blocks="last")
    return ArchConfig("resnet18", (StageConfig(), s, StageConfig(), s))


def _metrics(results: list[EpochResult]) -> list[tuple]:
    """Everything but the wall time, which differs from run to run."""
    return [(r.epoch, r.epochs, r.accuracy, r.loss, r.val_loss, r.images_seen) for r in results]


# ---------------------------------------------------------------------------------------------------------------
# Training


@needs_fmnist
@pytest.mark.parametrize("arch", [ArchConfig.baseline("resnet18"), _scsa_resnet18()], ids=["baseline", "scsa"])
def test_smoke_trains_and_reports_every_epoch(arch):
    results = list(train_proxy(arch, "fashion-mnist", fidelity=TINY, seed=0))
    assert [r.epoch for r in results] == list(range(1, TINY.epochs + 1))
    steps = TINY.train_images // TINY.batch_size
    for i, r in enumerate(results, start=1):
        assert isinstance(r, EpochResult)
        assert r.epochs == TINY.epochs
        assert 0.0 <= r.accuracy <= 1.0
        assert math.isfinite(r.loss) and r.loss > 0
        assert math.isfinite(r.val_loss) and r.val_loss > 0
        assert r.images_seen == i * steps * TINY.batch_size
    assert 0 < results[0].time_s < results[-1].time_s
    assert results[-1].to_dict()["epoch"] == TINY.epochs
    # TSE sums every step's loss: epoch means x steps, cumulated; TSE-EMA discounts older steps, so it is smaller
    assert results[0].tse == pytest.approx(results[0].loss * steps)
    assert results[-1].tse == pytest.approx(sum(r.loss for r in results) * steps)
    assert results[0].tse_ema < results[0].tse and results[-1].tse_ema < results[-1].tse


@needs_fmnist
def test_smoke_preset_default_arguments():
    results = list(train_proxy(ArchConfig.baseline("resnet18"), fidelity="smoke"))
    assert len(results) == PRESETS["smoke"].epochs
    assert all(math.isfinite(r.loss) and math.isfinite(r.val_loss) for r in results)


@needs_fmnist
def test_same_seed_same_metrics_different_seed_different_metrics():
    arch = _scsa_resnet18()
    a = _metrics(list(train_proxy(arch, fidelity=TINY, seed=3)))
    b = _metrics(list(train_proxy(arch, fidelity=TINY, seed=3)))
    c = _metrics(list(train_proxy(arch, fidelity=TINY, seed=4)))
    assert a == b
    assert a != c


@needs_fmnist
def test_interleaved_runs_stay_deterministic_and_leave_the_global_rng_alone():
    arch = ArchConfig.baseline("resnet18")
    alone = _metrics(list(train_proxy(arch, fidelity=TINY, seed=1)))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = ProxyRun(arch, fidelity=TINY, seed=1), ProxyRun(arch, fidelity=TINY, seed=2)
    mixed = []
    for r1, _ in zip(first, second):
        torch.rand(10)  # the caller drawing from the global RNG between epochs must not matter either
        mixed.append(r1)
    assert _metrics(mixed) == alone
    torch.manual_seed(123)
    assert torch.equal(torch.get_rng_state(), state)


@needs_fmnist
@pytest.mark.parametrize("augment", [False, True], ids=["subset", "augmented"])
def test_precise_bn_recomputes_the_statistics_and_changes_nothing_in_training(augment):
    arch = ArchConfig.baseline("resnet18")
    fid = TINY.replace(augment=augment)
    off, on = ProxyRun(arch, fidelity=fid.replace(precise_bn=0)), ProxyRun(arch, fidelity=fid.replace(precise_bn=2))
    off.run(), on.run()
    # training is the same step for step: same losses, same weights
    assert [(r.loss, r.tse, r.tse_ema) for r in off.history] == [(r.loss, r.tse, r.tse_ema) for r in on.history]
    assert torch.equal(off.model.conv1.weight, on.model.conv1.weight)
    # the stem's BatchNorm holds the statistics of the last epoch's first 2 batches taken together
    with torch.no_grad():
        stem = torch.cat([on.model.conv1(x.to(memory_format=torch.channels_last) if fid.channels_last else x)
                          for x, _ in list(on._epoch_batches(fid.epochs))[:2]])
    torch.testing.assert_close(on.model.bn1.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(on.model.bn1.running_var, stem.var(dim=(0, 2, 3), unbiased=False),
                               rtol=1e-4, atol=1e-5)
    assert not torch.allclose(off.model.bn1.running_mean, on.model.bn1.running_mean, rtol=1e-4, atol=1e-5)


@needs_fmnist
def test_augmented_training_is_deterministic_too():
    fid = TINY.replace(augment=True, epochs=1)
    arch = ArchConfig.baseline("resnet18")
    a = _metrics(list(train_proxy(arch, fidelity=fid, seed=0)))
    assert a == _metrics(list(train_proxy(arch, fidelity=fid, seed=0)))
    assert a != _metrics(list(train_proxy(arch, fidelity=TINY.replace(epochs=1), seed=0)))  # no augmentation


@needs_fmnist
def test_unaugmented_subset_is_the_same_images_and_bounded_in_memory():
    from evaluators.proxy import _unaugmented_subset

    _, splits = data.load_splits("fashion-mnist")
    images, labels = _unaugmented_subset(splits["train"], 100, 40)
    assert images.shape == (100, 1, 40, 40)  # grey: one channel kept, expanded per batch
    x, y = next(splits["train"].batches(100, 40, train=False, seed=0, limit=100))
    assert torch.equal(images.expand(-1, 3, -1, -1), x) and torch.equal(labels, y)
    with pytest.raises(ValueError, match=r"augment=False holds the 54000 training images at 224 px"):
        ProxyRun(ArchConfig.baseline("resnet18"), fidelity=TINY.replace(train_images=None, resolution=224))


@needs_fmnist
def test_stopping_early_is_just_not_iterating():
    gen = train_proxy(ArchConfig.baseline("resnet18"), fidelity=TINY.replace(epochs=3))
    first = next(gen)
    gen.close()
    assert first.epoch == 1 and first.epochs == 3


@needs_fmnist
def test_proxy_run_keeps_the_model_and_tests_on_the_test_split():
    arch = _scsa_resnet18()
    run = ProxyRun(arch, fidelity=TINY.replace(epochs=1), seed=0)
    assert not run.finished
    history = run.run()
    assert run.finished and run.history == history and len(history) == 1
    assert list(run) == []  # a finished run yields nothing more
    with pytest.raises(RuntimeError, match="finished"):
        run.train_epoch()
    keys = set(run.model.state_dict())
    assert {"conv1.weight", "fc.weight", "layer2.1.attn_mid.qkv_weight"} <= keys  # timm keys + attention
    assert run.model.fc.out_features == 10
    test = run.test(limit=100)
    assert test.images == 100 and 0.0 <= test.accuracy <= 1.0 and math.isfinite(test.loss)


@needs_fmnist
def test_the_evaluation_batch_size_changes_nothing_that_validation_measures():
    """Why ``eval_batch_size`` is in ``SPEED_ONLY``: in eval mode every image is evaluated on its own (SCSA's channel
    attention runs as the softmax at batch 7 and as its power series at 64 and 100)."""
    from evaluators.fidelity import SPEED_ONLY

    assert "eval_batch_size" in SPEED_ONLY
    run = ProxyRun(_scsa_resnet18(), fidelity=TINY.replace(epochs=1, val_images=100), seed=0)
    run.run()
    results = []
    for batch in (7, 64, 100):
        run.fidelity = run.fidelity.replace(eval_batch_size=batch)
        results.append(run.validate())
    for r in results[1:]:
        assert r.images == results[0].images == 100 and r.accuracy == results[0].accuracy
        assert r.loss == pytest.approx(results[0].loss, rel=1e-5)


@needs_fmnist
def test_divergence_raises_a_precise_error():
    fid = TINY.replace(optimizer="sgd", lr=1e12, weight_decay=0.0, warmup_epochs=0.0)
    with pytest.raises(TrainingDiverged, match=r"diverged.*epoch 1/2") as info:
        list(train_proxy(ArchConfig.baseline("resnet18"), fidelity=fid))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.epoch == 1
    assert not math.isfinite(err.loss)
    assert "lr=1e+12" in str(err)


@needs_fmnist
def test_cifar_stem_keeps_every_key_and_quadruples_the_maps():
    arch = ArchConfig.baseline("resnet18")
    default = ProxyRun(arch, fidelity=TINY)
    cifar = ProxyRun(arch, fidelity=TINY.replace(stem="cifar"))
    assert set(default.model.state_dict()) == set(cifar.model.state_dict())
    assert cifar.model.conv1.kernel_size == (3, 3) and cifar.model.conv1.stride == (1, 1)
    x = torch.zeros(2, 3, 32, 32)
    assert cifar.model.forward_features(x).shape[-1] == 4 * default.model.forward_features(x).shape[-1]


def test_bad_device_is_a_value_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        next(train_proxy(ArchConfig.baseline("resnet18"), fidelity=TINY, device="cuda"))


# ---------------------------------------------------------------------------------------------------------------
# Fidelity


def test_presets_exist_and_are_valid():
    assert set(PRESETS) == {"smoke", "fast", "default", "thorough"}
    for name, fid in PRESETS.items():
        assert preset(name) is fid
        assert isinstance(fid, Fidelity)
        assert Fidelity(**fid.to_dict()) == fid
    # every preset except smoke gives stage 4 of a ResNet at least 2x2 (>= 33 px with the timm stem)
    assert all(fid.resolution >= 33 for name, fid in PRESETS.items() if name != "smoke")
    # cheaper presets are cheaper: training images x pixels
    cost = {n: (f.train_images or 54000) * f.epochs * f.resolution**2 for n, f in PRESETS.items()}
    assert cost["smoke"] < cost["fast"] < cost["default"] < cost["thorough"]


def test_overrides():
    fid = preset("fast", epochs=5, lr=1, optimizer="sgd", train_images=None)
    assert fid.epochs == 5 and fid.optimizer == "sgd" and fid.train_images is None
    assert fid.lr == 1.0 and isinstance(fid.lr, float)
    assert preset(fid) is fid
    assert preset(fid, epochs=6).epochs == 6
    assert preset("fast") == PRESETS["fast"]  # the preset itself is not modified


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("quick", {}, r"unknown proxy preset 'quick'; choose one of smoke, fast, default, thorough"),
        (None, {}, r"unknown proxy preset None"),
        ("fast", {"epoch": 3}, r"unknown fidelity setting\(s\) epoch; valid: train_images"),
        ("fast", {"lr": -0.1}, r"fidelity lr=-0.1 must be a finite number > 0"),
        ("fast", {"lr": float("nan")}, r"fidelity lr=nan must be a finite number"),
        ("fast", {"lr": "0.1"}, r"fidelity lr='0.1' must be a finite number"),
        ("fast", {"epochs": 0}, r"fidelity epochs=0 must be a positive integer"),
        ("fast", {"batch_size": 2.5}, r"fidelity batch_size=2.5 must be a positive integer"),
        ("fast", {"resolution": True}, r"fidelity resolution=True must be a positive integer"),
        ("fast", {"train_images": 0}, r"train_images=0 must be a positive integer or None"),
        ("fast", {"optimizer": "adam"}, r"fidelity optimizer='adam' is unknown; choose one of sgd, adamw"),
        ("fast", {"schedule": "step"}, r"schedule='step' is unknown; choose one of cosine, constant"),
        ("fast", {"stem": "deep"}, r"stem='deep' is unknown; choose one of default, cifar"),
        ("fast", {"momentum": 1.0}, r"momentum=1.0 must be a finite number >= 0 and < 1"),
        ("fast", {"label_smoothing": -0.1}, r"label_smoothing=-0.1 must be a finite number >= 0"),
        ("fast", {"channels_last": 1}, r"channels_last=1 must be True or False"),
        ("fast", {"warmup_epochs": 10}, r"warmup_epochs=10 exceeds epochs="),
        ("fast", {"threads": 0}, r"fidelity threads=0 must be a positive integer or None"),
        ("fast", {"precise_bn": -1}, r"fidelity precise_bn=-1 must be a whole number of batches >= 0 \(0: off\)"),
        ("fast", {"precise_bn": 2.0}, r"fidelity precise_bn=2.0 must be a whole number of batches"),
        ("fast", {"score": "f1"}, r"score='f1' is unknown; choose one of accuracy, val_loss, loss, tse, tse_ema"),
    ],
)
def test_fidelity_errors(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        preset(name, **overrides)


def test_cifar_stem_only_for_resnets():
    from evaluators.proxy import _adapt_stem

    model = torch.nn.Module()
    with pytest.raises(ValueError, match="stem='cifar' is implemented for timm ResNets"):
        _adapt_stem(model, "efficientnet_b0", "cifar")


def test_lr_schedule_warmup_then_cosine_to_zero():
    from evaluators.proxy import _lr_factor

    factors = [_lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == 1.0 and all(a > b for a, b in zip(factors[2:], factors[3:]))
    assert 0 < factors[-1] < 0.05
    assert [_lr_factor(s, 10, 0, "constant") for s in range(3)] == [1.0, 1.0, 1.0]


def test_training_diverged_survives_pickling():
    import pickle

    from evaluators.proxy import TrainingDiverged

    err = pickle.loads(pickle.dumps(TrainingDiverged("loss is nan at epoch 1", epoch=1, step=3, loss=float("nan"))))
    assert isinstance(err, TrainingDiverged) and str(err) == "loss is nan at epoch 1"
    assert (err.epoch, err.step) == (1, 3)


def test_scores_name_epoch_result_fields_and_have_directions():
    from evaluators.scores import SCORES
    from results.pareto import OBJECTIVE_DIRECTIONS

    r = EpochResult(epoch=1, epochs=2, accuracy=0.5, loss=1.2, val_loss=1.1, time_s=1.0, images_seen=64, tse=9.0,
                    tse_ema=8.0)
    assert [r.to_dict()[name] for name in SCORES] == [0.5, 1.1, 1.2, 9.0, 8.0]
    # every score can be an objective: the results know which way it is better
    assert {OBJECTIVE_DIRECTIONS[name] for name in SCORES} == {"maximize", "minimize"}
    assert OBJECTIVE_DIRECTIONS["accuracy"] == "maximize" and OBJECTIVE_DIRECTIONS["tse"] == "minimize"
