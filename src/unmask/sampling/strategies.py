"""Which positions unmask (and remask) at a step: the strategies of the sampling loop.

- Random order (the paper's ancestral sampler, exact): each masked position unmasks with the
  schedule's probability, decided before the network is called.
- Ordered decoding (LLaDA "low confidence", Dream "margin"/"entropy"): the network scores every
  masked position; the step unmasks as many positions as the schedule expects, the most certain
  first. Not exact, often better at few steps.
- Threshold parallel decoding (Fast-dLLM): every masked position whose confidence exceeds tau
  unmasks, and at least what the schedule asks for (one per step when steps = length).
- Remasking (ReMDM, Wang et al. 2025, arXiv 2503.00307): a decoded token is remasked with
  probability sigma_t <= (1 - alpha_s) / alpha_t, and a masked one unmasks with probability
  (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t), so later steps can fix earlier mistakes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unmask.errors import OptionError

ORDERS = ("random", "confidence", "margin", "entropy")
REMASKING = ("cap", "rescale", "conf", "loop")


def position_scores(probs: Tensor, order: str) -> Tensor:
    """Scores [N] of masked positions from their probabilities [N, V]; higher unmasks first."""
    if order == "confidence":
        return probs.max(-1).values
    if order == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if order == "entropy":
        return (probs * probs.clamp_min(1e-300).log()).sum(-1)  # minus the entropy
    raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")


def top_per_row(scores: Tensor, counts: Tensor) -> Tensor:
    """Bool [B, L]: the ``counts[b]`` highest-scoring positions of each row (scores -inf elsewhere)."""
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return (ranks < counts.unsqueeze(1)) & torch.isfinite(scores)


def expected_counts(masked: Tensor, p_unmask: Tensor) -> Tensor:
    """Positions to unmask per row for ordered decoding: round(n * p), at least one while p > 0."""
    n = masked.sum(1)
    counts = torch.round(n.double() * p_unmask).long()
    at_least_one = (n > 0) & (p_unmask > 0)
    return torch.where(at_least_one, counts.clamp(min=1), counts).minimum(n)


class SamplingError(OptionError):
    """Sampling options that cannot be used together or are out of range; the message names the fix."""


@dataclass(frozen=True)
class Remasking:
    """ReMDM remasking. ``eta`` is the cap (cap, conf), the fraction of the maximum (rescale) or the
    constant rate inside the loop window [t_off, t_on] (loop), where alpha is held still."""

    strategy: str = "cap"
    eta: float = 0.02
    t_on: float = 0.55
    t_off: float = 0.05

    def __post_init__(self) -> None:
        if self.strategy not in REMASKING:
            raise SamplingError(f"unknown {{0}} strategy {self.strategy!r}; choose one of {', '.join(REMASKING)}",
                                "remask")
        if not 0 <= self.eta <= 1:
            raise SamplingError(f"{{0}} (the remasking rate) must be in [0, 1], got {self.eta}", "eta")
        if not 0 < self.t_off < self.t_on < 1:
            raise SamplingError("remasking needs 0 < t_off < t_on < 1")

    def alpha(self, alpha_of_t, t: Tensor) -> Tensor:
        """The schedule as the loop strategy runs it: paused in [t_off, t_on], squeezed below t_off."""
        if self.strategy != "loop":
            return alpha_of_t(t)
        paused = alpha_of_t(torch.as_tensor(self.t_on, dtype=t.dtype))
        below = 1 - (1 - paused) * t / self.t_off
        return torch.where(t >= self.t_on, alpha_of_t(t), torch.where(t >= self.t_off, paused, below))

    def sigma(self, alpha_t: Tensor, alpha_s: Tensor, t: Tensor) -> Tensor:
        """Remasking probability sigma_t, within its bound min(1, (1 - alpha_s) / alpha_t)."""
        bound = ((1 - alpha_s) / alpha_t.clamp_min(1e-12)).clamp(0.0, 1.0)
        if self.strategy == "rescale":
            return self.eta * bound
        if self.strategy == "loop":
            inside = (t <= self.t_on) & (t > self.t_off)
            return torch.where(inside, torch.minimum(torch.full_like(bound, self.eta), bound), 0.0)
        return torch.minimum(torch.full_like(bound, self.eta), bound)

    def per_token(self, sigma: Tensor, decoded: Tensor, confidence: Tensor) -> Tensor:
        """Remasking probability of each decoded position [B, L]; ReMDM-conf favours unsure tokens."""
        if self.strategy != "conf":
            return torch.where(decoded, sigma, 0.0)
        weights = torch.softmax((-confidence).masked_fill(~decoded, float("-inf")), dim=1).nan_to_num(0.0)
        return (weights * sigma).clamp(max=1.0)
