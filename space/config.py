"""ArchConfig: the one value that travels end to end — a backbone and, per stage, which attention sits where.

Plain, frozen, JSON-serialisable, equal by value. A stage without attention carries no other settings, and a
stage with a timm baseline attention (se, eca, cbam) carries no SCSA settings, so that two configs describing the
same network always compare (and hash) equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from .attention import ATTENTION_TYPES
from .backbones import BLOCK_PATTERNS, POSITIONS, num_stages, selected_blocks, slots
from .scsa import GATES, PAPER_SETTING, POOLS, check_scsa_args

SCSA_FIELDS = tuple(PAPER_SETTING)
PAPER_SCSA = dict(PAPER_SETTING)


@dataclass(frozen=True)
class StageConfig:
    """Attention of one stage. ``position``: ``mid`` (the authors' slot) or ``end`` (timm's attn_layer slot);
    ``blocks``: ``all``, ``alternate`` (every other, ending on the last) or ``last``."""

    attn: str = "none"
    position: str | None = None
    blocks: str | None = None
    groups: int | None = None
    kernels: tuple[int, ...] | None = None
    window: int | None = None
    heads: int | None = None
    gate: str | None = None
    pool: str | None = None

    def __post_init__(self) -> None:
        # Canonical form: settings that do not apply are None, kernels a tuple of ints.
        if self.attn == "none":
            for name in ("position", "blocks", *SCSA_FIELDS):
                object.__setattr__(self, name, None)
        elif self.attn != "scsa":
            for name in SCSA_FIELDS:
                object.__setattr__(self, name, None)
        if self.kernels is not None and not isinstance(self.kernels, str):
            object.__setattr__(self, "kernels", tuple(int(k) for k in self.kernels))

    @classmethod
    def scsa(cls, position: str = "mid", blocks: str = "all", **settings) -> StageConfig:
        """A SCSA stage; settings default to the paper's (4 groups, kernels 3/5/7/9, window 7, 1 head, sigmoid, avg)."""
        return cls(attn="scsa", position=position, blocks=blocks, **{**PAPER_SCSA, **settings})

    def attention_kwargs(self) -> dict:
        """Keyword arguments for ``create_attention``."""
        return {name: getattr(self, name) for name in SCSA_FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["kernels"] is not None:
            d["kernels"] = list(d["kernels"])
        return d

    def describe(self) -> str:
        if self.attn == "none":
            return "none"
        text = f"{self.attn}@{self.position}/{self.blocks}"
        if self.attn == "scsa":
            k = "-".join(map(str, self.kernels))
            text += f" g{self.groups} k{k} w{self.window} h{self.heads} {self.gate} {self.pool}"
        return text


@dataclass(frozen=True)
class ArchConfig:
    """A timm backbone and one ``StageConfig`` per stage.

    Example::

        >>> arch = ArchConfig.paper_default("resnet50")
        >>> ArchConfig.from_dict(arch.to_dict()) == arch
        True
    """

    backbone: str
    stages: tuple[StageConfig, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))

    @classmethod
    def baseline(cls, backbone: str) -> ArchConfig:
        """The plain backbone: no attention anywhere."""
        return cls(backbone, tuple(StageConfig() for _ in range(num_stages(backbone))))

    @classmethod
    def paper_default(cls, backbone: str) -> ArchConfig:
        """The authors' placement: SCSA with the paper's settings in every block of every stage, at the mid slot."""
        return cls(backbone, tuple(StageConfig.scsa() for _ in range(num_stages(backbone))))

    @classmethod
    def single_stages(cls, backbone: str) -> tuple[ArchConfig, ...]:
        """The paper's SCSA (mid slot, every block) in one stage at a time, one config per stage: the simplest
        answers to "in which stage does the attention pay"."""
        plain = cls.baseline(backbone).stages
        return tuple(cls(backbone, tuple(StageConfig.scsa() if j == i else s for j, s in enumerate(plain)))
                     for i in range(len(plain)))

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "stages": [s.to_dict() for s in self.stages]}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: Mapping) -> ArchConfig:
        """Inverse of ``to_dict``; raises ``ValueError`` on unknown or missing keys (not on invalid values:
        call ``validate()`` for those)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"ArchConfig must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"backbone", "stages"})
        if unknown:
            raise ValueError(f"unknown ArchConfig keys {unknown}; expected 'backbone' and 'stages'")
        if "backbone" not in d or "stages" not in d:
            raise ValueError("ArchConfig needs both 'backbone' and 'stages'")
        if not isinstance(d["stages"], list | tuple):
            raise ValueError("ArchConfig 'stages' must be a list of stage mappings")
        allowed = {f.name for f in fields(StageConfig)}
        stages = []
        for i, s in enumerate(d["stages"], start=1):
            if not isinstance(s, Mapping):
                raise ValueError(f"stage {i} must be a mapping, got {type(s).__name__}")
            bad = sorted(set(s) - allowed)
            if bad:
                raise ValueError(f"stage {i}: unknown keys {bad}; allowed: {sorted(allowed)}")
            stages.append(StageConfig(**s))
        return cls(str(d["backbone"]), tuple(stages))

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))

    def validate(self) -> ArchConfig:
        """Raise ``ValueError`` naming the stage and setting that cannot be built; return ``self`` if valid."""
        all_slots = slots(self.backbone)  # raises UnsupportedBackboneError (a ValueError) for unknown backbones
        if len(self.stages) != len(all_slots):
            raise ValueError(f"{self.backbone} has {len(all_slots)} stages, the config gives {len(self.stages)}")
        for i, (stage, stage_slots) in enumerate(zip(self.stages, all_slots), start=1):
            where = f"stage {i}"
            if stage.attn not in ATTENTION_TYPES:
                raise ValueError(f"{where}: attn={stage.attn!r} is unknown; choose one of {', '.join(ATTENTION_TYPES)}")
            if stage.attn == "none":
                continue
            if stage.position not in POSITIONS:
                raise ValueError(f"{where}: position={stage.position!r}; choose one of {', '.join(POSITIONS)}")
            if stage.blocks not in BLOCK_PATTERNS:
                raise ValueError(f"{where}: blocks={stage.blocks!r}; choose one of {', '.join(BLOCK_PATTERNS)}")
            if stage.attn != "scsa":
                continue
            missing = [n for n in SCSA_FIELDS if getattr(stage, n) is None]
            if missing:
                raise ValueError(f"{where}: SCSA needs {', '.join(missing)}")
            if stage.gate not in GATES or stage.pool not in POOLS:
                check_scsa_args(64, groups=1, kernels=(1,), window=1, heads=1, gate=stage.gate, pool=stage.pool)
            n_blocks = len(stage_slots) // len(POSITIONS)
            for b in selected_blocks(n_blocks, stage.blocks):
                slot = next(s for s in stage_slots if s.block == b and s.position == stage.position)
                try:
                    check_scsa_args(slot.channels, **stage.attention_kwargs())
                except ValueError as e:
                    raise ValueError(f"{where} ({slot.block_path}, {stage.position} slot): {e}") from None
        return self

    def describe(self) -> str:
        return f"{self.backbone}: " + " | ".join(f"s{i}={s.describe()}" for i, s in enumerate(self.stages, start=1))
