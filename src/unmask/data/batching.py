"""Deterministic, resumable batches for training; ordered batches for evaluation.

Training batches come from an endless sequence of epochs, each a permutation of the dataset
seeded by (seed, epoch). The batch of global step k is a pure function of
(seed, k, rank, world_size), so a run resumed at step k sees exactly the batches the
uninterrupted run would have seen, with no iterator state to save.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from unmask.runtime import seeded_generator

from .errors import DataError

Batch = dict[str, torch.Tensor]


def batch_iterator(dataset: Dataset, *, batch_size: int, seed: int, start_step: int = 0,
                   rank: int = 0, world_size: int = 1, shuffle: bool = True,
                   drop_last: bool = True) -> Iterator[Batch]:
    """Endless stacked batches of ``batch_size`` items for this rank, from step ``start_step``.

    ``batch_size`` is per rank: global step k takes the k-th global batch of
    ``batch_size * world_size`` items and rank r gets its r-th contiguous slice, so ranks are
    disjoint and together cover the global batch. With ``drop_last`` each epoch is cut into
    whole global batches and its remainder skipped; without it, batches run on across epoch
    boundaries, so every item is used and every batch is still full.
    """
    size = len(dataset)
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_step < 0:
        raise DataError(f"invalid batching: batch_size={batch_size}, rank={rank}, "
                        f"world_size={world_size}, start_step={start_step}")
    global_batch = batch_size * world_size
    if size == 0:
        raise DataError("the dataset is empty; there is nothing to batch")
    steps_per_epoch = size // global_batch
    if drop_last and steps_per_epoch == 0:
        raise DataError(f"the dataset has {size} blocks, fewer than one global batch of "
                        f"{global_batch}; use a smaller batch or drop_last=False")
    return _training_batches(dataset, batch_size, seed, start_step, rank, world_size, shuffle,
                             drop_last)


def _training_batches(dataset: Dataset, batch_size: int, seed: int, step: int, rank: int,
                      world_size: int, shuffle: bool, drop_last: bool) -> Iterator[Batch]:
    size = len(dataset)
    global_batch = batch_size * world_size
    steps_per_epoch = size // global_batch
    orders: dict[int, torch.Tensor] = {}

    def order(epoch: int) -> torch.Tensor:
        if epoch not in orders:
            for old in [e for e in orders if e < epoch - 1]:
                del orders[old]  # keep memory bounded: steps move forward through epochs
            orders[epoch] = epoch_order(size, seed, epoch, shuffle)
        return orders[epoch]

    while True:
        if drop_last:
            epoch, index = divmod(step, steps_per_epoch)
            first = index * global_batch + rank * batch_size
            mine = order(epoch)[first:first + batch_size]
        else:
            positions = torch.arange(batch_size) + step * global_batch + rank * batch_size
            epochs, offsets = positions // size, positions % size
            mine = torch.empty(batch_size, dtype=torch.long)
            for epoch in epochs.unique().tolist():
                chosen = epochs == epoch
                mine[chosen] = order(epoch)[offsets[chosen]]
        yield collate(dataset, mine.tolist())
        step += 1


def eval_batches(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1
                 ) -> Iterator[Batch]:
    """Every item once, in order, in batches of up to ``batch_size``.

    Rank r takes items r, r + world_size, r + 2 * world_size, ...: shares are disjoint, cover
    the dataset, and differ in size by at most one item (so sum losses and counts across ranks
    rather than averaging per-rank means).
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"invalid batching: batch_size={batch_size}, rank={rank}, "
                        f"world_size={world_size}")
    indices = range(rank, len(dataset), world_size)
    return (collate(dataset, indices[start:start + batch_size])
            for start in range(0, len(indices), batch_size))


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The item order of one epoch: a permutation seeded by (seed, epoch), or 0..size-1."""
    if not shuffle:
        return torch.arange(size)
    return torch.randperm(size, generator=seeded_generator("cpu", seed, "epoch", epoch))


def collate(dataset: Dataset, indices: Sequence[int]) -> Batch:
    """Stack the items at ``indices`` key by key."""
    return stack_items([dataset[index] for index in indices])


def stack_items(items: Sequence[dict[str, torch.Tensor]]) -> Batch:
    """One batch from a list of items with the same keys."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def corpus_entropy(dataset: Dataset) -> float:
    """Entropy in nats of the unigram distribution of the tokens the loss mask counts.

    A model's per-token NELBO should end up well below this; a model stuck at it has learned
    only token frequencies.
    """
    counts = torch.zeros(0, dtype=torch.long)
    for batch in eval_batches(dataset, 256):
        batch_counts = torch.bincount(batch["input_ids"][batch["loss_mask"]])
        if len(batch_counts) > len(counts):
            counts = torch.cat([counts, counts.new_zeros(len(batch_counts) - len(counts))])
        counts[:len(batch_counts)] += batch_counts
    total = int(counts.sum())
    if total == 0:
        raise DataError("the dataset has no tokens counted by its loss mask")
    probabilities = counts[counts > 0].double() / total
    # max() turns the -0.0 of a single-token distribution into 0.0.
    return max(-(probabilities * probabilities.log()).sum().item(), 0.0)
