"""Build an ArchConfig as a real timm model."""

from __future__ import annotations

import timm
from timm.utils.model import reparameterize_model
from torch import nn

from .attention import create_attention
from .backbones import (
    REPARAMETERIZED,
    anchor_name,
    family,
    from_map,
    input_size_kwargs,
    selected_blocks,
    slot_layout,
    stages,
    to_map,
)
from .config import ArchConfig

# timm kwargs that fix Swin's input size; without any of them build_model builds Swin for any input size.
_SWIN_SIZE_KWARGS = frozenset({"img_size", "strict_img_size", "dynamic_img_size"})


class ApplyAttention:
    """Forward hook that passes the anchor's output through an attention module, as a (B, C, H, W) map.

    A picklable class rather than a closure so that models can be deep-copied and saved whole. For token layouts
    the map's grid is recorded from the block's input by ``record_grid`` (a forward pre-hook on the block).
    """

    layout = "nchw"  # class defaults: instances pickled before layouts existed still load and run
    grid: tuple[int, int] | None = None

    def __init__(self, attn: nn.Module, layout: str = "nchw") -> None:
        self.attn = attn
        self.layout = layout

    def record_grid(self, block: nn.Module, args: tuple) -> None:
        self.grid = tuple(args[0].shape[1:3])

    def __call__(self, module: nn.Module, args: tuple, output):
        return from_map(self.attn(to_map(output, self.layout, self.grid)), self.layout, output)


def attach(block: nn.Module, fam: str, position: str, attn: nn.Module) -> None:
    """Put ``attn`` at ``position`` of ``block``: registered as ``block.attn_<position>``, run by a hook."""
    anchor = getattr(block, anchor_name(block, fam, position))
    block.add_module(f"attn_{position}", attn)
    hook = ApplyAttention(attn, slot_layout(block, fam, position))
    if hook.layout == "tokens":
        block.register_forward_pre_hook(hook.record_grid)
    anchor.register_forward_hook(hook)


def build_model(arch: ArchConfig, num_classes: int = 1000, **timm_kwargs) -> nn.Module:
    """``timm.create_model(arch.backbone, num_classes=..., **timm_kwargs)`` with the config's attention inserted.

    The backbone's own parameter names are untouched; added modules live under ``<block>.attn_mid`` or
    ``<block>.attn_end``. Channels at each slot are read off the built model, so any width multiplier or variant
    that timm builds is handled.

    Swin: without ``img_size`` (or ``strict_img_size`` / ``dynamic_img_size``) it is built as timm's
    ``strict_img_size=False`` model: the 224 px network (same parameters, windows and shapes) that accepts any input
    whose sides divide by the patch size (4), padding maps smaller than a window, so a proxy can train it at 32-64
    px. Pass ``img_size=`` for timm's network built for that size (windows clamped to small maps, masks fixed).
    RepVGG is built as it trains (branches); ``deploy_model`` folds them.
    """
    arch.validate()
    fam = family(arch.backbone)
    timm_kwargs.setdefault("pretrained", False)
    if fam == "swin" and not _SWIN_SIZE_KWARGS & timm_kwargs.keys():
        timm_kwargs["strict_img_size"] = False
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
        for attr in ("num_features", "out_channels", "num_channels", "out_features"):
            if isinstance(getattr(mod, attr, None), int):
                return getattr(mod, attr)
    raise ValueError(f"cannot tell the channels at the {position} slot of {type(block).__name__}")


def deploy_model(model: nn.Module) -> nn.Module:
    """The network as deployed: a re-parameterised copy for families whose training-time branches fold away
    (RepVGG, through timm's ``reparameterize_model``; attention sits on modules it keeps), else ``model`` itself.

    Same outputs in eval mode; FLOPs and params of such families are those of this network.
    """
    arch = getattr(model, "arch_config", None)
    if arch is None or family(arch["backbone"]) not in REPARAMETERIZED:
        return model
    return reparameterize_model(model)


def build_deployed(arch: ArchConfig, resolution: int, num_classes: int = 1000) -> nn.Module:
    """The network as it is deployed, in eval mode: what FLOPs are counted on and latency is timed on. Built for
    ``resolution`` (Swin's windows and attention masks follow it, fixed once) and re-parameterised (RepVGG)."""
    model = build_model(arch, num_classes=num_classes, **input_size_kwargs(arch.backbone, resolution)).eval()
    return deploy_model(model)
