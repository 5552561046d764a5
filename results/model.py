"""What a search found, computed once from its trials: every renderer reads it.

:func:`search_results` takes the trials frame (one row per trial and replicate) and computes, once, the per-config
table (means over seeds, their 95 % intervals, seeds), its front, the pooled seed noise of the first objective and
the choice (on the best evidence: the verification runs, else the replicates; with the finalists against the plain
backbone). ``pareto.csv``, the plots,
``best_config.md`` and the exports, and the live progress line all read this one :class:`SearchResults`, so
they cannot disagree about a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from results.choice import Choice, choose
from results.config_stats import config_means, is_verified, noise_estimate
from results.pareto import pareto_front
from results.schema import REPLICATE_OF
from results.select import DEFAULT_RULE

__all__ = ["SearchResults", "search_results"]


@dataclass(frozen=True)
class SearchResults:
    """A search's results (see the module docstring); ``choice`` is None with a ``reason`` when nothing can be
    chosen yet."""

    trials: pd.DataFrame  # one row per trial and replicate (``trials_frame``)
    objectives: tuple[str, ...]  # the first is the proxy score
    rule: str  # the selection rule
    means: pd.DataFrame  # one row per config: means over seeds, intervals, seeds
    front: pd.DataFrame  # the non-dominated completed configs of ``means``
    noise_sd: float  # pooled within-config seed sd of the first objective (NaN without replicates)
    noise_dof: int
    choice: Choice | None
    reason: str = ""
    fidelity: str = "the verification fidelity"  # the verification fidelity in words

    @property
    def chosen_on_proxy(self) -> pd.Series | None:
        """The chosen config's row of the proxy's means (where the plots draw it), or None."""
        if self.choice is None:
            return None
        rows = self.means[self.means["trial_id"].astype(str) == str(self.choice.best["trial_id"])]
        return rows.iloc[0] if len(rows) else None

    @property
    def verification_runs(self) -> int:
        """Verification runs among the trials."""
        return int(is_verified(self.trials).sum())

    @property
    def replicates(self) -> int:
        """Replicate runs (at the proxy's fidelity) among the trials."""
        if REPLICATE_OF not in self.trials.columns:
            return 0
        return int((self.trials[REPLICATE_OF].astype(str) != "").sum()) - self.verification_runs


def search_results(trials: pd.DataFrame, objectives: Sequence[str], rule: str = DEFAULT_RULE,
                   fidelity: str = "the verification fidelity", verify_score: str | None = None) -> SearchResults:
    """Compute :class:`SearchResults` once from the trials frame; ``fidelity``: the verification fidelity in
    words (``evaluators.fidelity.describe_verify``), ``verify_score`` what ranks it (None: the first objective)."""
    objectives = tuple(objectives)
    means = config_means(trials, list(objectives))
    sd, dof = noise_estimate(trials, objectives[0])
    try:
        choice, reason = choose(trials, list(objectives), rule, means, fidelity, verify_score), ""
    except ValueError as e:  # nothing completed yet, or nothing meets the rule
        choice, reason = None, str(e)
    return SearchResults(trials=trials, objectives=objectives, rule=rule, means=means,
                         front=pareto_front(means, list(objectives)), noise_sd=sd, noise_dof=dof, choice=choice,
                         reason=reason, fidelity=fidelity)
