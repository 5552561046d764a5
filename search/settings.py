"""The settings of one search, and the ``search.json`` manifest that keeps them in ``--out`` for ``--resume``.

Settings fall in two kinds. *Search-defining* ones (backbone, dataset, proxy preset, objectives, sampler, seed,
space, early-stopping rule, the NSGA-II population) fix what the search means: a resumed search must use the
same, so a conflicting value on the command line is refused rather than silently mixed into one study.
*Run-time* ones (budget, time budget, concurrency and resources, cluster address, device, retries, selection
rule) may change between sessions; the budget may only grow past what was already launched.

No Ray here: the CLI validates with this module before any Ray process starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluators.data import DEFAULT_DATASET
from evaluators.fidelity import DEFAULT_VERIFY
from results.io import atomic_write_text
from results.manifest import MANIFEST_VERSION, read_manifest
from results.schema import LATENCY_CACHE, MANIFEST, STUDY_DB
from results.select import DEFAULT_RULE

__all__ = [
    "MANIFEST",
    "STUDY_DB",
    "COST_COLUMNS",
    "DEFAULT_OBJECTIVES",
    "SCORE",
    "SEARCH_DEFINING",
    "SearchSettings",
    "TrialSettings",
    "default_population",
    "kept_fidelity",
    "objective_columns",
    "objective_modes",
]

STUDY_NAME = "scsa-search"

# CLI cost name -> result / trials.csv column; directions come from results.pareto.OBJECTIVE_DIRECTIONS.
COST_COLUMNS: dict[str, str] = {
    "gflops": "gflops",
    "params": "params",
    "latency": "latency_ms",
    "latency_ms": "latency_ms",
}
#: The objectives of a search that names none, from Python or the CLI alike: the preset's own score, then GFLOPs.
DEFAULT_OBJECTIVES = "score,gflops"
#: The CLI's name for "the proxy preset's own score" (its ``score`` setting: accuracy, val_loss, loss, tse, ...).
SCORE = "score"

SEARCH_DEFINING: tuple[str, ...] = (
    "backbone",
    "dataset",
    "proxy",
    "proxy_set",
    "objectives",
    "sampler",
    "seed",
    "space_spec",
    "early_stopping",
    "grace_period",
    "reduction_factor",
    "population_size",
    "warm_start",
    "resolution",
    "fidelity",
    "verify",
    "verify_fidelity",
)


def objective_columns(text: str, score: str = "accuracy") -> list[str]:
    """``"score,gflops,latency"`` -> ``[score, "gflops", "latency_ms"]``: one proxy score first (``score``, the
    preset's, or one named: accuracy, val_loss, loss, tse, tse_ema), then the costs in the given order.
    ``ValueError`` naming the fix."""
    from evaluators.scores import SCORES

    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    allowed = f"{SCORE} (the preset's: {score}) or one of {', '.join(SCORES)}; costs gflops, params, latency"
    if not names:
        raise ValueError(f"--objectives is empty; give a comma-separated list: {allowed}")
    names = [score if n == SCORE else n for n in names]
    unknown = [n for n in names if n not in COST_COLUMNS and n not in SCORES]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r} in --objectives; choose from: {allowed} "
                         f"(e.g. {SCORE},gflops)")
    quality = [n for n in names if n in SCORES]
    costs = [COST_COLUMNS[n] for n in names if n in COST_COLUMNS]
    if len(set(costs)) != len(costs) or len(set(quality)) != len(quality):
        raise ValueError(f"--objectives lists an objective twice: {text!r}")
    if len(quality) != 1 or not costs:
        raise ValueError(f"--objectives must hold one proxy score ({SCORE} or one of {', '.join(SCORES)}) and at "
                         f"least one cost (gflops, params, latency), got {text!r}")
    return quality + costs


def kept_fidelity(fid: Any) -> dict[str, Any]:
    """A proxy preset (:class:`~evaluators.fidelity.Fidelity`) as a search keeps it in ``search.json``: every
    setting but ``threads``, which is per trial (``--cpus-per-trial``)."""
    return {k: v for k, v in fid.to_dict().items() if k != "threads"}


def default_population(budget: int) -> int:
    """NSGA-II's population for a ``budget``-trial search: a tenth of the budget, between 4 and 50, so that the
    default 200 trials are 10 generations. (A quarter, as before, made 200 trials 4 generations, the first of them
    random: NSGA-II was hardly more than random search; ``bench/search_efficiency.py``.)"""
    return max(4, min(50, budget // 10))


def objective_modes(columns: list[str]) -> list[str]:
    """Ray's ``"max"`` / ``"min"`` per objective column."""
    from results.pareto import OBJECTIVE_DIRECTIONS

    return ["max" if OBJECTIVE_DIRECTIONS[c] == "maximize" else "min" for c in columns]


@dataclass(frozen=True)
class TrialSettings:
    """The fixed settings a trial receives (Ray ships it to the workers): the proxy's :class:`Fidelity` as a dict
    (without threads: ``threads`` is per trial), the data, the seed, the device and the cost objectives."""

    dataset: str
    data_dir: str | None
    fidelity: dict[str, Any]
    seed: int
    device: str
    threads: int
    resolution: int
    objectives: tuple[str, ...]
    latency_cache: str | None = None  # the latency cache directory the driver and every trial share
    verify_fidelity: dict[str, Any] | None = None  # what a verification run trains with (without threads)


@dataclass
class SearchSettings:
    """Everything ``search.run`` needs, already validated (see ``run_search.py``)."""

    backbone: str
    budget: int
    out: str
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    download: bool = False
    proxy: str = "default"
    proxy_set: dict[str, Any] | None = None  # --proxy-set KEY=VALUE overrides of the preset
    objectives: list[str] | None = None  # the score first, then costs; None: DEFAULT_OBJECTIVES for the preset
    sampler: str = "nsga2"
    seed: int = 0
    space_spec: Any = None  # the parsed space file (kept verbatim so resume does not need the file)
    select: str = DEFAULT_RULE
    device: str = "auto"
    time_budget_min: float | None = None
    max_concurrent: int = 1
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    address: str | None = None
    storage: str | None = None
    early_stopping: bool = True
    grace_period: int = 1
    reduction_factor: int = 3
    retries: int = 0
    replicates: int = 0  # further seeds of each finalist at the proxy's fidelity (search/finalists.py)
    verify: str = DEFAULT_VERIFY  # the finalists' fidelity: Nx the proxy's images, a preset, or off
    verify_seeds: int = 2  # paired seeds each finalist is verified with
    population_size: int | None = None  # NSGA-II's; None: default_population(budget)
    warm_start: bool = False  # the single-stage configs (paper's SCSA in one stage) first, after the references
    resolution: int = 224  # of the cost objectives (GFLOPs, latency): ImageNet-size, comparable with papers
    num_classes: int = 10  # of the proxy dataset (for the exported configs)
    epochs: int = 1  # of the proxy preset (the scheduler's max_t)
    fidelity: dict | None = None  # the preset's settings when the search started (None: the preset's now)
    verify_fidelity: dict | None = None  # --verify's settings when the search started (None: off, or not resolved)
    resume: bool = False

    def __post_init__(self) -> None:
        # Defaults that follow from other settings are resolved here, in one place, so that a search set up from
        # Python is the search the CLI runs with the same arguments.
        from evaluators.fidelity import Fidelity, preset, verification

        if self.objectives is None or self.fidelity is None:
            fid = preset(self.proxy, **(self.proxy_set or {}))
            if self.objectives is None:
                self.objectives = objective_columns(DEFAULT_OBJECTIVES, fid.score)
            if self.fidelity is None:
                self.fidelity = kept_fidelity(fid)
                self.epochs = fid.epochs
        if self.verify_fidelity is None:
            checked = verification(Fidelity(**self.fidelity), self.verify)  # ValueError on a bad --verify
            self.verify_fidelity = None if checked is None else kept_fidelity(checked)
        if self.population_size is None:
            self.population_size = default_population(self.budget)

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def storage_path(self) -> str:
        """Where Ray's experiment directories go: ``--storage`` (a shared path or a URI such as ``s3://...``, for
        clusters) or ``<out>/ray``."""
        if not self.storage:
            return str((self.out_path / "ray").resolve())
        return self.storage if "://" in self.storage else str(Path(self.storage).expanduser().resolve())

    @property
    def modes(self) -> list[str]:
        return objective_modes(self.objectives)

    def for_trials(self) -> TrialSettings:
        """What every trial of this search needs, frozen (the fidelity itself, not a preset to look up again)."""
        return TrialSettings(dataset=self.dataset, data_dir=self.data_dir, fidelity=dict(self.fidelity or {}),
                             seed=self.seed, device=self.device, threads=self.cpus_per_trial,
                             resolution=self.resolution, objectives=tuple(self.objectives),
                             latency_cache=self.latency_cache_dir(),
                             verify_fidelity=dict(self.verify_fidelity) if self.verify_fidelity else None)

    def latency_cache_dir(self) -> str | None:
        """Where the latencies of this search are cached, when latency is an objective: ``$SCSA_LATENCY_CACHE``
        if set, else ``latency_cache/`` in ``--out`` (see :func:`evaluators.latency_cache.cache_at`)."""
        from evaluators.latency_cache import ENV_DIR

        if "latency_ms" not in self.objectives:
            return None
        return os.environ.get(ENV_DIR) or str(Path(self.out).resolve() / LATENCY_CACHE)

    # -- manifest --------------------------------------------------------------------------------------------
    def to_manifest(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("resume")
        d["version"] = MANIFEST_VERSION
        d["study_name"] = STUDY_NAME
        return d

    def write_manifest(self, noise: dict[str, Any] | None = None) -> Path:
        """Write ``search.json``; ``noise`` (the seed noise the replicates measured) is kept beside the settings."""
        path = self.out_path / MANIFEST
        manifest = self.to_manifest()
        if noise:
            manifest["noise"] = noise
        atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return path

    @staticmethod
    def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
        """The manifest of the search in ``out``; ``FileNotFoundError`` / ``ValueError`` if there is none usable."""
        return read_manifest(out)
