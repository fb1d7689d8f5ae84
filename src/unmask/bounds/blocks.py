"""Block diffusion (BD3-LM, Arriola et al., ICLR 2025): the NELBO of a sequence cut into blocks.

The sequence x0 of length L is cut into L / ``block_size`` blocks x^1..x^B. The model is
autoregressive across blocks and a masked diffusion within each, log p(x0) = sum_b log p(x^b | x^{<b}),
and each term is bounded by the MDLM NELBO of the block given the clean blocks before it, with a
time t_b of its own:

    NELBO(x0) = sum_b E_{t_b} E_{x_t^b ~ q(.|x^b)} [ -alpha'_{t_b} / (1 - alpha_{t_b})
                    * sum_{i in block b, x_t^i = MASK} -log p_theta(x^i | x_t^b, x^{<b}) ]

At block size L it is the MDLM NELBO. At block size 1 every block is one token, scored when
masked, and since E_t[weight * P(masked)] = alpha(t_min) - alpha(1) ~ 1 the bound's expectation is
the AR model's NLL: the time only decides whether a token is scored. The times of all blocks of all
sequences in a batch are drawn together, antithetic across blocks and sequences: each block
position's times cover [0, 1] evenly across the batch, and each sequence's across its blocks.

A denoiser with block diffusion attention (the DiT) scores every block in one forward pass over
[x_t, x0] (:mod:`unmask.models.block_attention`); any other denoiser is run once per block on
[x^{<b}, x_t^b, MASK...], the same conditional when later blocks cannot be seen or are all MASK
(:func:`block_logits`).

Clipped schedules (the paper's lower-variance training): ``mask_rate_range`` = [beta, omega]
draws the masking rates 1 - alpha_t of training from [beta, omega] instead of [0, 1]; the weight
stays the NELBO's, so the loss is the paper's (biased) estimate. Evaluation always uses the full
range, where the estimate is the NELBO. :func:`block_losses` gives the loss of every block, whose
variance under a range is what a user compares to pick one (``unmask eval --mask-rate-ranges``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unmask.bounds.masking import MIN_MASK_RATE, mask_tokens, per_row_sum, repeat_rows, sample_times, seen_rows
from unmask.bounds.nll import masked_nll
from unmask.denoiser import Denoiser, capabilities, denoise
from unmask.schedules import Schedule, get_schedule

FULL_RANGE = (0.0, 1.0)
# Masking-rate ranges `unmask eval --mask-rate-ranges` compares by default: the full range and clipped ones of
# width 0.5 (the paper picks, per block size, the range whose per-block loss has the least variance).
CANDIDATE_RANGES = ((0.0, 1.0), (0.2, 0.7), (0.3, 0.8), (0.45, 0.95), (0.5, 1.0))


def time_range(schedule: Schedule, mask_rate_range: Sequence[float] = FULL_RANGE) -> tuple[float, float]:
    """The times [t_lo, t_hi] at which the masking rate 1 - alpha_t spans ``mask_rate_range``.

    The lower end is floored at MIN_MASK_RATE, as for MDLM (:func:`unmask.bounds.masking.min_time`).
    """
    low, high = mask_rate_range
    t_lo = schedule.time_of_alpha(torch.tensor(1.0 - max(low, MIN_MASK_RATE), dtype=torch.float64))
    t_hi = 1.0 if high >= 1 else float(schedule.time_of_alpha(torch.tensor(1.0 - high, dtype=torch.float64)))
    return float(t_lo.clamp(0.0, 1.0)), t_hi


def block_losses(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    block_size: int,
    schedule: Schedule | str,
    mask_id: int,
    num_t: int = 1,
    t: Tensor | None = None,
    antithetic: bool = True,
    mask_rate_range: Sequence[float] = FULL_RANGE,
    loss_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The NELBO term of every block, [num_t, B, L / block_size] in nats (see the module docstring).

    ``t`` [B, L / block_size] replaces the random draw of the times. ``loss_mask`` [B, L] marks the
    tokens that count; the others are never masked and never scored. ``attention_mask`` [B, L] marks the
    tokens seen, by default the counted ones (padding hidden); a prompt is seen but not counted.
    """
    batch, length = x0.shape
    if block_size < 1 or length % block_size:
        raise ValueError(f"block_size {block_size} must divide the sequence length {length}")
    num_blocks = length // block_size
    schedule = get_schedule(schedule)
    t_min = 0.0 if t is not None else time_range(schedule)[0]  # the NELBO's interval: [t_min, 1]
    if t is None:
        t_lo, t_hi = time_range(schedule, mask_rate_range)
        times = sample_times(num_t * batch, blocks=num_blocks, antithetic=antithetic, t_min=t_lo, t_max=t_hi,
                             generator=generator, device=x0.device)
    else:
        if t.shape != (batch, num_blocks):
            raise ValueError(f"t must have shape {(batch, num_blocks)} (a time per block), got {tuple(t.shape)}")
        num_t, times = 1, t.to(x0.device, torch.float32)
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    x0_rep, keep_rep = repeat_rows(x0, num_t), repeat_rows(keep, num_t)
    rates = schedule.one_minus_alpha(times).repeat_interleave(block_size, dim=1)
    x_t, masked = mask_tokens(x0_rep, rates, mask_id, keep_rep, generator)
    padding = seen_rows(keep, attention_mask, num_t)

    logits = block_logits(denoiser, x_t, x0_rep, masked, times, block_size, mask_id, padding=padding)
    token_nll = masked_nll(logits, x0_rep[masked], mask_id)
    # Logits come row-major over [R, L], which is row-major over [R * blocks, block]: sums per block.
    per_block = per_row_sum(token_nll, masked.view(-1, block_size)).view(-1, num_blocks)
    # Times are uniform on [t_min, 1] for the NELBO: the interval's length turns the mean into the integral.
    return ((1 - t_min) * schedule.loss_weight(times) * per_block).view(num_t, batch, num_blocks)


def block_logits(denoiser: Denoiser, x_t: Tensor, x0: Tensor, where: Tensor, times: Tensor, block_size: int,
                 mask_id: int, *, padding: Tensor | None = None) -> Tensor:
    """Logits [N, V] at the ``where`` [R, L] positions (row-major) of the noisy rows ``x_t``, each block seeing
    itself and the clean blocks of ``x0`` before it (``times`` [R, blocks]: a time per block).

    A denoiser with block diffusion attention (the DiT) computes every block in one pass over [x_t, x0];
    it takes no time (block diffusion has no time conditioning). Any other denoiser is run once per block on
    [x0^{<b}, x_t^b, MASK...], the same conditional when later blocks cannot be seen or are all MASK.
    """
    if capabilities(denoiser).block_diffusion:
        return denoise(denoiser, x_t, torch.zeros_like(times[:, 0]), where=where, attention_mask=padding,
                       block_size=block_size, x0=x0)
    length = x0.shape[1]
    block = torch.arange(length, device=x0.device) // block_size
    which = torch.arange(length // block_size, device=x0.device)[:, None]
    before, current = block < which, block == which  # [blocks, L]
    inputs = torch.where(before, x0[:, None], torch.where(current, x_t[:, None], mask_id)).flatten(0, 1)
    # Block b's positions in row r's call come in the order of [R, L]: the logits keep that order.
    scored = (where[:, None] & current).flatten(0, 1)
    attention_mask = None if padding is None else padding.repeat_interleave(len(which), dim=0)
    return denoise(denoiser, inputs, times.reshape(-1), where=scored, attention_mask=attention_mask)


def bd3lm_nelbo(denoiser: Denoiser, x0: Tensor, **kwargs) -> Tensor:
    """The block diffusion NELBO per sequence [B] in nats, averaged over ``num_t`` draws (see :func:`block_losses`)."""
    return block_losses(denoiser, x0, **kwargs).sum(-1).mean(0)
