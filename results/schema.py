"""The one owner of the results' columns: their names, the statuses, and the per-stage view of a config.

A trial record keeps its config verbatim (``config_json``, the source of truth) and flattened into readable
per-stage columns ``s<i>_<field>`` (1-based stages, as in papers) for spreadsheets and plots. This module flattens
a config into those columns (:func:`flatten_stages`) and reads the column names back (:func:`stage_field`,
:func:`stage_numbers`); nothing else parses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PHASE",
    "PHASES",
    "REPLICATE",
    "REPLICATE_OF",
    "SEARCH",
    "VERIFY",
    "SEEDS",
    "TrialRecord",
    "curve_key",
    "interval_column",
    "BEST_JSON",
    "BEST_MD",
    "COST_SPREAD_JSON",
    "EFFECTS_PNG",
    "HYPERVOLUME_PNG",
    "JOURNAL",
    "MANIFEST",
    "MMPRETRAIN_PY",
    "OUT_LOCK",
    "PARETO_PNG",
    "SEARCH_FILES",
    "COMPLETED",
    "CONFIG_JSON",
    "CORE_COLUMNS",
    "FAILED",
    "FLOAT_COLUMNS",
    "LATENCY_CACHE",
    "NUMERIC_STAGE_FIELDS",
    "PARETO_CSV",
    "STAGE_FIELDS",
    "STATUSES",
    "STOPPED",
    "STUDY_DB",
    "TRIALS_CSV",
    "TEXT_COLUMNS",
    "TRIALS_PARQUET",
    "flatten_stages",
    "is_stage_column",
    "stage_columns",
    "stage_field",
    "stage_numbers",
]

# Every file an output directory (--out) holds, by the name code refers to it with.
MANIFEST = "search.json"  # the search's settings (--resume reads them back) and its measured seed noise
JOURNAL = "launched.jsonl"  # one line per trial handed to Ray: what the budget counts
TRIALS_CSV = "trials.csv"
TRIALS_PARQUET = "trials.parquet"
PARETO_CSV = "pareto.csv"
STUDY_DB = "study.db"  # the Optuna study the search writes and the results read
PARETO_PNG = "pareto.png"
HYPERVOLUME_PNG = "hypervolume.png"
EFFECTS_PNG = "effects.png"
COST_SPREAD_JSON = "cost_spread.json"
BEST_JSON = "best_config.json"
BEST_MD = "best_config.md"
MMPRETRAIN_PY = "best_config_mmpretrain.py"
#: The files whose presence means a search was started in a directory.
SEARCH_FILES: tuple[str, ...] = (MANIFEST, STUDY_DB, JOURNAL, TRIALS_CSV, TRIALS_PARQUET)
LATENCY_CACHE = "latency_cache"  # measured latencies, shared by a search's driver and trials (latency objective)
OUT_LOCK = "search.lock"  # held (flock) by the search that writes --out; names it (pid, host, since)
COMPLETED, STOPPED, FAILED = "completed", "stopped", "failed"
STATUSES: tuple[str, ...] = (COMPLETED, STOPPED, FAILED)

# Leading columns, in the order a reader scans them: who, how it ended, the objectives, how far it got, why it failed.
TEXT_COLUMNS = ("trial_id", "status", "reference", "error")
FLOAT_COLUMNS = ("accuracy", "gflops", "latency_ms", "trained_share", "epochs_done", "time_s")
CORE_COLUMNS: tuple[str, ...] = (
    "trial_id",
    "number",
    "status",
    "reference",
    "accuracy",
    "gflops",
    "params",
    "latency_ms",
    "trained_share",
    "epochs_done",
    "time_s",
    "error",
    "backbone",
)
CONFIG_JSON = "config_json"
#: Column of a replicate row: the trial id of the config's first trial ("" on the first trial itself).
REPLICATE_OF = "replicate_of"
#: Column of a row: which phase of the search trained it. SEARCH: the budget's trials (at the proxy's fidelity);
#: REPLICATE: a finalist again at the proxy's fidelity with a further seed; VERIFY: a finalist at the verification
#: fidelity (``--verify``), one of the paired seeds every finalist gets. Rows without the column are SEARCH or,
#: naming a trial in REPLICATE_OF, REPLICATE.
PHASE = "phase"
SEARCH, REPLICATE, VERIFY = "search", "replicate", "verify"
PHASES: tuple[str, ...] = (SEARCH, REPLICATE, VERIFY)
#: Column of the per-config frame: completed seeds behind the means.
SEEDS = "seeds"


def interval_column(objective: str) -> str:
    """The per-config frame's column holding the 95 % half-width of ``objective``'s mean."""
    return f"{objective}_ci95"


def curve_key(objective: str) -> str:
    """The column (record key) of a trial's per-epoch values of ``objective`` (what the scheduler's rungs saw)."""
    return f"{objective}_curve"


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial (or replicate of one): a row of ``trials.csv``, typed. Its keys are named here only.

    ``scores`` holds every proxy score the trial's last result carried (``evaluators.scores.SCORES``: accuracy,
    val_loss, loss, tse, tse_ema), ``curve`` the first objective per epoch (column :func:`curve_key`)."""

    trial_id: str
    number: int
    status: str  # COMPLETED, STOPPED or FAILED
    config: Mapping[str, Any]
    reference: str = ""
    scores: Mapping[str, float | None] = field(default_factory=dict)
    gflops: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    trained_share: float | None = None  # the share of its schedule the trial trained (epoch / epochs)
    epochs_done: int = 0
    time_s: float | None = None
    error: str = ""
    optuna_number: int | None = None
    seed: int | None = None
    replicate_of: str = ""
    phase: str = SEARCH
    curve_objective: str = ""
    curve: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r} is not one of {', '.join(PHASES)}")

    def as_row(self) -> dict[str, Any]:
        """The record as the ledger keeps it and ``trials_frame`` reads it (columns absent where they do not
        apply: ``replicate_of`` on a first trial, the curve on a trial that reported no epoch)."""
        row: dict[str, Any] = {
            "trial_id": self.trial_id,
            "number": self.number,
            "status": self.status,
            "reference": self.reference,
            **dict(self.scores),
            "gflops": self.gflops,
            "params": self.params,
            "latency_ms": self.latency_ms,
            "trained_share": self.trained_share,
            "epochs_done": self.epochs_done,
            "time_s": self.time_s,
            "error": self.error,
            "config": dict(self.config),
            "optuna_number": self.optuna_number,
            "seed": self.seed,
            PHASE: self.phase,
        }
        if self.replicate_of:
            row[REPLICATE_OF] = self.replicate_of
        if self.curve:
            row[curve_key(self.curve_objective)] = [round(float(a), 6) for a in self.curve]
        return row

STAGE_FIELDS: tuple[str, ...] = ("attn", "position", "blocks", "groups", "kernels", "window", "heads", "gate", "pool")
# Fields that mean something for any attention (where it sits), and those only SCSA has.
_PLACEMENT_FIELDS = ("position", "blocks")
_SCSA_FIELDS = ("groups", "kernels", "window", "heads", "gate", "pool")
NUMERIC_STAGE_FIELDS = ("groups", "window", "heads")
_NO_ATTENTION = ("", "none")


def stage_columns(n_stages: int) -> list[str]:
    """Flattened stage column names ``s1_attn, s1_position, ..., sN_pool`` (stages are 1-based, as in papers)."""
    return [f"s{i}_{field}" for i in range(1, n_stages + 1) for field in STAGE_FIELDS]


def _join(value: Any) -> str:
    # Lists such as kernels [3, 5, 7, 9] become "3-5-7-9": readable, one CSV cell, and a valid categorical value.
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "-".join(_join(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flatten_stages(config: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    stages = config.get("stages") or []
    for i, stage in enumerate(stages, start=1):
        stage = stage or {}
        attn = _join(stage.get("attn")) or "none"
        flat[f"s{i}_attn"] = attn
        has_attention = attn.lower() not in _NO_ATTENTION
        is_scsa = attn.lower() == "scsa"
        for name in STAGE_FIELDS[1:]:
            relevant = (name in _PLACEMENT_FIELDS and has_attention) or (name in _SCSA_FIELDS and is_scsa)
            value = stage.get(name) if relevant else None
            if name in NUMERIC_STAGE_FIELDS:
                flat[f"s{i}_{name}"] = (
                    value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
                )
            else:
                flat[f"s{i}_{name}"] = _join(value)
    return flat


def stage_field(column: str) -> str | None:
    """The stage field a ``s<i>_<field>`` column holds (``"attn"``, ``"kernels"``, ...), or None for other columns."""
    head, sep, field = column.partition("_")
    if sep and head[:1] == "s" and head[1:].isdigit() and field in STAGE_FIELDS:
        return field
    return None


def is_stage_column(column: str) -> bool:
    """Whether ``column`` is a flattened view of the config (``s<i>_<anything>``), rebuilt from it on every write."""
    head, sep, _ = column.partition("_")
    return bool(sep) and head[:1] == "s" and head[1:].isdigit()


def stage_numbers(columns: Iterable[str]) -> list[int]:
    """The 1-based stages that have an ``s<i>_attn`` column, in order."""
    return sorted(int(c.partition("_")[0][1:]) for c in columns if stage_field(c) == "attn")
