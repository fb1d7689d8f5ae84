"""batch_iterator and eval_batches: determinism, exact resume, rank sharding, coverage."""

from itertools import islice

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.data import DataError, batch_iterator, eval_batches


class Numbered(torch.utils.data.Dataset):
    """Item i is {"input_ids": [i, i], "loss_mask": [True, False]}."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return {"input_ids": torch.tensor([index, index]), "loss_mask": torch.tensor([True, False])}


def ids(batch):
    return batch["input_ids"][:, 0].tolist()


def take(dataset, steps, **kwargs):
    return [ids(batch) for batch in islice(batch_iterator(dataset, **kwargs), steps)]


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), batch_size=st.integers(1, 6), world_size=st.integers(1, 4),
       seed=st.integers(0, 2**40), resume=st.integers(0, 30), shuffle=st.booleans())
def test_resume_and_ranks(size, batch_size, world_size, seed, resume, shuffle):
    dataset = Numbered(size)
    drop_last = size >= batch_size * world_size
    common = dict(batch_size=batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
    steps = resume + 5
    per_rank = [take(dataset, steps, rank=r, world_size=world_size, **common)
                for r in range(world_size)]
    # Resuming at step k gives exactly the batches the uninterrupted run had from step k on.
    assert take(dataset, 5, start_step=resume, rank=0, world_size=world_size, **common) == \
        per_rank[0][resume:]
    # Ranks take disjoint contiguous slices that together form the global batch.
    global_batches = take(dataset, steps, **{**common, "batch_size": batch_size * world_size})
    for step in range(steps):
        assert sum((per_rank[r][step] for r in range(world_size)), []) == global_batches[step]
        assert len(global_batches[step]) == batch_size * world_size


def test_same_seed_same_batches_and_epochs_are_permutations():
    dataset = Numbered(10)
    a = take(dataset, 12, batch_size=5, seed=3)
    assert a == take(dataset, 12, batch_size=5, seed=3)
    assert a != take(dataset, 12, batch_size=5, seed=4)
    for epoch in range(6):
        assert sorted(a[2 * epoch] + a[2 * epoch + 1]) == list(range(10))
    assert a[0] + a[1] != a[2] + a[3]  # each epoch has its own order
    in_order = take(dataset, 2, batch_size=5, seed=0, shuffle=False)
    assert in_order == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_drop_last_false_runs_across_epochs():
    dataset = Numbered(7)
    batches = take(dataset, 7, batch_size=3, seed=1, drop_last=False)
    flat = sum(batches, [])
    for epoch in range(3):
        assert sorted(flat[7 * epoch:7 * epoch + 7]) == list(range(7))
    with pytest.raises(DataError, match="fewer than one global batch"):
        next(batch_iterator(dataset, batch_size=4, seed=0, world_size=2))


def test_batches_are_stacked_dicts():
    batch = next(batch_iterator(Numbered(8), batch_size=4, seed=0))
    assert batch["input_ids"].shape == (4, 2) and batch["loss_mask"].dtype == torch.bool


@pytest.mark.parametrize("size,batch_size,world_size", [(10, 3, 1), (10, 3, 3), (2, 4, 3)])
def test_eval_batches_cover_everything_once(size, batch_size, world_size):
    dataset = Numbered(size)
    seen = []
    for rank in range(world_size):
        for batch in eval_batches(dataset, batch_size, rank=rank, world_size=world_size):
            assert 1 <= len(ids(batch)) <= batch_size
            assert all(i % world_size == rank for i in ids(batch))
            seen += ids(batch)
    assert sorted(seen) == list(range(size))
    assert ids(next(eval_batches(dataset, batch_size))) == list(range(min(batch_size, size)))


def test_invalid_arguments():
    with pytest.raises(DataError, match="rank=2"):
        next(batch_iterator(Numbered(8), batch_size=2, seed=0, rank=2, world_size=2))
    with pytest.raises(DataError, match="empty"):
        next(batch_iterator(Numbered(0), batch_size=2, seed=0))
    with pytest.raises(DataError, match="batch_size=0"):
        next(eval_batches(Numbered(4), 0))
