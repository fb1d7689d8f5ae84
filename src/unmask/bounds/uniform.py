"""Uniform-state discrete diffusion (USDM; Duo, Sahoo et al., ICML 2025, arXiv 2506.10892).

Every id but MASK is a state: the process is uniform over the K = V - 1 real ids (K = V when
``mask_id`` is None). MASK is never produced, and the model's logit at MASK is ignored (-inf).

Forward process: each counted token keeps its value with probability alpha_t and is
otherwise replaced by a uniform draw over the K states (which may give the same id back):

    q(z_t | x) = alpha_t onehot(x) + (1 - alpha_t) / K,
    q(z_t | z_s) = (alpha_t / alpha_s) onehot(z_s) + (1 - alpha_t / alpha_s) / K    (s < t).

The model is read through the mean parameterization: x_theta = softmax of the logits over the K
states, an estimate of the clean token. With x_bar = K alpha_t x + (1 - alpha_t) for any
distribution x over the states (K times q(z_t = . | x)), the reverse jump rate of one position
from its current state z to y is (-alpha'_t / (K alpha_t)) x_bar_y / x_bar_z. The NELBO (the USDM
ELBO that Duo takes from UDLM, Schiff et al. 2025; the reference's ``DUO_BASE.nll_per_token``) is
the time integral of the path-space KL between the true reverse rates (x = onehot(x0)) and the
model's (x = x_theta):

    NELBO(x0) = int_0^1 E_{z_t ~ q(.|x0)} sum_i (-alpha'_t / (K alpha_t))
                  sum_{y != z} [ r^_y - r_y - r_y log(r^_y / r_y) ] dt,
    r_y = x_bar_y / x_bar_z (x = onehot(x0^i)),   r^_y = x_bar_y / x_bar_z (x = x_theta^i),  z = z_t^i.

Each bracket is a Bregman divergence, >= 0, and 0 for every y exactly when x_theta = onehot(x0^i).
The true reverse rate needs p_t(z with position i set to y) / p_t(z), which is this ratio with
x_theta^i = p(x0^i | z_t^{-i}), the conditional given the OTHER positions' latents: with that
leave-one-out denoiser the bound equals -log p(x0) (checked in tests/test_uniform.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.bounds.masking import min_time, per_row_sum, repeat_rows, times_for
from unmask.denoiser import Denoiser, denoise
from unmask.schedules import Schedule, get_schedule

# The NELBO's times start where 1 - alpha_t = MIN_NOISE_RATE, as MDLM's do (unmask.bounds.masking.min_time).
MIN_NOISE_RATE = 1e-3
# Floor of 1 - alpha and alpha where they divide: it keeps 0 * inf out of the end points (t = 0 with
# alpha = 1, the polynomial schedule's alpha_1 = 0, a last step to alpha_s = 1), where the limits are finite.
TINY = 1e-12


def num_states(vocab_size: int, mask_id: int | None) -> int:
    """K, the number of ids the uniform process moves between: every id but MASK."""
    return vocab_size - (mask_id is not None)


def _to_states(ids: Tensor, mask_id: int | None) -> Tensor:
    """Ids -> state indices 0..K-1 (the ids above MASK move down by one)."""
    return ids if mask_id is None else ids - (ids > mask_id).long()


def _to_ids(states: Tensor, mask_id: int | None) -> Tensor:
    """State indices 0..K-1 -> ids (MASK is skipped)."""
    return states if mask_id is None else states + (states >= mask_id).long()


def _drop_mask_column(values: Tensor, mask_id: int | None) -> Tensor:
    """[..., V] -> [..., K]: the columns of the states."""
    if mask_id is None:
        return values
    return torch.cat([values[..., :mask_id], values[..., mask_id + 1 :]], dim=-1)


def state_indicator(vocab_size: int, mask_id: int | None, device: torch.device) -> Tensor:
    """[V] float64: 1 at every state, 0 at MASK."""
    states = torch.ones(vocab_size, dtype=torch.float64, device=device)
    if mask_id is not None:
        states[mask_id] = 0.0
    return states


def corrupt_uniform(
    x0: Tensor,
    alpha: Tensor | float,
    *,
    vocab_size: int,
    mask_id: int | None,
    loss_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A draw of z_t ~ q(z_t | x0): each counted token kept with probability alpha, otherwise replaced by
    a uniform draw over the K states. ``alpha`` is a float, per row [B] or per token [B, L];
    positions outside ``loss_mask`` stay x0. The draws are float64."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x0.device)
    if alpha.dim() == 1 and x0.dim() == 2:
        alpha = alpha.unsqueeze(-1)
    u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
    resample = u >= alpha
    if loss_mask is not None:
        resample &= loss_mask.bool()
    states = torch.randint(0, num_states(vocab_size, mask_id), x0.shape, generator=generator, device=x0.device)
    return torch.where(resample, _to_ids(states, mask_id), x0)


def uniform_posterior(
    x_theta: Tensor,
    z_t: Tensor,
    alpha_t: Tensor | float,
    alpha_s: Tensor | float,
    *,
    mask_id: int | None = None,
) -> Tensor:
    """q(z_s | z_t, x) for s < t with x ~ x_theta: float64 probabilities [..., V] over z_s.

    ``x_theta`` [..., V] is a distribution over the clean token (its MASK column is ignored; pass
    ``mask_id=None`` for probabilities over K states only); ``z_t`` [...] the current ids; the alphas
    floats or tensors that broadcast against ``z_t``. By Bayes, with x drawn from x_theta:

        q(z_s = y | z_t, x_theta) = q(z_t | z_s = y) [alpha_s x_theta_y + (1 - alpha_s) / K]
                                    / [alpha_t x_theta_{z_t} + (1 - alpha_t) / K],

    numerator and denominator both linear in x_theta. This is the reference's
    ``DUO_BASE._posterior_from_x0`` (there with K x_bar-style factors); at x_theta = onehot(x0) it is the
    exact posterior, and at alpha_s = 1 it is the posterior of the clean token given z_t.
    """
    vocab_size = x_theta.shape[-1]
    states = state_indicator(vocab_size, mask_id, x_theta.device)
    k = num_states(vocab_size, mask_id)
    x_theta = x_theta.to(torch.float64) * states
    alpha_t = torch.as_tensor(alpha_t, dtype=torch.float64, device=x_theta.device).unsqueeze(-1)
    alpha_s = torch.as_tensor(alpha_s, dtype=torch.float64, device=x_theta.device).unsqueeze(-1)
    keep = alpha_t / alpha_s
    current = torch.nn.functional.one_hot(z_t, vocab_size).to(torch.float64)
    reach_z_t = keep * current + (1 - keep) * states / k  # q(z_t | z_s = y) for every y
    prior = alpha_s * x_theta + (1 - alpha_s) * states / k  # q(z_s = y | x ~ x_theta)
    joint = reach_z_t * prior
    # The row sum is the evidence alpha_t x_theta_{z_t} + (1 - alpha_t) / K (exactly so when x_theta sums to 1).
    return joint / joint.sum(-1, keepdim=True)


def _minus_1_minus_log(u: Tensor, u_minus_1: Tensor) -> Tensor:
    """u - 1 - log u >= 0 to full relative precision, given u and u - 1 each computed accurately.

    Near u = 1 it is (u - 1)^2 / 2 - ..., which the difference of u - 1 and log u would lose: a Taylor
    series for |u - 1| < 0.01 (truncated at 3e-11 relative), log1p(u - 1) up to |u - 1| < 0.5, and
    log u beyond, where u - 1 itself has lost the digits of a small u. The clamps only touch entries
    that another branch takes: they keep every branch (and its gradient) finite.
    """
    d = u_minus_1
    small = d.abs() < 0.01
    ds = torch.where(small, d, 0.0)
    series = ds * ds * (1 / 2 - ds * (1 / 3 - ds * (1 / 4 - ds * (1 / 5 - ds / 6))))
    log_u = torch.where(d.abs() < 0.5, torch.log1p(d.clamp(min=-0.5)), torch.log(u))
    return torch.where(small, series, d - log_u)


def uniform_token_loss(
    logits: Tensor,
    x0: Tensor,
    z_t: Tensor,
    alpha: Tensor,
    one_minus_alpha: Tensor,
    alpha_derivative: Tensor,
    *,
    mask_id: int | None,
) -> Tensor:
    """The NELBO integrand at each scored position, in nats [N] (the reference's ``nll_per_token``).

    ``logits`` [N, V] at the scored positions (the MASK logit is ignored), ``x0`` and ``z_t`` [N] their
    clean and current ids, ``alpha``, ``one_minus_alpha`` (given separately so that it keeps its
    precision near alpha = 1) and ``alpha_derivative`` = d alpha / dt [N]. Float32 math at least, whatever
    the logits' dtype.

    The module docstring's bracket is written as r_y (u_y - 1 - log u_y) with u_y = r^_y / r_y, which
    never cancels (:func:`_minus_1_minus_log`). With a = K alpha and c = 1 - alpha, x_bar_y = c for every
    y but x0, so these K - 1 terms share r_y = c / x_bar_z and, over all y at once,

        u_y = s x_theta_y + x_bar_z / x_bar_theta_z,    u_y - 1 = s x_theta_y + a (e_z - x_theta_z) / x_bar_theta_z,

    with s = a x_bar_z / (c x_bar_theta_z) and e_z = [z = x0]; the term y = x0 is computed on its own. The
    factor a is explicit in u_y - 1: as alpha -> 0 the bracket shrinks like (K alpha)^2 while the weight
    -alpha' / (K alpha) grows, and their product keeps float32's relative precision, where the reference's
    expanded form subtracts terms of size K / c. The term y = z is 0 by itself. Besides the softmax, the
    [N, K] work is one affine map, u - 1 - log u and a sum.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    x_theta = torch.softmax(_drop_mask_column(logits, mask_id).to(dtype), dim=-1)
    k = x_theta.shape[-1]
    x0, z_t = _to_states(x0, mask_id).unsqueeze(-1), _to_states(z_t, mask_id).unsqueeze(-1)
    a = (k * alpha).to(dtype).unsqueeze(-1)
    c = one_minus_alpha.to(dtype).clamp_min(TINY).unsqueeze(-1)
    e_z = (x0 == z_t).to(dtype)
    theta_z, theta_0 = x_theta.gather(-1, z_t), x_theta.gather(-1, x0)
    x_bar_z, x_bar_theta_z = a * e_z + c, a * theta_z + c
    # Every y but x0.
    slope = a * x_bar_z / (c * x_bar_theta_z)
    others = _minus_1_minus_log(slope * x_theta + x_bar_z / x_bar_theta_z,
                                slope * x_theta + a * (e_z - theta_z) / x_bar_theta_z)
    others = others.scatter(-1, x0, 0.0).sum(-1, keepdim=True)
    # y = x0, where x_bar_y = a + c.
    at_x0 = (a * theta_0 + c) * x_bar_z / ((a + c) * x_bar_theta_z)
    at_x0_minus_1 = a * (c * (theta_0 - theta_z + e_z - 1) + a * (theta_0 * e_z - theta_z)) / ((a + c) * x_bar_theta_z)
    bregman = (c * others + (a + c) * _minus_1_minus_log(at_x0, at_x0_minus_1)) / x_bar_z
    weight = -alpha_derivative.to(dtype) / (k * alpha.to(dtype).clamp_min(TINY))
    return weight * bregman.squeeze(-1)


def uniform_nelbo(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    schedule: Schedule | str,
    mask_id: int | None,
    vocab_size: int | None = None,
    num_t: int = 1,
    t: Tensor | None = None,
    antithetic: bool = True,
    loss_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    min_noise_rate: float = MIN_NOISE_RATE,
) -> Tensor:
    """Continuous-time NELBO of uniform-state diffusion per sequence in nats, averaged over ``num_t`` times.

        NELBO(x0) = E_t E_{z_t ~ q(.|x0)} [ sum_i uniform_token_loss ]     (module docstring)

    Same options as :func:`unmask.bounds.mdlm.nelbo`: ``t`` ([B] or [B, num_t]) replaces the draw,
    ``antithetic`` spreads the times of a batch, ``loss_mask`` [B, L] marks the tokens that count (the
    others are never corrupted, never scored and hidden from attention). ``vocab_size`` (V, the logits'
    last dimension) defaults to ``mask_id + 1``, MASK being the last id; it is needed to corrupt before the
    denoiser runs. Unlike MDLM, every counted position is scored, corrupted or not.

    Times are drawn on [t_min, 1], t_min where 1 - alpha_t = ``min_noise_rate``, as MDLM's are (so every
    schedule leaves out the same range of alpha); the reference draws t on [1e-3, 1], the same thing for
    its log-linear schedule. The floor matters more than for MDLM: near t = 0 a token is corrupted with
    probability ~ 1 - alpha_t and then costs ~ log(1 / (1 - alpha_t)) / (1 - alpha_t) nats, so the
    integrand grows like -alpha'_t log(1 / (1 - alpha_t)). That is integrable, and the floor leaves out
    about min_noise_rate (log(1 / min_noise_rate) + 1) (K - 1) / K nats per token (0.019 per sequence of
    4 on the toy of tests/test_uniform.py), but without a floor the estimate's variance is infinite when
    alpha_0 = 1 and alpha'_0 != 0 (log-linear). ``min_noise_rate=0`` gives the whole integral.

    Like the reference, the bound leaves out the term at t = 0, E[-log p(x0 | z_0)], 0 when alpha_0 = 1
    (log-linear, cosine, cosine_squared, polynomial; linear and geometric start at exp(-1e-4)), and the
    prior term KL(q(z_1 | x0) || uniform) = q log(K q) + (1 - q) log(1 - alpha_1) per token, with
    q = alpha_1 + (1 - alpha_1) / K: 1e-6 nats at K = 3 but 3e-3 at K = 50,257, for alpha_1 = 1e-3.
    """
    schedule = get_schedule(schedule)
    if vocab_size is None:
        if mask_id is None:
            raise ValueError("vocab_size is needed when there is no mask_id")
        vocab_size = mask_id + 1
    t_min = 0.0 if t is not None else min_time(schedule, min_noise_rate)
    times = times_for(x0, t, num_t, antithetic, t_min, generator)
    copies = times.shape[0] // x0.shape[0]
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    x0_rep, keep_rep = repeat_rows(x0, copies), repeat_rows(keep, copies)

    alpha = schedule.alpha(times)
    z_t = corrupt_uniform(x0_rep, alpha, vocab_size=vocab_size, mask_id=mask_id, loss_mask=keep_rep,
                          generator=generator)
    attention_mask = None if loss_mask is None else keep_rep
    logits = denoise(denoiser, z_t, times, where=keep_rep, attention_mask=attention_mask)
    if logits.shape[-1] != vocab_size:
        raise ValueError(f"the denoiser returned {logits.shape[-1]} logits per position, expected {vocab_size}")
    rows = keep_rep.nonzero()[:, 0]
    token_loss = uniform_token_loss(
        logits, x0_rep[keep_rep], z_t[keep_rep], alpha[rows], schedule.one_minus_alpha(times)[rows],
        schedule.alpha_derivative(times)[rows], mask_id=mask_id,
    )
    # Times are uniform on [t_min, 1]: the interval's length turns the mean into the integral.
    per_row = (1 - t_min) * per_row_sum(token_loss, keep_rep)
    return per_row.view(copies, x0.shape[0]).mean(0)


def uniform_conditional_bound(denoiser: Denoiser, x0: Tensor, scored: Tensor, u: Tensor, order: Tensor, *,
                              schedule: Schedule | str, mask_id: int, vocab_size: int,
                              min_noise_rate: float = MIN_NOISE_RATE) -> Tensor:
    """One sample per row [R] of the uniform-state NELBO of the ``scored`` [R, L] positions given the rest of x0
    (``docs/math.md`` §9): t = t_min + (1 - t_min) ``u`` [R]; a scored position is resampled when its ``order``
    [R, L] is below 1 - alpha_t, to the state order / (1 - alpha_t) picks (uniform given that); a MASK in x0 is
    unknown, pure noise at every t (the state ``order`` picks); every other token is clean context.

    The process restricted to the scored positions is the uniform process on a shorter sequence, and the
    denoiser conditions on the context as on any position it sees, so with the exact conditionals given the
    context this has expectation -log p(scored | context) (tests/test_duo.py).
    """
    schedule = get_schedule(schedule)
    t_min = min_time(schedule, min_noise_rate)
    t = (t_min + (1 - t_min) * u).float()
    rest = schedule.one_minus_alpha(t)[:, None].double()
    k = num_states(vocab_size, mask_id)
    resampled = scored.bool() & (order.double() < rest)
    free = x0 == mask_id
    share = torch.where(resampled, order.double() / rest.clamp_min(TINY), order.double())
    noise = _to_ids((share * k).long().clamp(max=k - 1), mask_id)
    z = torch.where(resampled | free, noise, x0)
    logits = denoise(denoiser, z, t, where=scored.bool())
    rows = scored.nonzero()[:, 0]
    loss = uniform_token_loss(logits, x0[scored.bool()], z[scored.bool()], schedule.alpha(t)[rows],
                              schedule.one_minus_alpha(t)[rows], schedule.alpha_derivative(t)[rows], mask_id=mask_id)
    return (1 - t_min) * per_row_sum(loss, scored.bool())


@torch.no_grad()
def uniform_greedy_matches(denoiser: Denoiser, x0: Tensor, scored: Tensor, order: Tensor, *, mask_id: int,
                           vocab_size: int) -> Tensor:
    """Per row [R]: whether the greedy decoding of the scored positions gives x0 there, for a uniform-state
    model: one call at t = 1 with the scored positions (and the unknown ones) as noise (the states ``order``
    picks) and the argmax of x_theta at each scored position, Duo's greedy tail in one step. Under the uniform
    process every position moves at once, so there is no one-position-at-a-time decoding to mirror the
    absorbing kinds'."""
    k = num_states(vocab_size, mask_id)
    noise = _to_ids((order.double() * k).long().clamp(max=k - 1), mask_id)
    z = torch.where(scored.bool() | (x0 == mask_id), noise, x0)
    logits = denoise(denoiser, z, torch.ones(x0.shape[0], device=x0.device), where=scored.bool())
    logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    hits = (logits.argmax(-1) == x0[scored.bool()]).long()
    return per_row_sum(hits, scored.bool()) == scored.sum(1)
