"""What a proxy trial can be scored by: the names of the scores every epoch's result carries.

A proxy's job is to *rank* configs the way full training would. Its final validation accuracy is the obvious
score but not the least noisy one: on a few hundred validation images it moves by a point or more between seeds.
A loss keeps the information that accuracy rounds away (how sure the model is, not just whether it is right),
and the training-speed estimates (TSE, TSE-EMA: the summed training losses, Ru et al., NeurIPS 2021) need no
validation at all. Every score is a field of :class:`~evaluators.proxy.EpochResult`, so the same name serves the
final ranking and the early-stopping rungs. ``bench/proxy_fidelity.py`` measures which one ranks best; a preset's
``score`` setting says which one a search optimises. Which way each is better is the results' business
(``results.pareto.OBJECTIVE_DIRECTIONS``): accuracy up, the losses down.
"""

from __future__ import annotations

__all__ = ["SCORES", "verification_score"]

SCORES: tuple[str, ...] = (
    "accuracy",  # final validation accuracy
    "val_loss",  # mean validation cross-entropy
    "loss",  # mean training loss of the last epoch (TSE over the last epoch, per step)
    "tse",  # sum of every step's training loss so far
    "tse_ema",  # the same, older steps discounted (TSE-EMA)
)




def verification_score(score: str) -> str:
    """What ranks the finalists at the verification fidelity when the proxy ranks by ``score``: the validation loss
    in place of a training-side score (the training loss, TSE, TSE-EMA: measures of how fast a short training fits,
    chosen for the proxy because its few hundred validation images are noisy), a validation score as it is. At 3x
    the proxy's images (1,500 validation images), against one long seed on 20 configs, the validation loss ranked
    resnet50 at Spearman +0.26 and mobilenetv2_100 at +0.73, the training loss at +0.19 and +0.68: the point
    estimates favour it, the intervals (about +-0.4 and +-0.25) do not tell the two apart (``bench/proxy_fidelity.py``,
    docs/proxy.md#verification)."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    return score if score in ("accuracy", "val_loss") else "val_loss"
