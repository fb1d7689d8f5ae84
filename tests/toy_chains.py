"""Exact sampling distributions of the toy distribution's samplers (tests/toy.py), as Markov chains over every
state: what a few-step student must come close to, computed without drawing a sample.

- :func:`masked_chain`: MDLM's ancestral sampler (paper eq. 7) over the (vocab + 1)^length partially masked
  sequences, from all MASK to the clean ones, with T equal steps of the log-linear schedule.
- :func:`uniform_chain`: the uniform-state ancestral sampler (:class:`unmask.sampling.uniform.UniformRun`)
  over the vocab^length sequences, from the uniform distribution.

Each step's transition factorises over positions given the current state, so its matrix is the product over
positions of each position's step probabilities.
"""

from __future__ import annotations

import itertools

import torch
from toy import ToyDistribution

from unmask.bounds.uniform import uniform_posterior
from unmask.schedules import Schedule


class Table(torch.nn.Module):
    """A denoiser that is a table of logits: [states, L, V] by the index of x_t (``masked`` states include
    MASK), or [buckets, states, L, V] by time bucket round(t * buckets) as well."""

    def __init__(self, logits: torch.Tensor, base: int, *, timed: bool = False) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())
        self.base, self.timed = base, timed

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        index = (x.long() * self.base ** torch.arange(x.shape[1] - 1, -1, -1)).sum(-1)
        if not self.timed:
            return self.logits[index]
        bucket = (t.double() * (self.logits.shape[0] - 1)).round().long()
        return self.logits[bucket, index]


def masked_states(dist: ToyDistribution) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(dist.vocab + 1), repeat=dist.length)))


def masked_chain(denoiser, dist: ToyDistribution, schedule: Schedule, steps: int) -> torch.Tensor:
    """P(clean sequence) [vocab^length] after ``steps`` ancestral steps from all MASK (in dist.sequences' order)."""
    states, mask = masked_states(dist), dist.mask_id
    with torch.no_grad():
        logits = denoiser(states, torch.zeros(len(states)))
    q = torch.softmax(logits.double().masked_fill(torch.arange(dist.vocab + 1) == mask, float("-inf")), -1)
    q_next = torch.stack([q[:, i, :][:, states[:, i]] for i in range(dist.length)], -1)  # [x, y, i]: q_i(y_i | x)
    was, will = (states[:, None, :] == mask), (states[None, :, :] == mask)
    same = (states[:, None, :] == states[None, :, :]).double()
    probability = torch.zeros(len(states), dtype=torch.float64)
    probability[-1] = 1.0  # all MASK is the last state
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(grid[:-1], grid[1:]):
        p = float(schedule.unmask_probability(t, s))
        step = torch.where(was, torch.where(will, 1 - p, p * q_next), same).prod(-1)
        probability = probability @ step
    return probability[~(states == mask).any(-1)]


def uniform_chain(denoiser, dist: ToyDistribution, schedule: Schedule, steps: int) -> torch.Tensor:
    """P(sequence) [vocab^length] after ``steps`` uniform-state ancestral steps from uniform noise."""
    states, mask = dist.sequences, dist.mask_id
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    alphas = schedule.alpha(grid)
    alphas[-1] = 1.0  # as UniformRun: the last step reaches the clean data
    probability = torch.full((len(states),), 1.0 / len(states), dtype=torch.float64)
    for k in range(steps):
        with torch.no_grad():
            logits = denoiser(states, grid[k].float().expand(len(states)))
        x_theta = torch.softmax(logits.double().masked_fill(torch.arange(dist.vocab + 1) == mask, float("-inf")), -1)
        posterior = uniform_posterior(x_theta, states, alphas[k], alphas[k + 1], mask_id=mask)
        step = torch.stack([posterior[:, i, :][:, states[:, i]] for i in range(dist.length)], -1).prod(-1)
        probability = probability @ step
    return probability


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum())
