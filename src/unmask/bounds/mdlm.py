"""The MDLM objective: continuous and discrete NELBO under SUBS, with the paper's ablations.

All losses are per sequence, in nats, summed over the positions that count (``loss_mask``); a
per-token figure is the sum over a data set divided by the number of counted tokens.

Notation follows the paper (Sahoo et al. 2024) and ``docs/math.md`` (SUBS §2, continuous NELBO
§3, time floor §4, antithetic times §5, discrete NELBO and ablations §6): x0 is the clean
sequence, x_t its masked version at time t, alpha_t the schedule, and p_theta(x0 | x_t) the
denoiser's prediction after the SUBS substitutions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.bounds.masking import (
    MIN_MASK_RATE,
    mask_tokens,
    min_time,
    per_row_sum,
    repeat_rows,
    sample_times,
    seen_rows,
    times_for,
)
from unmask.bounds.nll import TokenLoss, masked_nll
from unmask.denoiser import Denoiser, denoise
from unmask.schedules import Schedule, get_schedule


def nelbo(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    schedule: Schedule | str,
    mask_id: int,
    num_t: int = 1,
    t: Tensor | None = None,
    antithetic: bool = True,
    loss_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    carry_over: bool = True,
    min_mask_rate: float = MIN_MASK_RATE,
    token_loss: TokenLoss = masked_nll,
) -> Tensor:
    """Continuous-time NELBO per sequence in nats (paper eq. 10), averaged over num_t times.

        NELBO(x0) = E_t E_{x_t ~ q(.|x0)} [ -alpha'_t / (1 - alpha_t) * sum_{i: x_t^i = MASK} -log p_theta(x0^i | x_t) ]

    ``t`` ([B] or [B, num_t]) replaces the random draw. ``loss_mask`` [B, L] marks the tokens that
    count; the others are never masked and never scored. ``attention_mask`` [B, L] marks the tokens the
    denoiser sees (when it supports an attention mask); by default the counted ones, so padding is hidden.
    A prompt (supervised fine-tuning, as LLaDA's) is seen but not counted: clean context for the answer.
    ``carry_over=False`` is the paper's ablation that also
    scores unmasked positions (the denoiser must then predict tokens it can see).

    ``token_loss`` replaces -log p_theta(x0^i | x_t) at each scored position: SEDD's score entropy
    is this same estimator with another per-token loss (:mod:`unmask.bounds.sedd`).
    """
    schedule = get_schedule(schedule)
    t_min = 0.0 if t is not None else min_time(schedule, min_mask_rate)
    times = times_for(x0, t, num_t, antithetic, t_min, generator)
    copies = times.shape[0] // x0.shape[0]
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    x0_rep, keep_rep = repeat_rows(x0, copies), repeat_rows(keep, copies)

    x_t, masked = mask_tokens(x0_rep, schedule.one_minus_alpha(times), mask_id, keep_rep, generator)
    scored = masked if carry_over else keep_rep
    logits = denoise(denoiser, x_t, times, where=scored, attention_mask=seen_rows(keep, attention_mask, copies))
    token_nll = token_loss(logits, x0_rep[scored], mask_id)
    # Times are uniform on [t_min, 1]: the interval's length turns the mean into the integral.
    per_row = (1 - t_min) * schedule.loss_weight(times) * per_row_sum(token_nll, scored)
    return per_row.view(copies, x0.shape[0]).mean(0)


def nelbo_discrete(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    schedule: Schedule | str,
    mask_id: int,
    steps: int,
    num_t: int = 1,
    antithetic: bool = True,
    loss_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    carry_over: bool = True,
    zero_masking: bool = True,
) -> Tensor:
    """Discrete-time NELBO with T = ``steps`` (paper eq. 8), per sequence in nats.

    With i ~ U{1..T}, s = (i - 1) / T, t = i / T, an unbiased estimate of the sum over steps is

        T * E[ (alpha_s - alpha_t) / (1 - alpha_t) * sum_{masked} -log p_theta(x0^i | x_t) ].

    It falls towards the continuous bound as T grows and lies above it in expectation over the data, not
    for every sequence: with the exact denoiser at T = 1 it is -log of the product of x0's marginals, below
    -log p(x0) (the continuous bound) where x0's tokens go together (docs/math.md section 6). The ablations:
    ``carry_over=False`` also scores unmasked positions; ``zero_masking=False`` lets the denoiser
    put mass on MASK and uses the D3PM posterior KL (which copies unmasked tokens by itself).
    ``loss_mask`` and ``attention_mask`` as for :func:`nelbo`.
    """
    schedule = get_schedule(schedule)
    batch = x0.shape[0]
    u = sample_times(batch * num_t, antithetic=antithetic, generator=generator, device=x0.device)
    step = torch.clamp((u.double() * steps).floor() + 1, max=steps)
    t, s = (step / steps).float(), ((step - 1) / steps).float()
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    x0_rep, keep_rep = repeat_rows(x0, num_t), repeat_rows(keep, num_t)

    x_t, masked = mask_tokens(x0_rep, schedule.one_minus_alpha(t), mask_id, keep_rep, generator)
    scored = masked if (carry_over or not zero_masking) else keep_rep
    logits = denoise(denoiser, x_t, t, where=scored, attention_mask=seen_rows(keep, attention_mask, num_t))
    unmask_prob = schedule.unmask_probability(t, s)
    rows = scored.nonzero()[:, 0]
    if zero_masking:
        token_nll = masked_nll(logits, x0_rep[scored], mask_id)
        per_row = steps * unmask_prob * per_row_sum(token_nll, scored)
    else:
        token_kl = d3pm_masked_kl(
            torch.log_softmax(logits.float(), dim=-1),
            x0_rep[scored],
            mask_id,
            schedule.alpha(t)[rows],
            schedule.alpha(s)[rows],
            unmask_prob[rows],
        )
        per_row = steps * per_row_sum(token_kl, scored)
    return per_row.view(num_t, batch).mean(0)


def d3pm_masked_kl(
    log_probs: Tensor, x0: Tensor, mask_id: int, alpha_t: Tensor, alpha_s: Tensor, unmask_prob: Tensor
) -> Tensor:
    """KL(q(x_s | x_t = MASK, x0) || p_theta(x_s | x_t)) per masked position, without zero masking.

    With theta_m = p_theta(MASK | x_t) allowed to be > 0, the D3PM posterior puts mass
    (alpha_s - alpha_t) theta_x on a token x and (1 - alpha_s) + alpha_s theta_m on MASK, over the
    normaliser (1 - alpha_t)(1 + r_t) with r_t = alpha_t theta_m / (1 - alpha_t). The true posterior
    unmasks to x0 with probability P = unmask_prob, so the KL is

        P (log(1 + r_t) - log theta_x0) + (1 - P) (log(1 + r_t) - log(1 + r_s)).

    With theta_m = 0 it reduces to the SUBS term P * -log theta_x0.
    """
    theta_m = log_probs[:, mask_id].exp()
    log_theta_x0 = log_probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    log1p_r_t = torch.log1p(alpha_t * theta_m / (1 - alpha_t))
    stay = 1 - unmask_prob
    # At s = 0 (alpha_s = 1) the MASK branch has probability 0; guard its infinite log.
    log1p_r_s = torch.where(stay > 0, torch.log1p(alpha_s * theta_m / (1 - alpha_s).clamp_min(1e-30)), 0.0)
    return unmask_prob * (log1p_r_t - log_theta_x0) + stay * (log1p_r_t - log1p_r_s)
