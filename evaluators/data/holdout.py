"""The deterministic, stratified train/val hold-out that every dataset shares.

The val split is held out of the official training data with a fixed seed (:data:`SPLIT_SEED`, independent of any
trial seed, stratified per class), so every trial sees the same split; each split is stored in a class-interleaved
order, so any prefix (a fidelity's ``train_images`` / ``val_images``) is class-balanced.
"""

from __future__ import annotations

import torch

__all__ = ["SPLIT_SEED", "holdout", "split_sizes"]

SPLIT_SEED = 0  # fixed: the train/val split must not depend on the trial seed


def holdout(labels: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val), stratified per class, seeded with SPLIT_SEED; each in class-interleaved order."""
    n = len(labels)
    if n == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(n, generator=generator)
    _, inverse, counts = torch.unique(labels[perm], return_inverse=True, return_counts=True)
    # rank of each permuted sample within its class, in permuted order
    by_class = torch.sort(inverse, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts[inverse[by_class]]

    n_val = split_sizes(n, val_fraction)[1]
    # largest remainder: per-class counts summing to exactly n_val
    quota = counts.double() * (n_val / n)
    per_class = quota.floor().long()
    remainder = n_val - int(per_class.sum())
    if remainder > 0:
        per_class[torch.argsort(quota - per_class, descending=True, stable=True)[:remainder]] += 1

    is_val = rank < per_class[inverse]
    val_rank, train_rank = rank.double(), (rank - per_class[inverse]).double()
    val_size, train_size = per_class.double()[inverse], (counts - per_class).double()[inverse]

    def interleaved(mask: torch.Tensor, r: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        # ordering by progress through each class makes every prefix proportionally stratified
        idx = mask.nonzero().squeeze(1)
        key = (r[idx] + 0.5) / size[idx]
        return perm[idx[torch.sort(key, stable=True).indices]]

    return interleaved(~is_val, train_rank, train_size), interleaved(is_val, val_rank, val_size)


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) sizes of a hold-out: at least one val image when val_fraction > 0, at least one train."""
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    return n - n_val, n_val
