"""Which configs to try: Ray Tune runs proxy trainings, Optuna proposes configs, a multi-objective ASHA stops weak
ones. The only package that imports Ray — and only when a search actually runs (``search.run``), so that the CLI
validates its input without starting or even importing Ray.

    >>> from search import SearchSettings, run                       # doctest: +SKIP
    >>> outcome = run(SearchSettings(backbone="resnet18", budget=6, out="runs/x", proxy="smoke"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .settings import SearchSettings

__all__ = ["SearchSettings", "run"]


def __getattr__(name: str) -> Any:
    # Lazy: importing ray costs seconds, and bad command lines must fail fast.
    if name == "run":
        from .run import run

        return run
    raise AttributeError(f"module 'search' has no attribute {name!r}")
