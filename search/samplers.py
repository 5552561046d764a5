"""Optuna samplers by name, each set up for a multi-objective, conditional (define-by-run) space.

``nsga2`` (default) and ``tpe`` are the two that learn from a Pareto front; ``random`` and ``qmc`` ignore results
(useful as a baseline for the others); ``gp`` is Optuna's Gaussian-process sampler (log-EHVI for several
objectives). ``check_sampler`` says *before Ray starts* whether a sampler can run here: ``gp`` needs torch and
scipy, ``qmc`` needs scipy.

Example::

    >>> check_sampler("nsga2", n_objectives=2)
    >>> sampler = make_sampler("tpe", seed=0, n_objectives=2)

What the searcher keeps is a :class:`SamplerSpec`, never a sampler: Ray Tune pickles the searcher, and an Optuna
sampler is not promised to pickle (optuna 5.1 gave the genetic-algorithm samplers a ``threading.Lock``). The spec
is plain data and builds the sampler wherever the study is opened.
"""

from __future__ import annotations

import importlib.util
import warnings
import zlib
from dataclasses import dataclass

import optuna

__all__ = ["SAMPLERS", "SamplerSpec", "check_sampler", "make_sampler", "session_seed"]

SAMPLERS: tuple[str, ...] = ("nsga2", "tpe", "gp", "random", "qmc")  # each optimises several objectives (Optuna >= 4)
_NEEDS = {"gp": ("scipy", "torch"), "qmc": ("scipy",)}


def check_sampler(name: str, n_objectives: int) -> None:
    """Raise ``ValueError`` (one line, with the fix) if ``name`` cannot drive this search here."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    missing = [m for m in _NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"sampler {name!r} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed (pip install {' '.join(missing)}); or choose nsga2, tpe or random"
        )


def session_seed(seed: int, trials_in_study: int) -> int:
    """The sampler seed for a session: ``seed`` for a fresh study, otherwise a value derived from ``seed`` and the
    study's size, so that a resumed sampler does not replay the random draws of the first session (which would
    only propose configs that were already trained)."""
    if trials_in_study == 0:
        return seed
    return zlib.crc32(f"{seed}:{trials_in_study}".encode()) & 0x7FFFFFFF


def make_sampler(name: str, seed: int, n_objectives: int, population_size: int = 20) -> optuna.samplers.BaseSampler:
    """A fresh sampler; its knowledge comes from the study it is attached to, so it can be rebuilt on resume."""
    check_sampler(name, n_objectives)
    with warnings.catch_warnings():
        # TPE's multivariate/group/constant_liar and GPSampler are flagged experimental; they are what fits here.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make(name, seed, population_size)


@dataclass(frozen=True)
class SamplerSpec:
    """How to build a sampler: picklable, comparable, and callable (``spec()`` returns a fresh sampler)."""

    name: str
    seed: int
    n_objectives: int
    population_size: int = 20

    def __call__(self) -> optuna.samplers.BaseSampler:
        return make_sampler(self.name, self.seed, self.n_objectives, self.population_size)


def _make(name: str, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(2, population_size), seed=seed)
    if name == "tpe":
        # multivariate + group: the space is conditional (a stage's SCSA settings exist only when it has SCSA);
        # constant_liar: concurrent trials do not all get the same suggestion.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=min(10, max(4, population_size // 2)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)
