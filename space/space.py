"""SearchSpace: which ArchConfigs a search may visit, as Optuna-style categorical choices per stage.

Per stage: ``attn`` (none, scsa, se, eca, cbam); when attention is on, ``position`` (mid | end) and ``blocks``
(all | alternate | last); when it is SCSA, also ``groups``, the kernels as an odd arithmetic progression
(``kernel_start`` + ``kernel_step`` · i, i over the groups: the paper's 3/5/7/9 is start 3, step 2), ``window``,
``heads``, ``gate`` and ``pool``. Conditional settings are only asked for when they apply.

Channel divisibility is a constraint, not a choice: when a stage's channels cannot be split into the chosen
groups or heads, the largest allowed value that divides them is taken instead (deterministically), so every
config that ``sample`` or ``suggest`` returns builds. Choices stay static per parameter name, as Optuna's
samplers require.

The space can be narrowed or widened with a small YAML or JSON file::

    attn: [none, scsa]          # top-level keys apply to every stage
    window: [4, 7]
    stages:
      4: {attn: [none]}         # 1-based stage index -> overrides for that stage
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .attention import ATTENTION_TYPES
from .backbones import BLOCK_PATTERNS, POSITIONS, selected_blocks, slots
from .config import ArchConfig, StageConfig
from .scsa import GATES, POOLS


@dataclass(frozen=True)
class StageChoices:
    """The allowed values of every setting of one stage."""

    attn: tuple[str, ...] = ATTENTION_TYPES
    position: tuple[str, ...] = POSITIONS
    blocks: tuple[str, ...] = BLOCK_PATTERNS
    groups: tuple[int, ...] = (2, 4, 8)
    kernel_start: tuple[int, ...] = (1, 3, 5)
    kernel_step: tuple[int, ...] = (0, 2, 4)
    window: tuple[int, ...] = (-1, 2, 4, 7)
    heads: tuple[int, ...] = (1, 2, 4)
    gate: tuple[str, ...] = GATES
    pool: tuple[str, ...] = POOLS

    def check(self, where: str = "space") -> None:
        """Raise ``ValueError`` naming the first impossible value."""
        allowed_words = {"attn": ATTENTION_TYPES, "position": POSITIONS, "blocks": BLOCK_PATTERNS,
                         "gate": GATES, "pool": POOLS}
        for f in fields(self):
            values = getattr(self, f.name)
            if not values:
                raise ValueError(f"{where}: '{f.name}' needs at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{where}: '{f.name}' lists a value twice: {list(values)}")
            if f.name in allowed_words:
                bad = [v for v in values if v not in allowed_words[f.name]]
                if bad:
                    raise ValueError(f"{where}: '{f.name}' has unknown values {bad}; allowed: "
                                     f"{list(allowed_words[f.name])}")
                continue
            if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ValueError(f"{where}: '{f.name}' must list integers, got {list(values)}")
        checks = {
            "groups": (lambda v: v >= 1, "positive"),
            "kernel_start": (lambda v: v >= 1 and v % 2 == 1, "positive and odd"),
            "kernel_step": (lambda v: v >= 0 and v % 2 == 0, "even and >= 0 (kernels must stay odd)"),
            "window": (lambda v: v == -1 or v >= 1, "positive or -1 (global pooling)"),
            "heads": (lambda v: v >= 1, "positive"),
        }
        for name, (ok, rule) in checks.items():
            bad = [v for v in getattr(self, name) if not ok(v)]
            if bad:
                raise ValueError(f"{where}: '{name}' values {bad} are invalid: each must be {rule}")


CHOICE_KEYS = tuple(f.name for f in fields(StageChoices))


@dataclass(frozen=True)
class SearchSpace:
    """The space of ArchConfigs for one timm backbone.

    Example::

        >>> space = SearchSpace("resnet50")
        >>> arch = space.sample(seed=0)        # a valid ArchConfig
        >>> # with Optuna: arch = space.suggest(trial)
    """

    backbone: str
    stages: tuple[StageChoices, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(slots(self.backbone))  # raises UnsupportedBackboneError for unknown / unsupported backbones
        if not self.stages:
            object.__setattr__(self, "stages", tuple(StageChoices() for _ in range(n)))
        if len(self.stages) != n:
            raise ValueError(f"{self.backbone} has {n} stages, the space gives {len(self.stages)}")
        for i, st in enumerate(self.stages, start=1):
            st.check(f"space stage {i}")

    # -- construction from a file ------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, backbone: str, spec: Mapping | None) -> SearchSpace:
        """Narrow or widen the default space with a mapping (see the module docstring)."""
        if spec is None:
            return cls(backbone)
        if not isinstance(spec, Mapping):
            raise ValueError(f"space file must hold a mapping of settings, got {type(spec).__name__}")
        allowed = set(CHOICE_KEYS) | {"stages"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"space file: unknown keys {unknown}; allowed: {sorted(allowed)}")
        top = _choices_from(spec, StageChoices(), "space file")
        n = len(slots(backbone))
        per_stage = [top] * n
        overrides = spec.get("stages") or {}
        if not isinstance(overrides, Mapping):
            raise ValueError("space file: 'stages' must map a 1-based stage index to settings")
        for key, sub in overrides.items():
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"space file: stage key {key!r} is not an integer") from None
            if not 1 <= idx <= n:
                raise ValueError(f"space file: stage {idx} does not exist; {backbone} has stages 1..{n}")
            if not isinstance(sub, Mapping):
                raise ValueError(f"space file: stage {idx} must map settings to lists of values")
            bad = sorted(set(sub) - set(CHOICE_KEYS))
            if bad:
                raise ValueError(f"space file: stage {idx}: unknown keys {bad}; allowed: {list(CHOICE_KEYS)}")
            per_stage[idx - 1] = _choices_from(sub, top, f"space file stage {idx}")
        return cls(backbone, tuple(per_stage))

    @classmethod
    def from_file(cls, backbone: str, path: str | Path) -> SearchSpace:
        """Read a YAML or JSON space file (``yaml.safe_load`` reads both)."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read space file {path}: {e.strerror or e}") from None
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"space file {path} is not valid YAML/JSON{where}") from None
        return cls.from_spec(backbone, spec)

    # -- drawing configs ----------------------------------------------------------------------------------------
    def _build(self, decide: Callable[[str, Sequence], object]) -> ArchConfig:
        stage_slots = slots(self.backbone)
        out = []
        for i, (ch, sl) in enumerate(zip(self.stages, stage_slots), start=1):
            attn = decide(f"s{i}_attn", ch.attn)
            if attn == "none":
                out.append(StageConfig())
                continue
            position = decide(f"s{i}_position", ch.position)
            blocks = decide(f"s{i}_blocks", ch.blocks)
            if attn != "scsa":
                out.append(StageConfig(attn, position, blocks))
                continue
            channels = _stage_channels(sl, position, blocks)
            groups = _divisor(decide(f"s{i}_groups", ch.groups), ch.groups, channels)
            start = decide(f"s{i}_kernel_start", ch.kernel_start)
            step = decide(f"s{i}_kernel_step", ch.kernel_step)
            window = decide(f"s{i}_window", ch.window)
            heads = _divisor(decide(f"s{i}_heads", ch.heads), ch.heads, channels)
            gate = decide(f"s{i}_gate", ch.gate)
            pool = decide(f"s{i}_pool", ch.pool)
            kernels = tuple(start + step * g for g in range(groups))
            out.append(StageConfig("scsa", position, blocks, groups, kernels, window, heads, gate, pool))
        return ArchConfig(self.backbone, tuple(out)).validate()

    def sample(self, seed: int) -> ArchConfig:
        """A config drawn uniformly per decision, reproducibly from ``seed``."""
        rng = random.Random(seed)
        return self._build(lambda _name, choices: rng.choice(list(choices)))

    def suggest(self, trial) -> ArchConfig:
        """A config proposed by an ``optuna.trial.Trial`` (or anything with ``suggest_categorical``)."""
        return self._build(lambda name, choices: trial.suggest_categorical(name, list(choices)))

    def params_of(self, arch: ArchConfig) -> dict[str, object]:
        """The parameter dict under which ``suggest`` returns ``arch`` (e.g. for ``study.enqueue_trial``).

        Raises ``ValueError`` if ``arch`` lies outside this space.
        """
        if arch.backbone != self.backbone or len(arch.stages) != len(self.stages):
            raise ValueError(f"config for {arch.backbone} with {len(arch.stages)} stages is not in this space")
        params: dict[str, object] = {}
        for i, st in enumerate(arch.stages, start=1):
            params[f"s{i}_attn"] = st.attn
            if st.attn == "none":
                continue
            params[f"s{i}_position"], params[f"s{i}_blocks"] = st.position, st.blocks
            if st.attn == "scsa":
                k = st.kernels
                step = k[1] - k[0] if len(k) > 1 else 0
                if any(k[g] != k[0] + step * g for g in range(len(k))):
                    raise ValueError(f"stage {i}: kernels {list(k)} are not an arithmetic progression")
                params.update({f"s{i}_groups": st.groups, f"s{i}_kernel_start": k[0], f"s{i}_kernel_step": step,
                               f"s{i}_window": st.window, f"s{i}_heads": st.heads, f"s{i}_gate": st.gate,
                               f"s{i}_pool": st.pool})
        rebuilt = self._build(lambda name, choices: _pick(params, name, choices))
        if rebuilt != arch:
            raise ValueError(f"config is not reachable in this space: {arch.describe()}")
        return params

    # -- description --------------------------------------------------------------------------------------------
    def stage_size(self, i: int) -> int:
        """Number of distinct choices for stage ``i`` (0-based), before divisibility repairs."""
        ch = self.stages[i]
        placed = len(ch.position) * len(ch.blocks)
        scsa = math.prod(len(getattr(ch, k)) for k in
                         ("groups", "kernel_start", "kernel_step", "window", "heads", "gate", "pool"))
        return sum(1 if a == "none" else placed * (scsa if a == "scsa" else 1) for a in ch.attn)

    def size(self) -> int:
        """Number of configs in the space (product over stages)."""
        return math.prod(self.stage_size(i) for i in range(len(self.stages)))

    def summary(self) -> str:
        """A readable table of the space: per stage, what it sees and what may be chosen."""
        stage_slots = slots(self.backbone)
        lines = [f"search space for {self.backbone}: {self.size():.3e} configs ({len(self.stages)} stages)"]
        for i, (ch, sl) in enumerate(zip(self.stages, stage_slots)):
            n_blocks = len(sl) // len(POSITIONS)
            mid = next(s for s in sl if s.position == "mid")
            end = next(s for s in sl if s.position == "end")
            lines.append(
                f"  stage {i + 1}: {n_blocks} blocks, mid {mid.channels}ch, end {end.channels}ch, "
                f"{mid.height}x{mid.width} px at 224 | {self.stage_size(i)} choices"
            )
            for k in CHOICE_KEYS:
                lines.append(f"      {k:<13} {', '.join(map(str, getattr(ch, k)))}")
        return "\n".join(lines)


def _choices_from(spec: Mapping, base: StageChoices, where: str) -> StageChoices:
    updates = {}
    for key in CHOICE_KEYS:
        if key not in spec:
            continue
        value = spec[key]
        values = tuple(value) if isinstance(value, list | tuple) else (value,)
        updates[key] = values
    choices = replace(base, **updates)
    choices.check(where)
    return choices


def _stage_channels(stage_slots: Sequence, position: str, blocks: str) -> list[int]:
    n_blocks = len(stage_slots) // len(POSITIONS)
    chosen = set(selected_blocks(n_blocks, blocks))
    return [s.channels for s in stage_slots if s.position == position and s.block in chosen]


def _divisor(wanted: int, allowed: Sequence[int], channels: Sequence[int]) -> int:
    """``wanted`` if it divides every channel count, else the largest allowed value <= wanted that does, else 1."""
    fits = [v for v in allowed if v <= wanted and all(c % v == 0 for c in channels)]
    return max(fits) if fits else 1


def _pick(params: Mapping, name: str, choices: Sequence):
    if name not in params:
        raise ValueError(f"parameter {name} missing")
    if params[name] not in choices:
        raise ValueError(f"{name}={params[name]!r} is outside this space's choices {list(choices)}")
    return params[name]
