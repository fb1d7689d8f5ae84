"""The MDLM objective: SUBS parameterization, continuous and discrete NELBO, ablations, AR loss.

All losses are per sequence, in nats, summed over the positions that count (``loss_mask``); a
per-token figure is the sum over a data set divided by the number of counted tokens.

Notation follows the paper (Sahoo et al. 2024) and ``docs/math.md`` (SUBS §2, continuous NELBO
§3, time floor §4, antithetic times §5, discrete NELBO and ablations §6, AR baseline §8): x0 is
the clean sequence, x_t its masked version at time t, alpha_t the schedule, and p_theta(x0 | x_t)
the denoiser's prediction after the SUBS substitutions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, denoise
from unmask.schedules import Schedule, get_schedule

MIN_MASK_RATE = 1e-3

# The per-token loss at a scored position: (logits [N, V], targets [N], mask_id) -> nats [N].
TokenLoss = Callable[[Tensor, Tensor, int], Tensor]


def min_time(schedule: Schedule, min_mask_rate: float = MIN_MASK_RATE) -> float:
    """The earliest time drawn: where a fraction ``min_mask_rate`` of tokens is masked.

    The NELBO integrand -alpha'/(1 - alpha) E[...] dt equals (1/m) E[...] dm in the masking rate
    m = 1 - alpha_t, so every schedule estimates the same integral. Flooring m rather than t
    (the reference floors t at 1e-3, which for log-linear is the same) keeps the 1/m weight finite
    and leaves out the same sliver, about min_mask_rate * L nats at most, for every schedule.
    """
    floor = schedule.time_of_alpha(torch.tensor(1.0 - min_mask_rate, dtype=torch.float64))
    return float(floor.clamp(0.0, 1.0))


def masked_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """log p_theta(x0 | x_t) at masked positions: SUBS zero-masking (MASK gets probability 0).

    Computed in float32 whatever the logits' dtype, so bf16 autocast never reaches the softmax.
    """
    return torch.log_softmax(_float_masked(logits, mask_id), dim=-1)


# Rows of logits per float32 chunk in masked_nll: about 4 MiB of float32 at a time.
_CHUNK_ELEMENTS = 1 << 20


class _MaskedNLL(torch.autograd.Function):
    """Fused -log p_theta(target) and the log-normaliser logsumexp(logits) under zero masking, in
    float32 row chunks.

    Forward keeps only the log-normaliser per row; backward rebuilds the softmax chunk by chunk in
    the logits' own dtype (d nll = softmax - onehot, d lse = softmax). Unlike log_softmax + gather,
    no [N, V] float32 copy, gather scatter or index_fill gradient is ever materialised: with a 50k
    vocabulary these copies cost more than the output head itself.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, mask_id: int | None) -> tuple[Tensor, Tensor]:
        ctx.rows = rows = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
        lse = torch.empty(logits.shape[0], device=logits.device, dtype=torch.float32)
        target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
        for start in range(0, logits.shape[0], rows):
            chunk = _float_masked(logits[start : start + rows], mask_id)
            lse[start : start + rows] = torch.logsumexp(chunk, dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.mask_id = mask_id
        nll = lse - target_logit
        nll = torch.where(targets == mask_id, float("inf"), nll) if mask_id is not None else nll
        return nll, lse.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_nll: Tensor, grad_lse: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        softmax_weight = grad_nll + grad_lse
        for start in range(0, logits.shape[0], ctx.rows):
            end = start + ctx.rows
            # softmax (MASK excluded: exp(-inf) = 0) * (grad_nll + grad_lse) - onehot(target) * grad_nll.
            probs = (_float_masked(logits[start:end], ctx.mask_id) - lse[start:end, None]).exp_()
            probs.mul_(softmax_weight[start:end, None])
            probs.scatter_add_(-1, targets[start:end, None], -grad_nll[start:end, None])
            grad[start:end] = probs
        return grad, None, None


def _float_masked(logits: Tensor, mask_id: int | None) -> Tensor:
    """A float32 copy of logits [..., V] with MASK's logit at -inf (zero masking)."""
    logits = logits.to(torch.float32, copy=True)
    if mask_id is not None:
        logits[..., mask_id] = float("-inf")
    return logits


def masked_nll(logits: Tensor, targets: Tensor, mask_id: int | None) -> Tensor:
    """-log p_theta(target | x_t) per row of logits [N, V], with MASK given probability 0 (SUBS
    zero masking; ``mask_id=None`` keeps every id). Equal to
    ``-masked_log_probs(logits, mask_id).gather(-1, targets[:, None])`` but fused: float32 math in
    chunks, whatever the logits' dtype, and no [N, V] intermediate kept for the backward pass.
    """
    return _MaskedNLL.apply(logits, targets, mask_id)[0]


def masked_nll_and_logsumexp(logits: Tensor, targets: Tensor, mask_id: int | None) -> tuple[Tensor, Tensor]:
    """(:func:`masked_nll`, logsumexp of the logits over every id but MASK) per row, both float32 and
    both differentiable, from one fused pass (SEDD's score entropy needs the normaliser itself)."""
    return _MaskedNLL.apply(logits, targets, mask_id)


def subs_log_probs(logits: Tensor, x_t: Tensor, mask_id: int) -> Tensor:
    """The full SUBS parameterization over raw logits [..., L, V] (paper section 3.2.3).

    1. zero masking probability: MASK never gets mass;
    2. carry-over unmasking: where x_t is not MASK the prediction is x_t with probability 1.
    """
    log_probs = masked_log_probs(logits, mask_id)
    unmasked = x_t != mask_id
    carried = torch.full_like(log_probs, float("-inf"))
    carried.scatter_(-1, x_t.unsqueeze(-1), 0.0)
    return torch.where(unmasked.unsqueeze(-1), carried, log_probs)


def sample_times(
    n: int,
    *,
    antithetic: bool = True,
    t_min: float = 0.0,
    t_max: float = 1.0,
    blocks: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """n times uniform in [t_min, t_max]; antithetic: t_i = ((u + i) / n) mod 1 with one shared u.

    Each t_i is still uniform on its own, so the estimate stays unbiased, but the batch covers
    [0, 1] evenly, which cuts the variance (paper section 3.5, "low-discrepancy sampler").
    With ``blocks`` (block diffusion: a time per block) the times are [n, blocks], and antithetic
    t_ib = ((u + i / n + b / blocks) mod 1): every block's times cover [0, 1] evenly across the n
    rows, and every row's across its blocks.
    """
    shape = (n,) if blocks is None else (n, blocks)
    if antithetic:
        u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        steps = torch.arange(n, device=device, dtype=torch.float64) / n
        if blocks is not None:
            steps = steps[:, None] + torch.arange(blocks, device=device, dtype=torch.float64) / blocks
        u = (u + steps) % 1.0
    else:
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return (t_min + (t_max - t_min) * u).float()


def _repeat_rows(x: Tensor | None, times: int) -> Tensor | None:
    # Row k * B + b is copy k of sequence b: this matches the antithetic layout of the times.
    return None if x is None else x.repeat(times, *([1] * (x.dim() - 1)))


def _mask_tokens(
    x0: Tensor, one_minus_alpha: Tensor, mask_id: int, loss_mask: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Forward process q(x_t | x0): each counted token becomes MASK with probability 1 - alpha_t
    (``one_minus_alpha`` per row [R], or per token [R, L])."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    rate = one_minus_alpha if one_minus_alpha.dim() == x0.dim() else one_minus_alpha.unsqueeze(-1)
    masked = (u < rate) & loss_mask
    return torch.where(masked, mask_id, x0), masked


def per_row_sum(values: Tensor, where: Tensor) -> Tensor:
    """Sum values [N] (row-major over the True entries of where [R, L]) back into rows [R]."""
    rows = where.nonzero()[:, 0]
    return torch.zeros(where.shape[0], device=values.device, dtype=values.dtype).index_add_(0, rows, values)


def _times_for(
    x0: Tensor,
    t: Tensor | None,
    num_t: int,
    antithetic: bool,
    t_min: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Times as a flat [num_t * B] tensor in the row layout of :func:`_repeat_rows`."""
    batch = x0.shape[0]
    if t is None:
        return sample_times(
            batch * num_t, antithetic=antithetic, t_min=t_min, generator=generator, device=x0.device
        )
    t = t.to(x0.device, torch.float32)
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if t.shape[0] != batch:
        raise ValueError(f"t has {t.shape[0]} rows but x0 has {batch} sequences")
    return t.T.reshape(-1)


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
    generator: torch.Generator | None = None,
    carry_over: bool = True,
    min_mask_rate: float = MIN_MASK_RATE,
    token_loss: TokenLoss = masked_nll,
) -> Tensor:
    """Continuous-time NELBO per sequence in nats (paper eq. 10), averaged over num_t times.

        NELBO(x0) = E_t E_{x_t ~ q(.|x0)} [ -alpha'_t / (1 - alpha_t) * sum_{i: x_t^i = MASK} -log p_theta(x0^i | x_t) ]

    ``t`` ([B] or [B, num_t]) replaces the random draw. ``loss_mask`` [B, L] marks the tokens that
    count; the others (padding) are never masked, never scored, and hidden from attention when the
    denoiser supports an attention mask. ``carry_over=False`` is the paper's ablation that also
    scores unmasked positions (the denoiser must then predict tokens it can see).

    ``token_loss`` replaces -log p_theta(x0^i | x_t) at each scored position: SEDD's score entropy
    is this same estimator with another per-token loss (:mod:`unmask.objectives.sedd`).
    """
    schedule = get_schedule(schedule)
    t_min = 0.0 if t is not None else min_time(schedule, min_mask_rate)
    times = _times_for(x0, t, num_t, antithetic, t_min, generator)
    copies = times.shape[0] // x0.shape[0]
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    x0_rep, keep_rep = _repeat_rows(x0, copies), _repeat_rows(keep, copies)

    x_t, masked = _mask_tokens(x0_rep, schedule.one_minus_alpha(times), mask_id, keep_rep, generator)
    scored = masked if carry_over else keep_rep
    attention_mask = None if loss_mask is None else keep_rep
    logits = denoise(denoiser, x_t, times, where=scored, attention_mask=attention_mask)
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
    generator: torch.Generator | None = None,
    carry_over: bool = True,
    zero_masking: bool = True,
) -> Tensor:
    """Discrete-time NELBO with T = ``steps`` (paper eq. 8), per sequence in nats.

    With i ~ U{1..T}, s = (i - 1) / T, t = i / T, an unbiased estimate of the sum over steps is

        T * E[ (alpha_s - alpha_t) / (1 - alpha_t) * sum_{masked} -log p_theta(x0^i | x_t) ].

    It is >= the continuous bound and falls towards it as T grows. The ablations:
    ``carry_over=False`` also scores unmasked positions; ``zero_masking=False`` lets the denoiser
    put mass on MASK and uses the D3PM posterior KL (which copies unmasked tokens by itself).
    """
    schedule = get_schedule(schedule)
    batch = x0.shape[0]
    u = sample_times(batch * num_t, antithetic=antithetic, generator=generator, device=x0.device)
    step = torch.clamp((u.double() * steps).floor() + 1, max=steps)
    t, s = (step / steps).float(), ((step - 1) / steps).float()
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    x0_rep, keep_rep = _repeat_rows(x0, num_t), _repeat_rows(keep, num_t)

    x_t, masked = _mask_tokens(x0_rep, schedule.one_minus_alpha(t), mask_id, keep_rep, generator)
    scored = masked if (carry_over or not zero_masking) else keep_rep
    attention_mask = None if loss_mask is None else keep_rep
    logits = denoise(denoiser, x_t, t, where=scored, attention_mask=attention_mask)
    unmask_prob = schedule.unmask_probability(t, s)
    rows = scored.nonzero()[:, 0]
    if zero_masking:
        token_nll = masked_nll(logits, x0_rep[scored], mask_id)
        per_row = steps * unmask_prob * per_row_sum(token_nll, scored)
    else:
        token_kl = _d3pm_masked_kl(
            torch.log_softmax(logits.float(), dim=-1),
            x0_rep[scored],
            mask_id,
            schedule.alpha(t)[rows],
            schedule.alpha(s)[rows],
            unmask_prob[rows],
        )
        per_row = steps * per_row_sum(token_kl, scored)
    return per_row.view(num_t, batch).mean(0)


def _d3pm_masked_kl(
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


def ar_loss(
    model: Denoiser,
    x0: Tensor,
    *,
    mask_id: int | None = None,
    loss_mask: Tensor | None = None,
) -> Tensor:
    """Autoregressive next-token NLL per sequence in nats, for the AR baseline on the same backbone.

    ``model`` must be causal (a :class:`unmask.models.DiT` with ``causal=True``). Position i
    predicts token i + 1; ``loss_mask`` marks the tokens that count as targets.
    """
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    scored = torch.zeros_like(keep)
    scored[:, :-1] = keep[:, 1:]
    t = torch.zeros(x0.shape[0], device=x0.device)
    attention_mask = None if loss_mask is None else keep
    logits = denoise(model, x0, t, where=scored, attention_mask=attention_mask)
    targets = x0[:, 1:][scored[:, :-1]]
    token_nll = masked_nll(logits, targets, mask_id)
    return per_row_sum(token_nll, scored)


def ar_token_count(x0: Tensor, loss_mask: Tensor | None = None) -> Tensor:
    """Number of targets per sequence that :func:`ar_loss` scores (every counted token but the first)."""
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    return keep[:, 1:].sum(1)
