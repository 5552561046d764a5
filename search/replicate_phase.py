"""The replicate phase: once the budget's trials are done, train the finalists again with further seeds.

One proxy trial is one draw: its score moves between seeds by about as much as configs differ. So when the
sampler's trials are done, the *finalists* (both references, the front, and every config within the noise band of
the front; see :func:`results.config_stats.finalists`) are trained ``--replicates K`` more times, at the top
fidelity, with the same seeds for every finalist (replicate k trains with ``seed + k * SEED_STRIDE``), so that two
finalists can be compared seed by seed. Rounds repeat until the set of finalists stops growing: the first round
(references and front) gives the noise estimate that defines the band for the next.

Replicates are trials like any other for Ray (the same trainable, no early stopping) and for the ledger (launched
in ``launched.jsonl`` before Ray sees them, one row each in ``trials.csv`` naming the trial they repeat in
``replicate_of``), but not for Optuna (the sampler has moved on; the study keeps one trial per config) and not for
the budget. A replicate interrupted by Ctrl-C or a kill runs again on ``--resume``, under the same id; a finished
one is never run again.
"""

from __future__ import annotations

import math

from ray.tune.search import Searcher

from results.config_stats import config_means, finalists, noise_estimate
from results.frame import trials_frame

from .ledger import Launch, Ledger
from .recording import RecordingSearcher

__all__ = ["FINALIST_SHARE", "MIN_FINALISTS", "NOISE_BAND_SD", "SEED_STRIDE", "ReplicateSearch", "max_finalists",
           "plan_replicates", "replicate_seed"]

#: Replicate k trains with seed ``seed + k * SEED_STRIDE``: far from the retries' ``seed + attempt``.
SEED_STRIDE = 1000
#: The noise band of the front, in pooled seed standard deviations of the first objective.
NOISE_BAND_SD = 2.0
#: At most this share of the budget is replicated (references first, then the front in the order the selection rule
#: prefers it, then the configs within the noise band, nearest the front first). The default resnet50 search found
#: 45 of its first 50 configs within the band: replicating every tie would cost twice the search itself. At 0.05
#: (10 configs) the default 200-trial run spent 6.2 min in two rounds of replicates and ended 1 min over its 60;
#: 0.03 (6 configs, one round of 2 x 6 runs) is what fits. The choice is made among the replicated configs
#: (results/choice.py), so these few are the ones the rule would pick.
FINALIST_SHARE = 0.03
#: ... but never fewer than this many (small searches replicate all they have within the band).
MIN_FINALISTS = 4


def max_finalists(budget: int) -> int:
    """How many configs the replicate phase of a ``budget``-trial search trains again at the most (see
    :data:`FINALIST_SHARE`): 6 for the default 200 trials."""
    return max(MIN_FINALISTS, math.ceil(FINALIST_SHARE * budget))


def replicate_seed(seed: int, replicate: int, attempt: int = 0) -> int:
    """The training seed of replicate ``replicate`` (0: the trial itself) on retry ``attempt``."""
    return seed + replicate * SEED_STRIDE + attempt


def plan_replicates(ledger: Ledger, objectives: list[str], k: int, limit: int | None = None,
                    rule: str | None = None) -> list[Launch]:
    """Replicates still to run: interrupted ones first (same ids), then those of finalists not yet replicated; at
    most ``limit`` configs replicated over all rounds (the references always; then the front in the order the
    selection ``rule`` prefers it, see :func:`results.config_stats.finalists`)."""
    reruns = [ledger.launches[t] for t in ledger.unfinished_ids(replicates=True)]
    if k <= 0:
        return reruns
    df = trials_frame(ledger.ordered_records())
    sd, _ = noise_estimate(df, objectives[0])
    band = NOISE_BAND_SD * sd if math.isfinite(sd) else 0.0
    new = []
    number = ledger.next_number()
    # The limit counts every config replicated in any round: replicating the front pulls its means back toward the
    # others (the winner's curse undone), which puts single draws on the front of the next round, and so on.
    replicated = {launch.replicate_of for launch in ledger.launches.values() if launch.replicate_of}
    room = math.inf if limit is None else limit - len(replicated)
    for trial_id in finalists(config_means(df, objectives), objectives, band, rule=rule):
        first = ledger.launches[trial_id]
        if trial_id not in replicated:
            if room <= 0 and not first.reference:
                continue
            room -= 1
        have = ledger.replicates_of(trial_id)
        for r in range(1, k + 1):
            if r not in have:
                new.append(Launch(number=number, trial_id=f"{trial_id}r{r}", config=first.config,
                                  reference=first.reference, replicate_of=trial_id, replicate=r))
                number += 1
    return reruns + new


class ReplicateSearch(RecordingSearcher):
    """Hands Ray a fixed list of replicate launches, journaling each before Ray sees it; each result is recorded
    (:class:`~search.recording.RecordingSearcher`), never told to Optuna."""

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
                    "reference": launch.reference, "replicate": launch.replicate}
        return Searcher.FINISHED
