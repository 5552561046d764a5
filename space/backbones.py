"""Where attention can go in each supported timm family, and what it sees there.

A *slot* is a place inside a block, named after the paper:

* ``mid``: the authors' slot, right after the spatial (3x3 or depthwise) convolution and its activation, at the
  block's inner width (ResNet Bottleneck after ``act2``, BasicBlock after ``act1``, inverted residual after the
  depthwise convolution, RegNet after the grouped 3x3 convolution, before any SE the backbone already has).
* ``end``: timm's ``attn_layer`` slot, after the block's last normalisation and before the residual add.

The newer families have no inner width to speak of, so the two slots are the paper's and timm's ideas carried over:

* RepVGG (``RepVggBlock``: 3x3, 1x1 and identity branches summed, then ReLU): ``end`` is timm's own ``attn`` slot
  after the branch sum and before the ReLU (where ``repvgg_d2se`` has its SE); ``mid`` is after the ReLU, i.e. after
  "the 3x3 conv and its activation" as the paper puts it. Nothing may sit inside a branch: re-parameterisation
  (``timm.utils.model.reparameterize_model``) folds the branches into one 3x3 conv, and both slots are on modules
  it keeps (``attn``, ``act``), so a searched RepVGG deploys as a plain conv stack with attention after some convs.
* Swin (``SwinTransformerBlock``, tokens held as (B, H, W, C)): ``mid`` is after the (shifted) window attention,
  the block's spatial mixing, once its windows are merged back into a map and before its residual add (anchor
  ``drop_path1``: ``_attn`` is a method, and drop path is the first module that sees the merged map, so in training
  attention sees the branch after stochastic depth: a dropped sample stays zero, SCSA's gates ignore the rescale
  of a kept one, and in eval it is the identity); ``end`` is after the MLP, before the block's last residual add
  (the MLP sees tokens as (B, H*W, C); the grid is taken from the block's input).
* ConvNeXt (``ConvNeXtBlock``): ``mid`` is after the depthwise 7x7; ``end`` is after the MLP, before layer scale and
  the residual add. Not after layer scale: its 1e-6 initial value would leave SCSA's GroupNorms looking at maps
  smaller than their eps, i.e. blind gates, until the scale has grown.

Attention sees every slot as a (B, C, H, W) map (``to_map`` / ``from_map``: permutes and reshapes, no copies, the
layout of each slot in ``slot_layout``). Attention is attached with a forward hook on the module that precedes the
slot (its *anchor*) and registered on the block as ``attn_mid`` / ``attn_end``. Hooks rather than replacing
modules, because every timm key of the backbone then stays exactly as timm names it (timm checkpoints load
strictly, apart from the added modules), and one mechanism serves every family.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import timm
import torch
from torch import nn

POSITIONS = ("mid", "end")
BLOCK_PATTERNS = ("all", "alternate", "last")

# timm module that defines the model entry point -> family name
FAMILIES = {
    "timm.models.resnet": "resnet",
    "timm.models.efficientnet": "efficientnet",
    "timm.models.regnet": "regnet",
    "timm.models.byobnet": "repvgg",
    "timm.models.swin_transformer": "swin",
    "timm.models.convnext": "convnext",
}
# family -> model-name prefix, where the timm module also defines other families (byobnet: gernet, resnet51q, ...)
NAME_PREFIXES = {"repvgg": "repvgg_"}
# Families trained with branches that fold away for deployment: FLOPs and params are counted after folding.
REPARAMETERIZED = frozenset({"repvgg"})
# family -> block class name -> slot -> anchor attribute names, first present (not None) wins
ANCHORS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "resnet": {
        "Bottleneck": {"mid": ("aa",), "end": ("se", "bn3")},
        "BasicBlock": {"mid": ("aa",), "end": ("se", "bn2")},
    },
    "efficientnet": {
        "InvertedResidual": {"mid": ("aa",), "end": ("bn3",)},
        "DepthwiseSeparableConv": {"mid": ("aa",), "end": ("bn2",)},
        "EdgeResidual": {"mid": ("bn1",), "end": ("bn2",)},
    },
    "regnet": {
        "Bottleneck": {"mid": ("conv2",), "end": ("conv3",)},
    },
    "repvgg": {
        "RepVggBlock": {"mid": ("act",), "end": ("attn",)},
    },
    "swin": {
        "SwinTransformerBlock": {"mid": ("drop_path1",), "end": ("mlp",)},
    },
    "convnext": {
        "ConvNeXtBlock": {"mid": ("conv_dw",), "end": ("mlp",)},
    },
}
EXAMPLES = (
    "resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, mobilenetv2_100, efficientnet_b0, regnetx_002, "
    "repvgg_a0, swin_tiny_patch4_window7_224, convnext_atto"
)


class UnsupportedBackboneError(ValueError):
    """The backbone is not a timm model, or not of a family with known attention slots."""


@dataclass(frozen=True)
class Slot:
    """One place in one block: its module path, anchor, and what the attention sees there."""

    stage: int  # 0-based
    block: int  # 0-based within the stage
    block_path: str
    position: str
    anchor: str
    channels: int
    height: int
    width: int


def family(backbone: str) -> str:
    """The family of a timm model name, or ``UnsupportedBackboneError`` naming what is supported."""
    if not isinstance(backbone, str) or not backbone:
        raise UnsupportedBackboneError(f"backbone must be a timm model name, got {backbone!r}")
    try:
        module = timm.models.model_entrypoint(backbone).__module__
    except Exception:
        raise UnsupportedBackboneError(
            f"unknown backbone {backbone!r}: not a timm model name (supported families: "
            f"{', '.join(sorted(set(FAMILIES.values())))}, e.g. {EXAMPLES})"
        ) from None
    fam = FAMILIES.get(module)
    if fam is None or not backbone.startswith(NAME_PREFIXES.get(fam, "")):
        raise UnsupportedBackboneError(
            f"backbone {backbone!r} is a timm model of family {module.rsplit('.', 1)[-1]!r}, which has no attention "
            f"slots here; supported families: {', '.join(sorted(set(FAMILIES.values())))} (e.g. {EXAMPLES})"
        )
    return fam


def input_size_kwargs(backbone: str, resolution: int) -> dict:
    """timm keyword arguments that build ``backbone`` for ``resolution`` px inputs (empty where size does not matter).

    Swin is built for one input size: its attention masks, and its windows where a map is smaller than the window,
    follow ``img_size`` (timm clamps the window to such maps).
    """
    return {"img_size": resolution} if family(backbone) == "swin" else {}


def stages(model: nn.Module, fam: str) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """``[(stage_path, [(block_path, block), ...]), ...]`` in forward order."""
    if fam == "resnet":
        groups = [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5) if hasattr(model, f"layer{i}")]
    elif fam == "efficientnet":
        groups = [(f"blocks.{i}", stage) for i, stage in enumerate(model.blocks)]
    elif fam == "regnet":
        groups = [(f"s{i}", getattr(model, f"s{i}")) for i in range(1, 5)]
    elif fam == "repvgg":  # the stem is a RepVggBlock too, but not part of a stage
        groups = [(f"stages.{i}", stage) for i, stage in enumerate(model.stages)]
    elif fam == "swin":
        groups = [(f"layers.{i}.blocks", stage.blocks) for i, stage in enumerate(model.layers)]
    elif fam == "convnext":
        groups = [(f"stages.{i}.blocks", stage.blocks) for i, stage in enumerate(model.stages)]
    else:
        raise UnsupportedBackboneError(f"no stage layout for family {fam!r}")
    return [(path, [(f"{path}.{name}", blk) for name, blk in stage.named_children()]) for path, stage in groups]


def anchor_name(block: nn.Module, fam: str, position: str) -> str:
    kind = type(block).__name__
    try:
        names = ANCHORS[fam][kind][position]
    except KeyError:
        raise UnsupportedBackboneError(f"no {position!r} slot known for {fam} block {kind}") from None
    for name in names:
        if getattr(block, name, None) is not None:
            return name
    raise UnsupportedBackboneError(f"{fam} block {kind} has none of the anchors {names} for slot {position!r}")


def slot_layout(block: nn.Module, fam: str, position: str) -> str:
    """How the anchor's output holds the map: ``nchw``, ``nhwc`` or ``tokens`` ((B, H*W, C), grid from the block's
    input, which is (B, H, W, C))."""
    if fam == "swin":
        return "nhwc" if position == "mid" else "tokens"
    if fam == "convnext" and position == "end" and not block.use_conv_mlp:
        return "nhwc"  # timm runs the MLP as Linear layers on channels-last tokens unless conv_mlp
    return "nchw"


def to_map(x: torch.Tensor, layout: str, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``x`` seen as a (B, C, H, W) map: a permuted view (channels-last strides), no copy."""
    if layout == "nchw":
        return x
    if layout == "tokens":
        x = x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1])
    return x.permute(0, 3, 1, 2)


def from_map(y: torch.Tensor, layout: str, like: torch.Tensor) -> torch.Tensor:
    """Inverse of ``to_map``: ``y`` (B, C, H, W) back in the layout (and shape) of ``like``."""
    if layout == "nchw":
        return y
    return y.permute(0, 2, 3, 1).reshape(like.shape)


@functools.lru_cache(maxsize=64)
def slots(backbone: str, resolution: int = 224) -> tuple[tuple[Slot, ...], ...]:
    """All slots of ``backbone`` per stage, with channels and map size at ``resolution`` px.

    Found by one forward pass on the ``meta`` device (shapes only, no memory, no arithmetic), so every family and
    every timm variant is described by what it actually computes rather than by a table.
    """
    fam = family(backbone)
    with torch.device("meta"):
        model = timm.create_model(  # eval: 1x1 maps at batch 1
            backbone, pretrained=False, num_classes=0, **input_size_kwargs(backbone, resolution)
        ).eval()
    seen: dict[tuple[str, str], tuple[int, ...]] = {}
    grids: dict[str, tuple[int, int]] = {}
    handles = []
    layout = stages(model, fam)
    for _, blocks in layout:
        for path, blk in blocks:

            def record_grid(_m, args, path=path):
                grids[path] = tuple(args[0].shape[1:3])  # only read for token layouts, whose blocks take (B,H,W,C)

            handles.append(blk.register_forward_pre_hook(record_grid))
            for pos in POSITIONS:
                anchor = getattr(blk, anchor_name(blk, fam, pos))
                kind = slot_layout(blk, fam, pos)

                def record(_m, _a, out, key=(path, pos), kind=kind):
                    seen[key] = tuple(to_map(out, kind, grids.get(key[0])).shape)

                handles.append(anchor.register_forward_hook(record))
    with torch.no_grad():
        model(torch.empty(1, 3, resolution, resolution, device="meta"))
    for h in handles:
        h.remove()
    result = []
    for s, (_, blocks) in enumerate(layout):
        stage_slots = []
        for b, (path, blk) in enumerate(blocks):
            for pos in POSITIONS:
                _, c, h, w = seen[(path, pos)]
                stage_slots.append(Slot(s, b, path, pos, anchor_name(blk, fam, pos), c, h, w))
        result.append(tuple(stage_slots))
    return tuple(result)


def num_stages(backbone: str) -> int:
    return len(slots(backbone))


@functools.lru_cache(maxsize=64)
def num_features(backbone: str) -> int:
    """Channels that reach the classifier (timm's ``num_features``), e.g. for an exported head."""
    family(backbone)
    with torch.device("meta"):
        return int(timm.create_model(backbone, pretrained=False, num_classes=0).num_features)


def selected_blocks(n_blocks: int, pattern: str) -> list[int]:
    """Indices of the blocks of a stage that get attention under ``pattern``."""
    if pattern == "all":
        return list(range(n_blocks))
    if pattern == "alternate":  # every other block, ending on the last one (the block that feeds the next stage)
        return list(range(n_blocks - 1, -1, -2))[::-1]
    if pattern == "last":
        return [n_blocks - 1]
    raise ValueError(f"unknown blocks pattern {pattern!r}; choose one of {', '.join(BLOCK_PATTERNS)}")
