"""How much training one proxy trial gets, and how: :class:`Fidelity`, the named presets, and overrides.

A fidelity is plain and frozen, so it travels to trial workers as it is (``search.settings.TrialSettings``) and
into ``search.json``, where a resumed search checks it has not changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .scores import SCORES, verification_score

__all__ = ["DEFAULT_VERIFY", "OPTIMIZERS", "PRESETS", "SCHEDULES", "SPEED_ONLY", "STEMS", "VERIFY_FORMS", "VERIFY_OFF",
           "Fidelity", "describe_verify", "parse_overrides", "preset", "scaled", "verification"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
STEMS = ("default", "cifar")
#: The settings that change how fast a trial runs and nothing it measures: the threads, and the batch size of
#: evaluation, which (in eval mode) runs image by image.
SPEED_ONLY = ("threads", "eval_batch_size")


@dataclass(frozen=True)
class Fidelity:
    """How much training one trial gets, and how.

    ``train_images`` / ``val_images``: images per epoch from the train split and images evaluated from the val split
    after every epoch (``None``: the whole split). Both are fixed, class-balanced prefixes of the split, the same for
    every trial and seed; the training order and augmentation change with the seed and the epoch.
    ``resolution``: side of the square input (images are resized to it). ``schedule``: ``cosine`` (linear warm-up
    over ``warmup_epochs``, then cosine decay to 0 at the last step) or ``constant`` (warm-up, then flat).
    ``momentum`` is SGD's (Nesterov) momentum and AdamW's beta1. Weight decay applies to weights only, not to
    normalisation parameters or biases. ``augment``: random crop + flip (the data module's); off, the training
    subset is held in memory once, unaugmented, and only reshuffled every epoch (see :data:`PRESETS` for why the
    proxies go without). ``stem``: ``default`` (timm's) or ``cifar`` (ResNet family only: the
    7x7/2 conv + max-pool replaced by a 3x3/1 conv, keeping the key ``conv1.weight``; the maps grow 4x per side,
    but the network is no longer the one deployed). ``threads``: ``torch.set_num_threads`` for the trial (process
    wide; ``None`` leaves it alone). ``eval_batch_size``: images per forward pass of validation and testing.
    ``channels_last``: NHWC memory format for model and inputs. ``amp``: bfloat16
    autocast on CUDA (ignored on CPU, where bfloat16 is slower without AMX). ``score``: what ranks the trial (a
    name of :data:`~evaluators.scores.SCORES`, read off every epoch's :class:`EpochResult`). ``rung_sd``: the seed
    standard deviation of ``score`` after the first epoch, as measured for the preset (``bench/proxy_fidelity.py``);
    the early-stopping scheduler lets a trial go on that ties with the promoted ones within it (0: plain ASHA).
    ``precise_bn``: after every epoch, BatchNorm's running statistics are recomputed from this many training batches
    taken together, with the weights fixed (fvcore's ``update_bn_stats``, "precise BN"), before validating;
    0 keeps the running averages that training left. Training itself is unchanged (train mode normalises with the
    batch's own statistics): only validation, testing and the saved weights see the recomputed ones.
    """

    train_images: int | None
    val_images: int | None
    resolution: int
    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    stem: str = "default"
    threads: int | None = None
    channels_last: bool = False
    # 64, not 256: evaluation is per image (eval mode), so this sets speed, not results. At 256 the largest
    # tensors of a validation outgrow what glibc keeps in its heap (32 MiB) and are mapped anew, page-faulted and
    # zeroed by every call: mobilenetv2_100's paper default validated 500 images in 2.15 and 1.99 s at 256, 0.94
    # and 0.92 s at 64 (1.06 and 1.11 at 32), the same loss and accuracy to 5 decimals; resnet50 within noise.
    eval_batch_size: int = 64
    amp: bool = False
    score: str = "accuracy"
    rung_sd: float = 0.0
    precise_bn: int = 0

    def __post_init__(self) -> None:
        def positive_int(name: str, none_means: str | None = None) -> None:
            value = getattr(self, name)
            if value is None and none_means is not None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                extra = f" or None ({none_means})" if none_means else ""
                raise ValueError(f"fidelity {name}={value!r} must be a positive integer{extra}")

        def real(name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and value < high
            if not ok:
                bound = f"{'>' if low_open else '>='} {low:g}" + (f" and < {high:g}" if math.isfinite(high) else "")
                raise ValueError(f"fidelity {name}={value!r} must be a finite number {bound}")
            object.__setattr__(self, name, float(value))  # ints are accepted, stored as floats (equality by value)

        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                value = getattr(self, name)
                raise ValueError(f"fidelity {name}={value!r} is unknown; choose one of {', '.join(options)}")

        positive_int("train_images", "the whole split")
        positive_int("val_images", "the whole split")
        positive_int("resolution")
        positive_int("epochs")
        positive_int("batch_size")
        positive_int("eval_batch_size")
        positive_int("threads", "leave torch's setting")
        if isinstance(self.precise_bn, bool) or not isinstance(self.precise_bn, int) or self.precise_bn < 0:
            raise ValueError(f"fidelity precise_bn={self.precise_bn!r} must be a whole number of batches >= 0 "
                             f"(0: off)")
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("stem", STEMS)
        choice("score", SCORES)
        real("lr", 0.0, low_open=True)
        real("weight_decay", 0.0)
        real("momentum", 0.0, 1.0)
        real("warmup_epochs", 0.0)
        real("rung_sd", 0.0)
        real("label_smoothing", 0.0, 1.0)
        for name in ("augment", "channels_last", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"fidelity {name}={getattr(self, name)!r} must be True or False")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"fidelity warmup_epochs={self.warmup_epochs:g} exceeds epochs={self.epochs}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable), e.g. for a trial's record."""
        return asdict(self)

    def replace(self, **overrides: Any) -> Fidelity:
        """A copy with some fields changed; ``ValueError`` naming unknown fields or invalid values."""
        _check_names(overrides)
        return replace(self, **overrides)


def _check_names(overrides: Mapping[str, Any]) -> None:
    allowed = [f.name for f in fields(Fidelity)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown fidelity setting(s) {', '.join(unknown)}; valid: {', '.join(allowed)}")


# Measured on the reference machine: 2 vCPUs of an AMD EPYC, no GPU, torch 2.14, Fashion-MNIST, seed 0. "cpu-s"
# is the CPU time of one whole trial (model build, training subset, every epoch and its validation) with
# threads=1, which other processes on the machine barely disturb; "~s on 2 cores" divides it by 1.78, the
# 2-thread speedup measured on an idle machine. "base" = ArchConfig.baseline, "paper" = ArchConfig.paper_default
# (SCSA in every block: the dearest config of the space). "maps" = what the attention slots of resnet18 and
# resnet50 see per stage (layer1/2/3/4) at the preset's resolution.
#
# Why these settings (all measured on resnet18/resnet50, see the report that came with this file):
# * no augmentation: in a proxy almost every image is seen once or twice, so crop + flip only make the task harder
#   (resnet18, 40 px, 1024 images x 2 epochs: 0.669 -> 0.792 val accuracy without it; 4096 x 4 at 64 px:
#   0.819 -> 0.882). Full trainings should set augment=True.
# * AdamW 3e-3, batch 32, short warm-up: more steps per image beat larger batches at a fixed image budget
#   (0.669 vs 0.598 for batch 32 vs 64); SGD(0.1, Nesterov) was lower (0.616 vs 0.669).
# * fresh images beat repeated ones: 1536 images x 2 epochs (0.732) > 1024 x 3 (0.697), both with augmentation.
# * channels_last: +16% for resnet50 on CPU (46 -> 54 img/s per core at 48 px), neutral for resnet18 and with
#   SCSA (-7% .. +6%).
# * threads: with other processes on the same cores, threads=1 per trial is far better than 2 (OpenMP threads
#   spin while waiting for a descheduled partner: this test suite took 27 CPU-s at 1 thread, 118 at 2).
# * precise_bn=4: after 48 steps the running averages can lag far behind the model. SCSA with the softmax gate
#   in the middle slot of a mobilenetv2_100 block scales the block's features down by about 1/(H*W*C), and the
#   scale moves fast as the softmax sharpens; the BatchNorm after it then normalised validation images with a
#   variance about 50x too large and every prediction was one class. 6 of 20 mobilenetv2_100 configs of
#   bench/proxy_fidelity.py scored below 15 % (chance: 10 %) while their long runs reached 66-78 %; with the
#   statistics recomputed from 4 batches (128 images, forward only) they score 36.9-52.2 %, and validation
#   accuracy ranks the 20 at +0.79 against the long run instead of +0.40. resnet50 moved within its noise. The
#   training loss, the `default` score, is bit for bit the same; a trial takes about 3 % longer
#   (docs/proxy.md#batchnorm-statistics).
#: The recipe every preset shares (why each choice: above); presets differ in how much they train and see.
_PROXY_RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "augment": False,
                                 "channels_last": True, "precise_bn": 4}

PRESETS: dict[str, Fidelity] = {
    # Seconds, for tests and wiring checks: the accuracy means nothing (chance after 2 x 128 images; the test
    # suite's searches spend most of their time in these trials, hence so few images).
    # 32 px -> maps 8/4/2/1: stage 4 is 1x1, where SMSA is degenerate (but runs).
    # resnet18 at 1 thread: base 1.2 s, paper default 2.8 s.
    "smoke": Fidelity(
        train_images=128,
        val_images=64,
        resolution=32,
        epochs=2,
        batch_size=32,
        warmup_epochs=0.25,
        eval_batch_size=128,
        **_PROXY_RECIPE,
    ),
    # Quick screening, resnet18-class backbones: one epoch of 1536 fresh images, so the scheduler has nothing to
    # stop (every trial runs to the end). 40 px -> maps 10/5/3/2.
    # resnet18 base 13.9 cpu-s (~8 s on 2 cores), val accuracy 0.780 (seeds 1, 2: 0.790, 0.762); paper 19.3
    # cpu-s (~11 s), 0.786. resnet50 base 29.4 cpu-s (~17 s), 0.742; paper 39.0 (~22 s), 0.728.
    "fast": Fidelity(
        train_images=1536,
        val_images=500,
        resolution=40,
        epochs=1,
        batch_size=32,
        warmup_epochs=0.15,
        **_PROXY_RECIPE,
    ),
    # The search default, sized for resnet50 at <= 30 s per trial on 2 cores; two epochs of 768 images, so the
    # scheduler can stop a trial after the first. 48 px -> maps 12/6/3/2. Ranked by the training loss of the last
    # epoch at lr 1e-2. bench/proxy_fidelity.py, against a 10x longer run (mean of 2 seeds), 3 draws: Spearman 0.63
    # on 12 resnet50 configs (the long run ranks itself at 0.65 between seeds), 0.75 on 10 mobilenetv2_100 configs
    # (ceiling 0.88); validation accuracy at lr 3e-3, the earlier default, ranked at 0.40 and 0.34. The score was
    # the knob that mattered (README). resnet50 ~29 cpu-s per trial.
    "default": Fidelity(
        train_images=768,
        val_images=500,
        resolution=48,
        epochs=2,
        batch_size=32,
        warmup_epochs=0.25,
        **{**_PROXY_RECIPE, "lr": 1e-2},
        score="loss",
        # resnet50, 3 seeds x 12 configs (mobilenetv2_100: 0.39). With a band of half of it, rung 1 of the ASHA
        # stopped 0.8 of the 8 configs whose final mean is within 2 sd of the best per draw, instead of 2.4 (README).
        rung_sd=0.109,
    ),
    # Fewer, better-ranked trials: 4 epochs of 4096 images at 64 px -> maps 16/8/4/2 (the first size at which
    # SCSA's default 7-px pooling window gives stage 1 a 2x2 grid); 2000 val images (standard error of the accuracy
    # ~0.9 points instead of ~2 at 500). Extrapolated from the first epoch: resnet18 base ~185 cpu-s (~1.7 min on
    # 2 cores; 0.812 after epoch 1); resnet50 base ~470 cpu-s (~4.5 min; 0.804 after epoch 1), paper ~620 cpu-s
    # (~6 min; 0.795). resnet18 with this recipe (1000 val images) reached 0.882 after the 4 epochs.
    "thorough": Fidelity(
        train_images=4096,
        val_images=2000,
        resolution=64,
        epochs=4,
        batch_size=64,
        warmup_epochs=0.25,
        **_PROXY_RECIPE,
    ),
}


def preset(name: str | Fidelity = "default", **overrides: Any) -> Fidelity:
    """The named preset (or a given Fidelity), with ``overrides`` applied.

    Raises ``ValueError`` naming the unknown preset, the unknown setting(s) or the invalid value::

        >>> preset("fast", epochs=5).epochs
        5
    """
    if isinstance(name, Fidelity):
        base = name
    elif isinstance(name, str) and name in PRESETS:
        base = PRESETS[name]
    else:
        raise ValueError(f"unknown proxy preset {name!r}; choose one of {', '.join(PRESETS)}")
    return base.replace(**overrides) if overrides else base


def scaled(base: Fidelity, factor: int) -> Fidelity:
    """``base`` with ``factor`` times its training and validation images (a split used whole stays whole): the
    same recipe, epochs and resolution, so the only change is how much it sees. ``ValueError`` unless ``factor`` is
    a positive integer."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"fidelity scale {factor!r} must be a positive integer")
    grow = {k: None if getattr(base, k) is None else getattr(base, k) * factor for k in ("train_images", "val_images")}
    return base.replace(**grow)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "score=loss", "train_images=none"]`` -> fidelity overrides, each value parsed as its field's
    type (integers, numbers, true/false, names; ``none`` where the field allows None). ``ValueError`` naming the
    item."""
    kinds = {f.name: str(f.type) for f in fields(Fidelity)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        _check_names({key: None})
        kind = kinds[key]
        try:
            if text.lower() == "none" and "None" in kind:
                value: Any = None
            elif kind.startswith("int"):
                value = int(text)
            elif kind == "float":
                value = float(text)
            elif kind == "bool":
                if text.lower() not in ("true", "false"):
                    raise ValueError
                value = text.lower() == "true"
            else:
                value = text
        except ValueError:
            raise ValueError(f"{item!r}: {key} takes {kind.replace(' | None', ' or none')}") from None
        out[key] = value
    return out


#: ``--verify``: no verification rung.
VERIFY_OFF = "off"
#: The verification fidelity a search uses unless told otherwise: the cheapest candidate of
#: ``bench/proxy_fidelity.py``, a second measurement on fresh seeds and 3x the validation images. On 20 configs per
#: backbone it ranks like the proxy, within intervals that reach the long run's own (docs/proxy.md#verification).
DEFAULT_VERIFY = "3x"
VERIFY_FORMS = f"{VERIFY_OFF}, Nx (N times the proxy's images, e.g. 3x) or a preset ({', '.join(PRESETS)})"


def verification(proxy: Fidelity, spec: str) -> Fidelity | None:
    """The fidelity the finalists are verified at: ``Nx`` (:func:`scaled`: ``N`` times the proxy's training and
    validation images, N >= 2) or a preset name (its own recipe), ranked by
    :func:`~evaluators.scores.verification_score` of the proxy's score; None for ``off``. ``ValueError`` naming
    the valid forms."""
    text = str(spec).strip().lower()
    if text == VERIFY_OFF:
        return None
    if text.endswith("x") and text[:-1].isdigit():
        factor = int(text[:-1])
        if factor < 2:
            raise ValueError(f"--verify {spec}: verifying at {factor}x the proxy's images is no higher fidelity; "
                             f"give 2x or more")
        return scaled(proxy, factor).replace(score=verification_score(proxy.score))
    if text in PRESETS:
        return PRESETS[text].replace(score=verification_score(proxy.score), threads=proxy.threads)
    raise ValueError(f"--verify {spec!r} is not a fidelity; give {VERIFY_FORMS}")


def describe_verify(spec: str) -> str:
    """``"3x"`` -> ``"3x the proxy's images"``; ``"thorough"`` -> ``"the thorough preset"``; ``"off"`` -> ``"off"``."""
    text = str(spec).strip().lower()
    if text.endswith("x") and text[:-1].isdigit():
        return f"{text} the proxy's images"
    return text if text == VERIFY_OFF else f"the {text} preset"
