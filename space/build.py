"""Build an ArchConfig as a real timm model."""

from __future__ import annotations

import timm
from torch import nn

from .attention import create_attention
from .backbones import anchor_name, family, selected_blocks, stages
from .config import ArchConfig


class ApplyAttention:
    """Forward hook that passes the anchor's output through an attention module.

    A picklable class rather than a closure so that models can be deep-copied and saved whole.
    """

    def __init__(self, attn: nn.Module) -> None:
        self.attn = attn

    def __call__(self, module: nn.Module, args: tuple, output):
        return self.attn(output)


def attach(block: nn.Module, fam: str, position: str, attn: nn.Module) -> None:
    """Put ``attn`` at ``position`` of ``block``: registered as ``block.attn_<position>``, run by a hook."""
    anchor = getattr(block, anchor_name(block, fam, position))
    block.add_module(f"attn_{position}", attn)
    anchor.register_forward_hook(ApplyAttention(attn))


def build_model(arch: ArchConfig, num_classes: int = 1000, **timm_kwargs) -> nn.Module:
    """``timm.create_model(arch.backbone, num_classes=..., **timm_kwargs)`` with the config's attention inserted.

    The backbone's own parameter names are untouched; added modules live under ``<block>.attn_mid`` or
    ``<block>.attn_end``. Channels at each slot are read off the built model, so any width multiplier or variant
    that timm builds is handled.
    """
    arch.validate()
    fam = family(arch.backbone)
    timm_kwargs.setdefault("pretrained", False)
    model = timm.create_model(arch.backbone, num_classes=num_classes, **timm_kwargs)
    layout = stages(model, fam)
    for stage_cfg, (_, blocks) in zip(arch.stages, layout):
        if stage_cfg.attn == "none":
            continue
        for b in selected_blocks(len(blocks), stage_cfg.blocks):
            block = blocks[b][1]
            channels = slot_channels(block, fam, stage_cfg.position)
            attn = create_attention(stage_cfg.attn, channels, **stage_cfg.attention_kwargs())
            attach(block, fam, stage_cfg.position, attn)
    model.arch_config = arch.to_dict()  # travels with the model (e.g. into checkpoints' metadata)
    return model


def slot_channels(block: nn.Module, fam: str, position: str) -> int:
    """Output channels at a slot: those of the last layer, up to and including the anchor, that states them."""
    anchor = getattr(block, anchor_name(block, fam, position))
    order = list(block.modules())[1:]
    inside = {id(m) for m in anchor.modules()}
    last = max(i for i, m in enumerate(order) if id(m) in inside)
    for mod in reversed(order[: last + 1]):
        for attr in ("num_features", "out_channels", "num_channels"):
            if isinstance(getattr(mod, attr, None), int):
                return getattr(mod, attr)
    raise ValueError(f"cannot tell the channels at the {position} slot of {type(block).__name__}")
