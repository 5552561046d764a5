"""Where attention can go in each supported timm family, and what it sees there.

A *slot* is a place inside a block, named after the paper:

* ``mid``: the authors' slot, right after the spatial (3x3 or depthwise) convolution and its activation, at the
  block's inner width (ResNet Bottleneck after ``act2``, BasicBlock after ``act1``, inverted residual after the
  depthwise convolution, RegNet after the grouped 3x3 convolution, before any SE the backbone already has).
* ``end``: timm's ``attn_layer`` slot, after the block's last normalisation and before the residual add.

Attention is attached with a forward hook on the module that precedes the slot (its *anchor*) and registered on
the block as ``attn_mid`` / ``attn_end``. Hooks rather than replacing modules, because every timm key of the
backbone then stays exactly as timm names it (timm checkpoints load strictly, apart from the added modules), and
one mechanism serves every family.
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
}
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
}
EXAMPLES = "resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, mobilenetv2_100, efficientnet_b0, regnetx_002"


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
    if module not in FAMILIES:
        raise UnsupportedBackboneError(
            f"backbone {backbone!r} is a timm model of family {module.rsplit('.', 1)[-1]!r}, which has no attention "
            f"slots here; supported families: {', '.join(sorted(set(FAMILIES.values())))} (e.g. {EXAMPLES})"
        )
    return FAMILIES[module]


def stages(model: nn.Module, fam: str) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """``[(stage_path, [(block_path, block), ...]), ...]`` in forward order."""
    if fam == "resnet":
        groups = [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5) if hasattr(model, f"layer{i}")]
    elif fam == "efficientnet":
        groups = [(f"blocks.{i}", stage) for i, stage in enumerate(model.blocks)]
    elif fam == "regnet":
        groups = [(f"s{i}", getattr(model, f"s{i}")) for i in range(1, 5)]
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


@functools.lru_cache(maxsize=64)
def slots(backbone: str, resolution: int = 224) -> tuple[tuple[Slot, ...], ...]:
    """All slots of ``backbone`` per stage, with channels and map size at ``resolution`` px.

    Found by one forward pass on the ``meta`` device (shapes only, no memory, no arithmetic), so every family and
    every timm variant is described by what it actually computes rather than by a table.
    """
    fam = family(backbone)
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=0).eval()  # eval: 1x1 maps at batch 1
    seen: dict[tuple[str, str], tuple[int, ...]] = {}
    handles = []
    layout = stages(model, fam)
    for _, blocks in layout:
        for path, blk in blocks:
            for pos in POSITIONS:
                anchor = getattr(blk, anchor_name(blk, fam, pos))

                def record(_m, _a, out, key=(path, pos)):
                    seen[key] = tuple(out.shape)

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


def selected_blocks(n_blocks: int, pattern: str) -> list[int]:
    """Indices of the blocks of a stage that get attention under ``pattern``."""
    if pattern == "all":
        return list(range(n_blocks))
    if pattern == "alternate":  # every other block, ending on the last one (the block that feeds the next stage)
        return list(range(n_blocks - 1, -1, -2))[::-1]
    if pattern == "last":
        return [n_blocks - 1]
    raise ValueError(f"unknown blocks pattern {pattern!r}; choose one of {', '.join(BLOCK_PATTERNS)}")
