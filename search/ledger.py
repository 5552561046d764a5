"""The search's own book of trials: what was launched, what finished and how, and which configs are known.

Two files in ``--out`` hold it, both written before anything else can see the change, so that a ``kill -9`` at any
moment loses at most the trials that were running:

* ``launched.jsonl`` — one line per trial the moment it is handed to Ray (number, trial id, config, reference,
  Optuna trial number; for a replicate, the trial it repeats and its index), appended and fsync'ed. It is what the
  budget counts: budget = trials launched, replicates apart (they are planned once the budget's trials are done).
* ``trials.csv`` / ``trials.parquet`` (through ``results.report.update``) — one row per *finished* trial.

A launched trial without a row was running when the search died; ``--resume`` runs it again under the same
trial id and number, so it is counted once and its id stays unique.

Configs are compared by value (``ArchConfig`` equality through its canonical JSON), which is how the search
never trains a config twice.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from results.frame import read_trials
from results.report import update as write_results
from results.schema import (
    COMPLETED,
    CONFIG_JSON,
    FAILED,
    JOURNAL,
    REPLICATE,
    REPLICATE_OF,
    SEARCH,
    STOPPED,
    TRIALS_CSV,
    TRIALS_PARQUET,
    is_stage_column,
)
from space import ArchConfig

__all__ = ["Launch", "Ledger", "config_key", "trial_name"]


def config_key(arch: ArchConfig | Mapping) -> str:
    """Canonical text of a config: equal for equal configs, whatever produced them."""
    d = arch.to_dict() if isinstance(arch, ArchConfig) else ArchConfig.from_dict(arch).to_dict()
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def trial_name(number: int) -> str:
    """The trial id of trial ``number``: ``t0000``, ``t0001``, ... (sorts in launch order)."""
    return f"t{number:04d}"


@dataclass
class Launch:
    """One launched trial."""

    number: int
    trial_id: str
    config: dict
    reference: str = ""
    optuna_number: int | None = None
    replicate_of: str = ""  # a replicate or verification run: the trial id of the config's first trial
    replicate: int = 0  # a replicate or verification run: 1, 2, ... (its seed follows from it and the phase)
    phase: str = SEARCH  # results.schema.PHASES

    def __post_init__(self) -> None:
        if not self.phase:  # journals written before phases were recorded
            self.phase = REPLICATE if self.replicate_of else SEARCH

    @property
    def key(self) -> str:
        return config_key(self.config)

    @property
    def arch(self) -> ArchConfig:
        return ArchConfig.from_dict(self.config)


@dataclass
class Ledger:
    """Launches and records of one search directory (driver side only; trials never touch it)."""

    out: Path
    objectives: list[str]
    launches: dict[str, Launch] = field(default_factory=dict)  # trial id -> launch, in launch order
    records: dict[str, dict] = field(default_factory=dict)  # trial id -> record of a finished trial
    _by_key: dict[str, str] = field(default_factory=dict, repr=False)  # config key -> first trial id with it

    # -- loading -----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, out: str | os.PathLike[str], objectives: Iterable[str]) -> Ledger:
        """The ledger of ``out`` (empty for a new search)."""
        ledger = cls(Path(out), list(objectives))
        journal = ledger.out / JOURNAL
        if journal.exists():
            for line in journal.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill while it was being written: that launch never happened
                launch = Launch(**entry)
                ledger.launches[launch.trial_id] = launch
                ledger._by_key.setdefault(launch.key, launch.trial_id)
        if (ledger.out / TRIALS_PARQUET).exists() or (ledger.out / TRIALS_CSV).exists():
            for row in read_trials(ledger.out).to_dict("records"):
                record = _record_from_row(row)
                ledger.records[record["trial_id"]] = record
        return ledger

    # -- writing -----------------------------------------------------------------------------------------------
    def launch(self, launch: Launch) -> None:
        """Append ``launch`` to the journal (durably) before Ray sees the trial."""
        if launch.trial_id in self.launches and launch.trial_id in self.records:
            raise ValueError(f"trial {launch.trial_id} was launched already and has finished")
        self.out.mkdir(parents=True, exist_ok=True)
        line = json.dumps(launch.__dict__, separators=(",", ":")) + "\n"
        with open(self.out / JOURNAL, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.launches[launch.trial_id] = launch
        self._by_key.setdefault(launch.key, launch.trial_id)

    def finish(self, record: Mapping[str, Any]) -> None:
        """Keep ``record`` (a finished trial) and rewrite trials.csv / trials.parquet / pareto.csv atomically."""
        self.records[str(record["trial_id"])] = dict(record)
        self.flush()

    def flush(self) -> None:
        if self.records:
            write_results(self.out, self.ordered_records(), self.objectives)

    # -- queries -----------------------------------------------------------------------------------------------
    def ordered_records(self) -> list[dict]:
        return sorted(self.records.values(), key=lambda r: int(r["number"]))

    def unfinished_ids(self, replicates: bool = False) -> list[str]:
        """Launched trials (or, with ``replicates``, replicates) without a record: running now, or interrupted in
        an earlier session."""
        return [tid for tid, launch in self.launches.items()
                if tid not in self.records and bool(launch.replicate_of) == replicates]

    def trials_launched(self) -> int:
        """What the budget counts: launched trials, replicates apart."""
        return sum(1 for launch in self.launches.values() if not launch.replicate_of)

    def replicates_of(self, trial_id: str, phase: str = REPLICATE) -> dict[int, Launch]:
        """Replicate index -> launch of ``phase`` (replicates, or verification runs), of the config whose first
        trial is ``trial_id``."""
        return {launch.replicate: launch for launch in self.launches.values()
                if launch.replicate_of == trial_id and launch.phase == phase}

    def next_number(self) -> int:
        return max((launch.number for launch in self.launches.values()), default=-1) + 1

    def find(self, arch: ArchConfig) -> tuple[str, dict | None] | None:
        """``(trial id, record or None while it runs)`` of an earlier trial of the same config, or ``None``."""
        tid = self._by_key.get(config_key(arch))
        return None if tid is None else (tid, self.records.get(tid))

    def counts(self, replicates: bool = False) -> dict[str, int]:
        """Finished trials (or, with ``replicates``, replicates) per status."""
        counts = {COMPLETED: 0, STOPPED: 0, FAILED: 0}
        for record in self.records.values():
            if bool(record.get(REPLICATE_OF)) == replicates:
                counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts


def _record_from_row(row: Mapping[str, Any]) -> dict:
    """A trials.csv row back into a record (config from ``config_json``; missing values dropped)."""
    record: dict[str, Any] = {}
    for key, value in row.items():
        if key == CONFIG_JSON:
            record["config"] = json.loads(value) if value else None
            continue
        if key == "backbone" or is_stage_column(key):
            continue  # flattened views of the config, rebuilt from it on every write
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            continue
        if hasattr(value, "item"):  # numpy / pandas scalars -> plain Python for JSON and Optuna
            value = value.item()
        if key.endswith("_curve") and isinstance(value, str) and value:
            value = json.loads(value)
        record[key] = value
    return record
