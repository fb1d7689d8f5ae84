"""Conditional bounds: -log p(continuation | context) of a row whose context stays clean (``docs/math.md`` §9).

A row x0 [L] holds three kinds of positions:

- scored (``scored`` True): the continuation. The forward process masks these and only these, and only
  these are scored;
- context: clean tokens anywhere else (before, after or around the continuation: a prompt, or both
  sides of an infilling), seen by the denoiser throughout and never hidden from attention;
- free: MASK in x0 itself (the rest of the model's window after the continuation), unknown throughout
  and never scored, so that they are marginalised out.

Every bound of :mod:`unmask.bounds` holds conditionally on the context: the forward process restricted
to the scored positions is the same process on a shorter sequence, and the denoiser conditions on the
context as it conditions on any unmasked token. With the exact conditionals of the data as denoiser,
each estimate here has expectation -log p(continuation | context) (tested on ``tests/toy.py``).

Each row is one Monte Carlo sample whose randomness is a :class:`RowNoise` drawn by the caller, so
that a row's estimate never depends on which rows share its batch. Estimators:

- :func:`count_bound`, for a denoiser that does not read t (and per block for block diffusion): the
  number of masked positions c is uniform on 1..n and the c positions uniform among the n scored
  ones, weighted n / c. The continuous-time NELBO integrates the masking rate m against 1/m; given
  that c of n positions are masked, the integral of C(n, c) m^c (1 - m)^(n - c) / m over [0, 1] is
  1 / c, so NELBO = sum_c (1/c) E[sum over the c masked positions of -log p] = n E_{c ~ U{1..n}}[...].
  It skips the binomial noise of the count (LLaDA, Nie et al. 2025, evaluates with it for that
  reason), has no time floor, and for one scored token is exact in one call: -log p(x | context).
- :func:`time_bound`: t uniform on [t_min, 1], each scored position masked with probability 1 - alpha_t,
  weighted w(t) (eq. 10), for a denoiser that reads t (SEDD, MDLM with time conditioning).
- :func:`discrete_bound`: the T-step bound (eq. 8) and the D3PM posterior KL without zero masking.

:func:`greedy_matches` says whether greedy decoding of the scored positions gives x0 there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unmask.bounds.blocks import block_logits
from unmask.bounds.masking import MIN_MASK_RATE, min_time, per_row_sum
from unmask.bounds.mdlm import d3pm_masked_kl
from unmask.bounds.nll import TokenLoss, masked_log_probs, masked_nll
from unmask.denoiser import Denoiser, denoise
from unmask.schedules import Schedule, get_schedule


@dataclass(frozen=True)
class RowNoise:
    """The randomness of one estimate per row: ``u`` [R] in [0, 1) places the row's sample in time (or in
    the number of masked positions); ``order`` [R, L] in [0, 1) decides which scored positions are masked
    (a position is masked when its ``order`` is below the masking rate, or among the c smallest)."""

    u: Tensor
    order: Tensor

    @classmethod
    def draw(cls, samples: int, length: int, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> RowNoise:
        """``samples`` rows of noise for one sequence of ``length``, drawn on the CPU (the same numbers on any
        device): u_k = (u + k / K) mod 1 with one shared u ~ U(0, 1), so that the K samples cover [0, 1)
        evenly (the antithetic times of ``docs/math.md`` §5), and ``order`` uniform."""
        u = torch.rand(1, generator=generator, dtype=torch.float64)
        u = (u + torch.arange(samples, dtype=torch.float64) / samples) % 1.0
        order = torch.rand(samples, length, generator=generator)
        return cls(u.to(device), order.to(device))

    @classmethod
    def cat(cls, parts: Sequence[RowNoise]) -> RowNoise:
        return cls(torch.cat([p.u for p in parts]), torch.cat([p.order for p in parts]))

    def rows(self, start: int, end: int) -> RowNoise:
        return RowNoise(self.u[start:end], self.order[start:end])


def _smallest(scored: Tensor, order: Tensor, count: Tensor) -> Tensor:
    """Bool [..., n]: the ``count`` scored positions of each row (last dimension) with the smallest ``order``."""
    key = torch.where(scored, order, 2.0)  # unscored positions sort after every scored one
    ranks = key.argsort(dim=-1).argsort(dim=-1)
    return scored & (ranks < count.unsqueeze(-1))


def count_bound(denoiser: Denoiser, x0: Tensor, scored: Tensor, noise: RowNoise, *, mask_id: int,
                schedule: Schedule | str, block_size: int | None = None, token_loss: TokenLoss = masked_nll
                ) -> Tensor:
    """One sample per row [R] of the NELBO of the scored positions given the rest, with the number of masked
    positions uniform (module docstring), in nats.

    With ``block_size`` (block diffusion) every block is a bound of its own given the clean blocks before it
    (:mod:`unmask.bounds.blocks`), with its own count c_b ~ U{1..n_b}, the blocks' draws antithetic along the
    row as the block times are. The denoiser is given the time at which the masked fraction c / n is the
    expected one (it does not read it; a time-reading one needs :func:`time_bound`).
    """
    schedule = get_schedule(schedule)
    rows, length = x0.shape
    size = length if block_size is None else block_size
    if length % size:
        raise ValueError(f"block_size {block_size} must divide the row length {length}")
    blocks = length // size
    by_block = scored.bool().view(rows, blocks, size)
    n = by_block.sum(-1)  # [R, blocks]
    v = (noise.u[:, None] + torch.arange(blocks, device=x0.device, dtype=torch.float64) / blocks) % 1.0
    count = torch.minimum((v * n).floor().long() + 1, n)  # uniform on 1..n (0 where nothing is scored)
    masked = _smallest(by_block, noise.order.view(rows, blocks, size), count).view(rows, length)
    x_t = torch.where(masked, mask_id, x0)
    fraction = count / n.clamp_min(1)
    times = schedule.time_of_alpha(1 - fraction).float()
    if block_size is None:
        logits = denoise(denoiser, x_t, times[:, 0], where=masked)
    else:
        logits = block_logits(denoiser, x_t, x0, masked, times, block_size, mask_id)
    weight = (n / count.clamp_min(1)).repeat_interleave(size, dim=1)[masked]
    return per_row_sum(weight * token_loss(logits, x0[masked], mask_id), masked)


def time_bound(denoiser: Denoiser, x0: Tensor, scored: Tensor, noise: RowNoise, *, mask_id: int,
               schedule: Schedule | str, token_loss: TokenLoss = masked_nll, carry_over: bool = True,
               min_mask_rate: float = MIN_MASK_RATE) -> Tensor:
    """One sample per row [R] of the continuous-time NELBO (eq. 10) of the scored positions given the rest:
    t = t_min + (1 - t_min) u, each scored position masked with probability 1 - alpha_t, weight
    (1 - t_min) w(t) as :func:`unmask.bounds.mdlm.nelbo` (``token_loss`` and ``carry_over`` as there)."""
    schedule = get_schedule(schedule)
    t_min = min_time(schedule, min_mask_rate)
    t = (t_min + (1 - t_min) * noise.u).float()
    masked = scored.bool() & (noise.order < schedule.one_minus_alpha(t)[:, None])
    counted = masked if carry_over else scored.bool()
    logits = denoise(denoiser, torch.where(masked, mask_id, x0), t, where=counted)
    return (1 - t_min) * schedule.loss_weight(t) * per_row_sum(token_loss(logits, x0[counted], mask_id), counted)


def discrete_bound(denoiser: Denoiser, x0: Tensor, scored: Tensor, noise: RowNoise, *, mask_id: int,
                   schedule: Schedule | str, steps: int, carry_over: bool = True, zero_masking: bool = True) -> Tensor:
    """One sample per row [R] of the T-step bound (eq. 8) of the scored positions given the rest: step
    i = floor(u T) + 1, as :func:`unmask.bounds.mdlm.nelbo_discrete` (its ablations included)."""
    schedule = get_schedule(schedule)
    step = torch.clamp((noise.u * steps).floor() + 1, max=steps)
    t, s = (step / steps).float(), ((step - 1) / steps).float()
    masked = scored.bool() & (noise.order < schedule.one_minus_alpha(t)[:, None])
    counted = masked if (carry_over or not zero_masking) else scored.bool()
    logits = denoise(denoiser, torch.where(masked, mask_id, x0), t, where=counted)
    unmask_prob = schedule.unmask_probability(t, s)
    if zero_masking:
        return steps * unmask_prob * per_row_sum(masked_nll(logits, x0[counted], mask_id), counted)
    rows = counted.nonzero()[:, 0]
    token_kl = d3pm_masked_kl(torch.log_softmax(logits.float(), dim=-1), x0[counted], mask_id,
                              schedule.alpha(t)[rows], schedule.alpha(s)[rows], unmask_prob[rows])
    return steps * per_row_sum(token_kl, counted)


def greedy_matches(denoiser: Denoiser, x0: Tensor, scored: Tensor, *, mask_id: int, schedule: Schedule | str,
                   block_size: int | None = None) -> Tensor:
    """Per row [R]: whether greedy decoding of the scored positions, the rest of x0 given, gives x0 there.

    Greedy decoding starts with every scored position masked; each call fills the most confident masked
    position (highest probability of its most likely token, MASK excluded) with that token: in the first
    block that still has one, for block diffusion. A filled token is never changed, so the row fails as
    soon as one differs from x0, and until then its filled tokens are x0's: every call sees x0 with the
    still-unfilled scored positions masked, and a failing row stops there (one call per token at most).
    """
    schedule = get_schedule(schedule)
    rows, length = x0.shape
    scored = scored.bool()
    n = scored.sum(1)
    matches = torch.ones(rows, dtype=torch.bool, device=x0.device)
    remaining = scored.clone()
    block = torch.arange(length, device=x0.device) // (block_size or length)
    while True:
        active = (matches & remaining.any(1)).nonzero()[:, 0]
        if len(active) == 0:
            return matches
        left, target = remaining[active], x0[active]
        x_t = torch.where(left, mask_id, target)
        first = torch.where(left, block, length).min(1).values
        eligible = left & (block == first[:, None])
        t = schedule.time_of_alpha(1 - left.sum(1) / n[active]).float()
        if block_size is None:
            logits = denoise(denoiser, x_t, t, where=eligible)
        else:
            times = t[:, None].expand(-1, length // block_size)
            logits = block_logits(denoiser, x_t, x_t, eligible, times, block_size, mask_id)
        confidence, token = masked_log_probs(logits, mask_id).max(-1)
        scores = torch.full(left.shape, float("-inf"), device=x0.device)
        scores[eligible] = confidence
        tokens = torch.full_like(target, -1)
        tokens[eligible] = token
        position = scores.argmax(1)
        picked = torch.arange(len(active), device=x0.device)
        matches[active] = tokens[picked, position] == target[picked, position]
        remaining[active, position] = False
