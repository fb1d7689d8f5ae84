"""Likelihood bounds on a data set: NELBO per token, perplexity bound, bits per character."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from unmask.bounds.blocks import block_losses
from unmask.config import ObjectiveConfig
from unmask.data.batching import collate
from unmask.denoiser import Denoiser
from unmask.distributed.parallelize import is_sharded
from unmask.distributed.process import Parallel
from unmask.kinds import get_kind, sequence_losses
from unmask.runtime import autocast, seeded_generator


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

    @classmethod
    def from_dict(cls, values: dict[str, float | int]) -> LikelihoodResult:
        """The result :meth:`to_dict` wrote (other keys beside it are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def summarize(losses: Tensor, tokens: Tensor, *, num_t: int, discrete_steps: int) -> LikelihoodResult:
    """Ratio estimate sum(loss) / sum(tokens) and its delta-method standard error over sequences."""
    losses, tokens = losses.double(), tokens.double()
    per_token = float(losses.sum() / tokens.sum())
    n = len(losses)
    residual = losses - per_token * tokens
    stderr = float(residual.std() / (tokens.mean() * math.sqrt(n))) if n > 1 else float("nan")
    return LikelihoodResult(per_token, stderr, int(tokens.sum()), n, num_t, discrete_steps)


def _batches(dataset: Dataset, batch_size: int, max_batches: int | None) -> int:
    num_batches = math.ceil(len(dataset) / batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    if num_batches == 0:
        raise ValueError("no evaluation data: the split is empty")
    return num_batches


def _batch_losses(model: Denoiser, batch: dict[str, Tensor], index: int, objective: ObjectiveConfig, mask_id: int, *,
                  num_t: int, discrete_steps: int | None, seed: int, device: torch.device,
                  precision: str) -> tuple[Tensor, Tensor]:
    """Losses and token counts of evaluation batch ``index``; its noise depends on (seed, index) alone,
    so that any process can evaluate any batch and get the numbers one process gets."""
    batch = {k: v.to(device) for k, v in batch.items()}
    generator = seeded_generator(device, seed, "eval", index)
    with autocast(precision, device):
        loss, count = sequence_losses(model, batch, objective, mask_id, generator=generator, num_t=num_t,
                                      discrete_steps=discrete_steps)
    return loss.float().cpu(), count.cpu()


@torch.no_grad()
def dataset_losses(
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
) -> tuple[Tensor, Tensor]:
    """The NELBO (or AR NLL) of every sequence of ``dataset`` in order (batches of ``batch_size``) and the
    tokens it counts, [N] each, with ``num_t`` time samples per sequence, split across processes.

    Batch k goes to rank k mod world size; each rank fills its sequences' losses and token
    counts into vectors over the whole set, and summing those over ranks gives every rank the
    vectors a single process computes, so the result equals the single-process one. With a
    sharded model (FSDP) every forward pass is collective: ranks without a batch left repeat
    one and discard the result, so that all ranks take part in the same number of passes.
    """
    parallel = parallel or Parallel(device=torch.device(device))
    device = torch.device(device)
    size = len(dataset)
    num_batches = _batches(dataset, batch_size, max_batches)
    num_sequences = min(size, num_batches * batch_size)
    losses = torch.zeros(num_sequences)
    tokens = torch.zeros(num_sequences, dtype=torch.long)
    mine = range(parallel.rank, num_batches, parallel.world_size)
    rounds = math.ceil(num_batches / parallel.world_size) if is_sharded(model) else len(mine)
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
    return parallel.reduce_sum(losses), parallel.reduce_sum(tokens)


def evaluate_dataset(model: Denoiser, dataset: Dataset, objective: ObjectiveConfig, mask_id: int, *,
                     discrete_steps: int | None = None, num_t: int = 1, **options: Any) -> LikelihoodResult:
    """The NELBO (or AR NLL) per token over ``dataset``, with its standard error: :func:`dataset_losses`
    (the same ``options``: ``batch_size``, ``max_batches``, ``seed``, ``device``, ``precision``,
    ``parallel``) summed by :func:`summarize`."""
    losses, tokens = dataset_losses(model, dataset, objective, mask_id, discrete_steps=discrete_steps, num_t=num_t,
                                    **options)
    steps = objective.time_steps if discrete_steps is None else discrete_steps
    return summarize(losses, tokens, num_t=num_t, discrete_steps=steps if get_kind(objective.name).discrete_time else 0)


@torch.no_grad()
def block_loss_variance(
    model: Denoiser,
    dataset: Dataset,
    objective: ObjectiveConfig,
    mask_id: int,
    *,
    ranges: Sequence[Sequence[float]],
    batch_size: int,
    max_batches: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[dict[str, float | list[float] | int]]:
    """For each masking-rate range [beta, omega], the variance (and mean) over every block of
    ``dataset`` of the bd3lm loss per token of the block, with masking rates drawn from that range:
    the paper's criterion for a clipped schedule (the lower the variance, the steadier the gradient).

    Every range sees the same batches and the same random draws (mapped into its own range), so
    the figures differ by the range alone. One process computes them.
    """
    device = torch.device(device)
    num_batches = _batches(dataset, batch_size, max_batches)
    results = []
    for low, high in ranges:
        values = []
        for index in range(num_batches):
            start, end = index * batch_size, min(len(dataset), (index + 1) * batch_size)
            batch = {k: v.to(device) for k, v in collate(dataset, range(start, end)).items()}
            loss_mask = batch["loss_mask"]
            generator = seeded_generator(device, seed, "block-variance", index)
            with autocast(precision, device):
                losses = block_losses(model, batch["input_ids"], block_size=objective.block_size,
                                      schedule=objective.schedule, mask_id=mask_id, antithetic=objective.antithetic,
                                      mask_rate_range=(low, high), generator=generator,
                                      loss_mask=None if bool(loss_mask.all()) else loss_mask,
                                      attention_mask=batch.get("attention_mask"))
            values.append(losses.flatten().double().cpu() / objective.block_size)
        per_block = torch.cat(values)
        results.append({"mask_rate_range": [float(low), float(high)], "variance": float(per_block.var()),
                        "mean": float(per_block.mean()), "blocks": len(per_block)})
    return results
