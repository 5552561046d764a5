"""The finalists' phases: once the budget's trials are done, the finalists are trained again.

One proxy trial is one draw of a biased measure: its score moves between seeds by about as much as configs differ,
and more seeds at the same fidelity average the noise away but not the bias (``bench/proxy_fidelity.py``). So when
the sampler's trials are done, the *finalists* (both references, then the front in the order the selection rule
prefers it, then the configs nearest the front; see :func:`results.config_stats.finalists`) are trained again:

* **replicates** (``--replicates K``, off by default): K more seeds at the proxy's own fidelity (replicate k trains
  with ``seed + k * SEED_STRIDE``). Rounds repeat until the set of finalists stops growing: the first round
  (references and front) gives the noise estimate that defines the band for the next.
* **verification** (``--verify FIDELITY``, on by default): ``--verify-seeds`` seeds at a higher fidelity, the same
  seeds for every finalist (:func:`run_seed`), so that two finalists, and each and the plain backbone, are compared
  seed by seed; the choice is made on these numbers (``results/choice.py``). One round: its finalists are the
  replicated ones where there are replicates, else the first :func:`max_finalists` of the order above.

Both are trials like any other for Ray (the same trainable, no early stopping) and for the ledger (launched in
``launched.jsonl`` before Ray sees them, one row each in ``trials.csv`` naming the trial they repeat in
``replicate_of`` and their ``phase``), but not for Optuna (the sampler has moved on; the study keeps one trial per
config) and not for the budget. A run interrupted by Ctrl-C or a kill runs again on ``--resume``, under the same
id; a finished one is never run again.
"""

from __future__ import annotations

import math

from ray.tune.search import Searcher

from results.config_stats import config_means, finalists, noise_estimate
from results.frame import trials_frame
from results.schema import PHASE, REPLICATE, VERIFY

from .ledger import Launch, Ledger
from .recording import RecordingSearcher

__all__ = ["FINALIST_SHARE", "MIN_FINALISTS", "NOISE_BAND_SD", "SEED_STRIDE", "ReplicateSearch", "max_finalists",
           "plan_replicates", "plan_verification", "run_seed"]

#: Replicate k trains with seed ``seed + k * SEED_STRIDE``: far from the retries' ``seed + attempt``.
SEED_STRIDE = 1000
#: Verification seed k is that of replicate ``VERIFY_SEED_BASE + k``: apart from every replicate's.
VERIFY_SEED_BASE = 100
#: The noise band of the front, in pooled seed standard deviations of the first objective.
NOISE_BAND_SD = 2.0
#: At most this share of the budget is replicated or verified (references first, then the front in the order the
#: selection rule prefers it, then the configs nearest the front). The default resnet50 search found 45 of its
#: first 50 configs within the noise band: training every tie again would cost more than the search itself. 0.02
#: (4 configs for 200 trials: both references and two candidates) at 2 seeds each and 3x the proxy's images is what
#: fits the default run's 70 minutes: 6 configs took 13 min of a 71-min run (docs/benchmarks.md).
FINALIST_SHARE = 0.02
#: ... but never fewer than this many (small searches train again all they have, up to this).
MIN_FINALISTS = 4


def max_finalists(budget: int) -> int:
    """How many configs the finalists' phases of a ``budget``-trial search train again at the most (see
    :data:`FINALIST_SHARE`): 4 for the default 200 trials."""
    return max(MIN_FINALISTS, math.ceil(FINALIST_SHARE * budget))


def run_seed(seed: int, replicate: int = 0, attempt: int = 0, phase: str = REPLICATE) -> int:
    """The training seed of replicate ``replicate`` (0: the trial itself) of ``phase`` on retry ``attempt``."""
    offset = VERIFY_SEED_BASE + replicate if phase == VERIFY else replicate
    return seed + offset * SEED_STRIDE + attempt


def _band(df, objective: str, unmeasured: float) -> float:
    """The noise band of the front: :data:`NOISE_BAND_SD` pooled seed sd of ``objective`` where replicates measured
    it, else ``unmeasured``."""
    sd, _ = noise_estimate(df, objective)
    return NOISE_BAND_SD * sd if math.isfinite(sd) else unmeasured


def _new_runs(ledger: Ledger, order: list[str], k: int, limit: int | None, phase: str, tag: str) -> list[Launch]:
    """Launches of ``phase`` still missing for the first configs of ``order`` (references always; at most ``limit``
    configs over all rounds), ``k`` each."""
    done = {launch.replicate_of for launch in ledger.launches.values() if launch.phase == phase}
    room = math.inf if limit is None else limit - len(done)
    number = ledger.next_number()
    new = []
    for trial_id in order:
        first = ledger.launches[trial_id]
        if trial_id not in done:
            if room <= 0 and not first.reference:
                continue
            room -= 1
        have = ledger.replicates_of(trial_id, phase)
        for r in range(1, k + 1):
            if r not in have:
                new.append(Launch(number=number, trial_id=f"{trial_id}{tag}{r}", config=first.config,
                                  reference=first.reference, replicate_of=trial_id, replicate=r, phase=phase))
                number += 1
    return new


def _reruns(ledger: Ledger, phase: str) -> list[Launch]:
    return [ledger.launches[t] for t in ledger.unfinished_ids(replicates=True) if ledger.launches[t].phase == phase]


def _finalist_order(ledger: Ledger, objectives: list[str], rule: str | None, unmeasured: float) -> list[str]:
    """Completed configs in the order they become finalists (:func:`results.config_stats.finalists`), with the
    noise band at ``unmeasured`` where no replicate has measured the noise yet."""
    df = trials_frame(ledger.ordered_records())
    return finalists(config_means(df, objectives), objectives, _band(df, objectives[0], unmeasured), rule=rule)


def plan_replicates(ledger: Ledger, objectives: list[str], k: int, limit: int | None = None,
                    rule: str | None = None) -> list[Launch]:
    """Replicates still to run: interrupted ones first (same ids), then those of finalists not yet replicated; at
    most ``limit`` configs replicated over all rounds (the references always; then the front in the order the
    selection ``rule`` prefers it, see :func:`results.config_stats.finalists`)."""
    reruns = _reruns(ledger, REPLICATE)
    if k <= 0:
        return reruns
    # The limit counts every config replicated in any round: replicating the front pulls its means back toward the
    # others (the winner's curse undone), which puts single draws on the front of the next round, and so on.
    # Without a noise estimate, the first round is the references and the front (a band of 0): it measures the noise.
    order = _finalist_order(ledger, objectives, rule, 0.0)
    return reruns + _new_runs(ledger, order, k, limit, REPLICATE, "r")


def plan_verification(ledger: Ledger, objectives: list[str], k: int, limit: int | None = None,
                      rule: str | None = None) -> list[Launch]:
    """Verification runs still to run: interrupted ones first (same ids), then ``k`` paired seeds for each finalist
    (the replicated configs where there are any, else the order of :func:`results.config_stats.finalists`, at
    most ``limit`` configs, the references always)."""
    reruns = _reruns(ledger, VERIFY)
    if k <= 0:
        return reruns
    # Without a noise estimate, the configs nearest the front fill the places the front leaves (an unbounded band).
    order = _finalist_order(ledger, objectives, rule, math.inf)
    replicated = {launch.replicate_of for launch in ledger.launches.values() if launch.phase == REPLICATE}
    if replicated:
        order = [t for t in order if t in replicated or ledger.launches[t].reference]
    return reruns + _new_runs(ledger, order, k, limit, VERIFY, "v")


class ReplicateSearch(RecordingSearcher):
    """Hands Ray a fixed list of launches (replicates or verification runs), journaling each before Ray sees it;
    each result is recorded (:class:`~search.recording.RecordingSearcher`), never told to Optuna."""

    def __init__(self, ledger: Ledger, launches: list[Launch], objectives: list[str], modes: list[str]) -> None:
        super().__init__(ledger, objectives, modes)
        self._queue = list(launches)

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self._queue or self.fault is not None:
            return Searcher.FINISHED
        launch = self._queue[0]
        with self._guard():
            if launch.trial_id not in self._ledger.launches:
                self._ledger.launch(launch)
            self._queue.pop(0)
            self._launch_of[trial_id] = launch
            return {"arch": launch.config, "trial_key": launch.trial_id, "number": launch.number,
                    "reference": launch.reference, "replicate": launch.replicate, PHASE: launch.phase}
        return Searcher.FINISHED
