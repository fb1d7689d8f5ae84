"""Likelihood bounds on a data set: NELBO per token, perplexity bound, bits per character."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from unmask.config import ObjectiveConfig
from unmask.denoiser import Denoiser
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
    """Per-sequence losses and token counts over every batch (seeded: the same call gives the same numbers)."""
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    losses, tokens = [], []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
            loss, count = sequence_losses(
                model, batch, objective, mask_id, generator=generator, num_t=num_t, discrete_steps=discrete_steps
            )
        losses.append(loss.float().cpu())
        tokens.append(count.cpu())
    if not losses:
        raise ValueError("no evaluation data: the split is empty")
    return torch.cat(losses), torch.cat(tokens)


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
