"""Trial records -> one tidy DataFrame -> ``trials.csv`` / ``trials.parquet`` (rewritten after every trial).

A trial record is a plain dict (see :func:`trials_frame`). The frame keeps the config twice: flattened into readable
per-stage columns (``s1_attn``, ``s1_position``, ..., for filtering and plotting in a spreadsheet) and verbatim as
``config_json`` (the source of truth; ``ArchConfig.from_dict(json.loads(row.config_json))`` rebuilds it).

Column dtypes are fixed by one schema function applied both when building the frame and when reading it back, so
``read_trials(write_trials(df))`` gives the same dtypes whether it reads the Parquet or the CSV file.

Example::

    >>> rec = {"trial_id": "t0", "number": 0, "status": "completed", "accuracy": 0.91, "gflops": 4.1,
    ...        "params": 25_557_032, "config": {"backbone": "resnet50", "stages": [
    ...            {"attn": "scsa", "position": "mid", "blocks": "all", "groups": 4, "kernels": [3, 5, 7, 9]}]}}
    >>> df = trials_frame([rec])
    >>> df.loc[0, ["s1_attn", "s1_kernels", "s1_groups"]].astype(str).tolist()
    ['scsa', '3-5-7-9', '4']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from results.io import atomic_path, atomic_write_text
from results.pareto import DEFAULT_OBJECTIVES, pareto_front
from results.schema import (
    CONFIG_JSON,
    CORE_COLUMNS,
    FLOAT_COLUMNS,
    NUMERIC_STAGE_FIELDS,
    PARETO_CSV,
    STAGE_FIELDS,
    STATUSES,
    TEXT_COLUMNS,
    TRIALS_CSV,
    TRIALS_PARQUET,
    flatten_stages,
    stage_columns,
    stage_field,
)

__all__ = [
    "CORE_COLUMNS",
    "PARETO_CSV",
    "STAGE_FIELDS",
    "STATUSES",
    "TRIALS_CSV",
    "TRIALS_PARQUET",
    "read_trials",
    "stage_columns",
    "trials_frame",
    "write_pareto",
    "write_trials",
]


def _config_dict(config: Any) -> dict[str, Any]:
    # Accept an ArchConfig (anything with to_dict) as well as its dict, so callers need not convert first.
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or have to_dict(), got {type(config).__name__}")
    return dict(config)


def _scalar_or_json(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return value


def trials_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per trial record, sorted by ``number``, with a stable, readable column order.

    Each record needs ``trial_id``, ``number`` and ``status`` (one of :data:`STATUSES`); the objectives
    (``accuracy``, ``gflops``, ``params``, ``latency_ms``), ``fidelity``, ``epochs_done``, ``time_s``, ``error``,
    ``reference`` and ``config`` are optional (missing numbers are NaN/<NA>, missing text is ""). Columns:

    - :data:`CORE_COLUMNS` first (``backbone`` comes from the config);
    - ``s{i}_{field}`` for every stage i = 1..N and field in :data:`STAGE_FIELDS`: ``position``/``blocks`` only
      when the stage has attention, the SCSA hyperparameters only when ``attn == "scsa"``, "" or <NA> otherwise;
      list values are joined with "-" (kernels ``[3, 5, 7, 9]`` -> ``"3-5-7-9"``);
    - any other record keys (dicts and lists JSON-encoded), in first-seen order;
    - ``config_json`` last: the config as compact JSON.
    """
    rows: list[dict[str, Any]] = []
    extras: dict[str, None] = {}  # an ordered set
    n_stages = 0
    for position, record in enumerate(records):
        missing = [k for k in ("trial_id", "number", "status") if record.get(k) is None]
        if missing:
            raise ValueError(f"trial record #{position} lacks {missing}: {dict(record)!r}")
        if record["status"] not in STATUSES:
            raise ValueError(
                f"trial {record['trial_id']!r} has status {record['status']!r}; expected one of {STATUSES}"
            )
        config = _config_dict(record.get("config"))
        row: dict[str, Any] = {k: record.get(k) for k in CORE_COLUMNS if k != "backbone"}
        row["backbone"] = config.get("backbone", "")
        stages = flatten_stages(config)
        n_stages = max(n_stages, len(config.get("stages") or []))
        row.update(stages)
        for key, value in record.items():
            if key in CORE_COLUMNS or key == "config" or key == CONFIG_JSON:
                continue
            extras.setdefault(key)
            row[key] = _scalar_or_json(value)
        row[CONFIG_JSON] = json.dumps(config, separators=(",", ":")) if config else ""
        rows.append(row)
    columns = [*CORE_COLUMNS, *stage_columns(n_stages), *[k for k in extras if k not in CORE_COLUMNS], CONFIG_JSON]
    # Extras that collide with a generated stage column name would be ambiguous; the config wins.
    columns = list(dict.fromkeys(columns))
    df = pd.DataFrame(rows, columns=columns)
    df = _apply_schema(df)
    return df.sort_values("number", kind="mergesort").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------- dtypes


def _as_text(series: pd.Series) -> pd.Series:
    def one(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        return str(v)

    return pd.Series([one(v) for v in series], index=series.index, dtype="str", name=series.name)


def _as_number(series: pd.Series, *, integer: bool | None) -> pd.Series:
    """Numbers from numbers or text ("" -> missing). ``integer=None``: Int64 if every value is integral."""
    values = pd.to_numeric(series.replace("", np.nan) if series.dtype != float else series, errors="coerce")
    values = values.astype("float64")
    finite = values.dropna()
    if integer is None:
        # An all-missing column is Int64 too: the same answer whatever the file format kept of it.
        integer = bool(np.all(np.mod(finite.to_numpy(), 1.0) == 0.0))
    return values.round().astype("Int64") if integer else values


def _as_boolean(text: pd.Series) -> pd.Series:
    values = [True if t == "True" else False if t == "False" else pd.NA for t in text]
    return pd.Series(values, index=text.index, dtype="boolean", name=text.name)


def _apply_schema(df: pd.DataFrame) -> pd.DataFrame:
    """Fix every column's dtype from its name (and, for unknown columns, its values) so that a frame and the same
    frame read back from CSV or Parquet compare equal."""
    out = {}
    for column in df.columns:
        s = df[column]
        field = stage_field(column)
        if column == "number":
            out[column] = _as_number(s, integer=True).astype("int64")
        elif column == "params":
            out[column] = _as_number(s, integer=True)
        elif column in FLOAT_COLUMNS:
            out[column] = _as_number(s, integer=False)
        elif column in TEXT_COLUMNS or column in ("backbone", CONFIG_JSON):
            out[column] = _as_text(s)
        elif field in NUMERIC_STAGE_FIELDS:
            out[column] = _as_number(s, integer=None)
        elif field is not None:
            out[column] = _as_text(s)
        else:
            # Unknown (extra) column: decide from its values, seen as text, so the in-memory frame and the CSV
            # (all text) land on the same dtype.
            text = _as_text(s)
            filled = text[text != ""]
            if s.dtype == bool or (len(filled) and set(filled) <= {"True", "False"}):
                out[column] = _as_boolean(text)
            elif len(filled) and pd.to_numeric(filled, errors="coerce").notna().all():
                out[column] = _as_number(text, integer=None)
            else:
                out[column] = text
    return pd.DataFrame(out, index=df.index, columns=df.columns)


# ------------------------------------------------------------------------------------------------------ files


def write_trials(df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> None:
    """Write ``trials.parquet`` and ``trials.csv`` into ``out_dir``, each atomically (temp file + ``os.replace``).

    Parquet first: :func:`read_trials` (and so ``--resume``) prefers it, so a kill between the two writes leaves
    resume with the newer data; the CSV catches up on the next write.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / TRIALS_PARQUET) as tmp:
        df.to_parquet(tmp, index=False)
    atomic_write_text(out / TRIALS_CSV, df.to_csv(index=False))


def write_pareto(
    df: pd.DataFrame, out_dir: str | os.PathLike[str], objectives: Sequence[str] = DEFAULT_OBJECTIVES
) -> pd.DataFrame:
    """Write ``pareto.csv`` (the non-dominated completed trials, by GFLOPs ascending) atomically; return that front.

    Same columns as ``trials.csv``; with no completed trial the file holds the header only.
    """
    return write_front(pareto_front(df, objectives), out_dir)


def write_front(front: pd.DataFrame, out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Write a front computed already (``SearchResults.front``) as ``pareto.csv``, atomically; return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PARETO_CSV, front.to_csv(index=False))
    return front


def read_trials(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the trials frame back from ``out_dir`` (``trials.parquet`` if present, else ``trials.csv``).

    Dtypes are those :func:`trials_frame` produces. Raises ``FileNotFoundError`` if neither file exists.
    """
    out = Path(out_dir)
    if (out / TRIALS_PARQUET).is_file():
        df = pd.read_parquet(out / TRIALS_PARQUET)
    elif (out / TRIALS_CSV).is_file():
        # Everything as text, nothing as NaN: the schema then decides each dtype exactly as trials_frame did,
        # instead of pandas guessing (e.g. an all-empty error column as float).
        df = pd.read_csv(out / TRIALS_CSV, dtype=str, keep_default_na=False)
    else:
        raise FileNotFoundError(f"no {TRIALS_PARQUET} or {TRIALS_CSV} in {out}")
    return _apply_schema(df).reset_index(drop=True)
