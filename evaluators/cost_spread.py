"""How far each cost objective can move over a search space, and a warning where it can hardly move at all.

An objective that spans 0.6 % over the whole space (resnet50's GFLOPs: SCSA in every block adds 0.58 %) cannot
trade against accuracy in any useful way: the front collapses onto the most accurate config, and the hypervolume
is the best accuracy times a constant. :func:`cost_spread` measures each cost at the three configs that bound
it: the plain backbone (``ArchConfig.baseline``), the paper's placement (``ArchConfig.paper_default``), and the
costliest config the space allows (:func:`costliest_config`), and says which objectives are flat.

    >>> from space import SearchSpace
    >>> paper_only = {"attn": ["none", "scsa"], "position": ["mid"], "groups": [4], "kernel_start": [3],
    ...               "kernel_step": [2], "window": [7], "heads": [1], "gate": ["sigmoid"], "pool": ["avg"]}
    >>> print("\\n".join(cost_spread(SearchSpace.from_spec("resnet50", paper_only)).lines()))  # doctest: +SKIP
    cost spread over the space (resnet50 at 224 px; costliest config: resnet50: s1=scsa@mid/all g4 k3-5-7-9 ...):
      gflops: plain 4.1115, paper default 4.1353 (+0.58 %), costliest 4.1353 (+0.58 %); span 0.58 %
      params: plain 25,557,032, paper default 25,617,448 (+0.24 %), costliest 25,617,448 (+0.24 %); span 0.24 %
    gflops spans only 0.58 % over this space (under 2 %): it can hardly rank configs; consider --objectives ...

In the default space the same backbone is far from flat: SCSA at the end slot of every block with 8 groups,
kernels up to 33, window 2, one head and the softmax gate costs +41.7 % at 224 px (the paper default: +0.58 %).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from space import ArchConfig, SearchSpace
from space.attention import create_attention
from space.backbones import selected_blocks, slots
from space.config import StageConfig

from .flops import count_module, measure

__all__ = ["FLAT_SPAN", "CostSpread", "Spread", "cost_spread", "costliest_config"]

#: Relative span (max / min - 1) below which a cost objective is called flat.
FLAT_SPAN = 0.02

Cost = Callable[[ArchConfig], float]


@dataclass(frozen=True)
class Spread:
    """One cost objective at the three bounding configs."""

    objective: str
    baseline: float
    paper_default: float
    costliest: float

    @property
    def low(self) -> float:
        return min(self.baseline, self.paper_default, self.costliest)

    @property
    def high(self) -> float:
        return max(self.baseline, self.paper_default, self.costliest)

    @property
    def span(self) -> float:
        """``high / low - 1``: how much dearer the dearest of the three is than the cheapest."""
        return self.high / self.low - 1 if self.low > 0 else float("inf")

    @property
    def flat(self) -> bool:
        return self.span < FLAT_SPAN


@dataclass(frozen=True)
class CostSpread:
    """The spread of every cost objective of a search over its space."""

    backbone: str
    resolution: int
    costliest: ArchConfig
    spreads: tuple[Spread, ...]

    def flat(self) -> list[str]:
        return [s.objective for s in self.spreads if s.flat]

    def lines(self) -> list[str]:
        """A header, one line per objective (its value at each bounding config), and for each flat objective one
        line saying so and what to do about it."""
        lines = [f"cost spread over the space ({self.backbone} at {self.resolution} px; costliest config: "
                 f"{self.costliest.describe()}):"]
        for s in self.spreads:
            lines.append(f"  {s.objective}: plain {_fmt(s.baseline)}, paper default {_fmt(s.paper_default)} "
                         f"({_pct(s.paper_default, s.baseline)}), costliest {_fmt(s.costliest)} "
                         f"({_pct(s.costliest, s.baseline)}); span {100 * s.span:.2f} %")
        for s in self.spreads:
            if s.flat:
                advice = ("consider --objectives accuracy,latency" if s.objective != "latency_ms" else
                          "attention placement barely changes the latency here either")
                lines.append(f"{s.objective} spans only {100 * s.span:.2f} % over this space (under "
                             f"{100 * FLAT_SPAN:.0f} %): it can hardly rank configs; {advice}")
        return lines

    def to_dict(self) -> dict:
        """Plain JSON: the spreads, the costliest config, and the lines as printed."""
        return {
            "backbone": self.backbone,
            "resolution": self.resolution,
            "costliest": self.costliest.to_dict(),
            "spreads": {s.objective: {"baseline": s.baseline, "paper_default": s.paper_default,
                                      "costliest": s.costliest, "span": s.span, "flat": s.flat}
                        for s in self.spreads},
            "lines": self.lines(),
        }


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4f}"


def _pct(value: float, base: float) -> str:
    return f"{100 * (value / base - 1):+.2f} %" if base > 0 else "n/a"


def cost_spread(
    space: SearchSpace,
    resolution: int = 224,
    objectives: Sequence[str] = ("gflops", "params"),
    costs: Mapping[str, Cost] | None = None,
) -> CostSpread:
    """Each cost objective at the plain backbone, the paper default and :func:`costliest_config` of ``space``.

    ``gflops`` and ``params`` come from :func:`evaluators.flops.measure` (cached); any other objective (e.g.
    ``latency_ms``) needs a function in ``costs``. Objectives that are not costs (accuracy, loss, ...) are skipped.
    The costliest config is the costliest in FLOPs; parameters and latency are taken at that same config.
    """
    given = dict(costs or {})
    known: dict[str, Cost] = {
        "gflops": lambda a: measure(a, resolution).gflops,
        "params": lambda a: float(measure(a, resolution).params),
        **given,
    }
    cost_names = [o for o in objectives if o in known or o in ("latency_ms",)]
    missing = [o for o in cost_names if o not in known]
    if missing:
        raise ValueError(f"cost_spread needs a function for {', '.join(missing)} (pass costs={{name: fn}})")
    configs = (ArchConfig.baseline(space.backbone), ArchConfig.paper_default(space.backbone),
               costliest_config(space, resolution))
    spreads = tuple(Spread(name, *(float(known[name](a)) for a in configs)) for name in cost_names)
    return CostSpread(space.backbone, resolution, configs[2], spreads)


# ----------------------------------------------------------------------------------------------------------
# The costliest config of a space.


class _Picks:
    """Stands in for an Optuna trial: answers ``SearchSpace.suggest``'s questions from a dict, so that the config
    goes through the space's own construction (conditional settings, divisibility repairs)."""

    def __init__(self, picks: Mapping[str, object]) -> None:
        self.picks = picks

    def suggest_categorical(self, name: str, choices: Sequence) -> object:
        return self.picks[name]


def costliest_config(space: SearchSpace, resolution: int = 224) -> ArchConfig:
    """The config of ``space`` with the most FLOPs at ``resolution``.

    FLOPs add up over the attention modules (the backbone's own count does not change), so each stage is
    maximised on its own: every attention type, position, block pattern and (for SCSA) window the stage allows is
    counted, module by module at the shape of its slot (cached per shape). The other SCSA settings only ever add
    FLOPs in one direction, so they are set, not searched: the most groups and the largest kernel start and step
    (larger kernels, and more of them), the fewest heads (the channel attention costs ``C² / heads`` per pooled
    cell), the softmax gate where allowed (3 flops per element against the sigmoid's 1); avg and max pooling cost
    the same. The window is searched because its cost is not monotone once it is clamped to small maps.
    """
    stage_slots = slots(space.backbone, resolution)
    picks: dict[str, object] = {}
    for i, ch in enumerate(space.stages, start=1):
        picks.update({f"s{i}_attn": ch.attn[0], f"s{i}_position": ch.position[0], f"s{i}_blocks": ch.blocks[0],
                      f"s{i}_groups": max(ch.groups), f"s{i}_kernel_start": max(ch.kernel_start),
                      f"s{i}_kernel_step": max(ch.kernel_step), f"s{i}_window": ch.window[0],
                      f"s{i}_heads": min(ch.heads), f"s{i}_gate": "softmax" if "softmax" in ch.gate else ch.gate[0],
                      f"s{i}_pool": ch.pool[0]})
    for i, (ch, sl) in enumerate(zip(space.stages, stage_slots), start=1):
        best, best_flops = None, -1
        for attn in ch.attn:
            for position in ch.position if attn != "none" else ch.position[:1]:
                for blocks in ch.blocks if attn != "none" else ch.blocks[:1]:
                    for window in ch.window if attn == "scsa" else ch.window[:1]:
                        trial = {**picks, f"s{i}_attn": attn, f"s{i}_position": position, f"s{i}_blocks": blocks,
                                 f"s{i}_window": window}
                        stage = space.suggest(_Picks(trial)).stages[i - 1]
                        flops = _stage_flops(stage, sl)
                        if flops > best_flops:
                            best, best_flops = trial, flops
        picks = best
    return space.suggest(_Picks(picks))


def _stage_flops(stage: StageConfig, stage_slots: Sequence) -> int:
    if stage.attn == "none":
        return 0
    n_blocks = len({s.block for s in stage_slots})
    chosen = set(selected_blocks(n_blocks, stage.blocks))
    settings = replace(stage, position=None, blocks=None)  # the module depends on neither: share the cache
    return sum(_slot_flops(settings, s.channels, s.height, s.width)
               for s in stage_slots if s.position == stage.position and s.block in chosen)


@functools.lru_cache(maxsize=4096)
def _slot_flops(stage: StageConfig, channels: int, height: int, width: int) -> int:
    """FLOPs of one attention module on a (1, channels, height, width) map, every op counted (as inside a model)."""
    module = create_attention(stage.attn, channels, **stage.attention_kwargs()).eval()
    return count_module(module, torch.zeros(1, channels, height, width)).flops
