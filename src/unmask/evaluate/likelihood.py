"""Likelihood bounds on a data set: NELBO per token, perplexity bound, bits per character."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from unmask.config import ObjectiveConfig
from unmask.data.batching import collate
from unmask.denoiser import Denoiser
from unmask.distributed import Parallel
from unmask.losses import sequence_losses
from unmask.precision import autocast


@dataclass
class LikelihoodResult:
    """Per-token figures with the standard error of the per-token NELBO (nats)."""

    nelbo_per_token: float
    stderr: float
    tokens: int
    sequences: int
    num_t: int
    discrete_steps: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nelbo_per_token)

    @property
    def bits_per_token(self) -> float:
        return self.nelbo_per_token / math.log(2)

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "perplexity": self.perplexity, "bits_per_token": self.bits_per_token}


def summarize(losses: Tensor, tokens: Tensor, *, num_t: int, discrete_steps: int) -> LikelihoodResult:
    """Ratio estimate sum(loss) / sum(tokens) and its delta-method standard error over sequences."""
    losses, tokens = losses.double(), tokens.double()
    per_token = float(losses.sum() / tokens.sum())
    n = len(losses)
    residual = losses - per_token * tokens
    stderr = float(residual.std() / (tokens.mean() * math.sqrt(n))) if n > 1 else float("nan")
    return LikelihoodResult(per_token, stderr, int(tokens.sum()), n, num_t, discrete_steps)


@torch.no_grad()
def sequence_nelbos(
    model: Denoiser,
    batches: Iterable[dict[str, Tensor]],
    objective: ObjectiveConfig,
    mask_id: int,
    *,
    num_t: int = 1,
    discrete_steps: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> tuple[Tensor, Tensor]:
    """Per-sequence losses and token counts over every batch (seeded: the same call gives the same numbers).

    The noise of batch k comes from a generator seeded with (seed, k) alone, so that any process
    can evaluate any batch and get the numbers one process gets (see :func:`evaluate_dataset`).
    """
    device = torch.device(device)
    losses, tokens = [], []
    for index, batch in enumerate(batches):
        loss, count = _batch_losses(model, batch, index, objective, mask_id, num_t=num_t,
                                    discrete_steps=discrete_steps, seed=seed, device=device, precision=precision)
        losses.append(loss)
        tokens.append(count)
    if not losses:
        raise ValueError("no evaluation data: the split is empty")
    return torch.cat(losses), torch.cat(tokens)


def batch_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The noise generator of evaluation batch ``index``."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + index + 1) % (2**63))


def _batch_losses(model: Denoiser, batch: dict[str, Tensor], index: int, objective: ObjectiveConfig, mask_id: int, *,
                  num_t: int, discrete_steps: int | None, seed: int, device: torch.device,
                  precision: str) -> tuple[Tensor, Tensor]:
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast(precision, device):
        loss, count = sequence_losses(model, batch, objective, mask_id, generator=batch_generator(seed, index, device),
                                      num_t=num_t, discrete_steps=discrete_steps)
    return loss.float().cpu(), count.cpu()


def evaluate_likelihood(
    model: Denoiser,
    batches: Iterable[dict[str, Tensor]],
    objective: ObjectiveConfig,
    mask_id: int,
    *,
    num_t: int = 1,
    discrete_steps: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> LikelihoodResult:
    """The NELBO (or AR NLL) per token over ``batches`` with ``num_t`` time samples per sequence."""
    losses, tokens = sequence_nelbos(
        model, batches, objective, mask_id,
        num_t=num_t, discrete_steps=discrete_steps, seed=seed, device=device, precision=precision,
    )
    steps = objective.discrete_steps if discrete_steps is None else discrete_steps
    return summarize(losses, tokens, num_t=num_t, discrete_steps=0 if objective.name == "ar" else steps)


@torch.no_grad()
def evaluate_dataset(
    model: Denoiser,
    dataset: Dataset,
    objective: ObjectiveConfig,
    mask_id: int,
    *,
    batch_size: int,
    max_batches: int | None = None,
    num_t: int = 1,
    discrete_steps: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    parallel: Parallel | None = None,
) -> LikelihoodResult:
    """:func:`evaluate_likelihood` over ``dataset`` in order (batches of ``batch_size``), split across processes.

    Batch k goes to rank k mod world size; each rank fills its sequences' losses and token
    counts into vectors over the whole set, and summing those over ranks gives every rank the
    vectors a single process computes, so the result equals the single-process one. With a
    sharded model (FSDP) every forward pass is collective: ranks without a batch left repeat
    one and discard the result, so that all ranks take part in the same number of passes.
    """
    parallel = parallel or Parallel(device=torch.device(device))
    device = torch.device(device)
    size = len(dataset)
    num_batches = math.ceil(size / batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    if num_batches == 0:
        raise ValueError("no evaluation data: the split is empty")
    num_sequences = min(size, num_batches * batch_size)
    losses = torch.zeros(num_sequences)
    tokens = torch.zeros(num_sequences, dtype=torch.long)
    mine = range(parallel.rank, num_batches, parallel.world_size)
    rounds = math.ceil(num_batches / parallel.world_size) if parallel.sharded else len(mine)
    for round_index in range(rounds):
        index = parallel.rank + round_index * parallel.world_size
        own = index < num_batches
        chosen = index if own else 0
        start, end = chosen * batch_size, min(size, (chosen + 1) * batch_size)
        loss, count = _batch_losses(model, collate(dataset, range(start, end)), chosen, objective, mask_id,
                                    num_t=num_t, discrete_steps=discrete_steps, seed=seed, device=device,
                                    precision=precision)
        if own:
            losses[start:end], tokens[start:end] = loss, count
    losses, tokens = parallel.reduce_sum(losses), parallel.reduce_sum(tokens)
    steps = objective.discrete_steps if discrete_steps is None else discrete_steps
    return summarize(losses, tokens, num_t=num_t, discrete_steps=0 if objective.name == "ar" else steps)
