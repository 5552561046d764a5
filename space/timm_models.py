"""timm model entry points for searched architectures: ``timm.create_model("scsa_resnet50", arch=...)``.

Importing this module registers ``scsa_<backbone>`` for the common backbones of every supported family, so that
timm's own tooling (``timm.create_model``, ``timm.list_models("scsa_*")``, timm's training script with
``--model scsa_resnet50 --model-kwargs arch=best_config.json``) builds a searched architecture::

    import space.timm_models, timm
    model = timm.create_model("scsa_resnet50", arch="best_config.json", num_classes=10)

``arch`` may be an ``ArchConfig``, its dict, or a path to its JSON file; without ``arch`` the paper's placement is
built. Any other keyword goes to the backbone's own timm entry point (e.g. ``img_size`` for Swin). A RepVGG is
built as it trains; ``timm.utils.model.reparameterize_model(model)`` (or ``space.build.deploy_model``) folds it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

from timm.models import register_model

from .build import build_model
from .config import ArchConfig

BACKBONES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "wide_resnet50_2", "wide_resnet101_2", "mobilenetv2_100", "mobilenetv2_140", "efficientnet_b0",
    "efficientnet_b1", "regnetx_002", "regnetx_004", "regnety_002", "regnety_004", "regnety_016",
    "repvgg_a0", "repvgg_a1", "repvgg_a2", "repvgg_b0", "repvgg_b1", "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224", "swin_base_patch4_window7_224", "convnext_atto", "convnext_femto",
    "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small",
)


def load_arch(arch: ArchConfig | Mapping | str | Path | None, backbone: str) -> ArchConfig:
    """Turn ``arch`` (config, dict, JSON path or None for the paper default) into a validated ArchConfig."""
    if arch is None:
        return ArchConfig.paper_default(backbone)
    if isinstance(arch, ArchConfig):
        config = arch
    elif isinstance(arch, Mapping):
        config = ArchConfig.from_dict(arch)
    else:
        path = Path(arch)
        try:
            config = ArchConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except OSError as e:
            raise ValueError(f"cannot read architecture file {path}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"architecture file {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if config.backbone != backbone:
        raise ValueError(f"scsa_{backbone} was given a config for {config.backbone}; use scsa_{config.backbone}")
    return config.validate()


def _entry_point(backbone: str):
    def entry(pretrained: bool = False, arch=None, **kwargs):
        if pretrained:
            raise ValueError("searched architectures have no pretrained weights; train them (pretrained=False)")
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        return build_model(load_arch(arch, backbone), **kwargs)

    entry.__name__ = entry.__qualname__ = f"scsa_{backbone}"
    entry.__module__ = __name__
    entry.__doc__ = f"{backbone} with SCSA (or another attention) placed as an ArchConfig says (``arch=``)."
    return entry


for _bb in BACKBONES:
    _fn = _entry_point(_bb)
    setattr(sys.modules[__name__], _fn.__name__, register_model(_fn))
