"""Duo's Gaussian relaxation of uniform-state diffusion and its training curriculum (Sahoo et al., ICML 2025).

The discrete latent is the argmax of a Gaussian one (the "duality" of Duo): with a variance-preserving Gaussian
diffusion over the K states,

    w_t = a_t onehot(x0) + s_t eps,    eps ~ N(0, I_K),    a_t^2 = sigmoid(-gamma_t),  s_t^2 = sigmoid(gamma_t),

z_t = argmax(w_t) is exactly a uniform-state latent: it equals x0 with probability P(gamma_t) and is
otherwise uniform over the other K - 1 states (by symmetry), so q(z_t | x0) has

    alpha_t = (K P(gamma_t) - 1) / (K - 1),
    P(gamma) = int phi(x - mu) Phi(x)^(K-1) dx,    mu = a_t / s_t = exp(-gamma / 2),

the "diffusion transformation operator" (Duo eq. 10): the probability that the coordinate of x0, a
normal of mean mu, exceeds K - 1 standard normals. alpha_t falls from 1 (gamma -> -inf) to 0
(gamma -> +inf, P -> 1/K).

The reference (github s-sahoo/duo, ``DUO`` in algo.py) reads P from a table precomputed per tokenizer
with scipy's ``quad`` (``integral/<tokenizer>.pkl``: 10^5 points on gamma in [-5, -1], nearest point
taken) and takes d alpha / dt as a forward difference, 1000 (gamma_max - gamma_min) (alpha(gamma + 1e-3)
- alpha(gamma)). It also offers a power series in mu and polynomial fits in t (the "series" and "poly"
curriculum modes). Here P, 1 - P and dP/dgamma are computed directly, by the trapezoid rule over a fixed
grid of the standard normal, which is exact to about 1e-12 for this analytic integrand; no table.

The curriculum (``DUO.nll`` in the reference, ``curriculum.mode=simple``) trains, for the first steps,
on the same per-position loss as uniform-state diffusion (:func:`unmask.bounds.uniform.uniform_token_loss`,
with z_t = argmax(w_t) and alpha_t, alpha'_t of the Gaussian schedule above, gamma linear in t on
[gamma_min, gamma_max]), but the model sees the tempered softmax softmax(w_t / tau) of the latent
instead of z_t: a probability vector per position that it must embed as the mixture of its input
embeddings with these weights. After the curriculum (and always in evaluation) training switches to
the plain uniform-state NELBO with hard ids (:func:`unmask.bounds.uniform.uniform_nelbo`) and the run's
schedule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unmask.bounds.masking import per_row_sum, sample_times
from unmask.bounds.uniform import _to_ids, _to_states, num_states, uniform_token_loss
from unmask.denoiser import Denoiser, denoise
from unmask.schedules import AlphaSchedule, Schedule, get_schedule

# The reference's defaults (configs/algo/duo.yaml).
GAMMA_MIN = -3.5
GAMMA_MAX = -1.75
CURRICULUM_START = 100_000
CURRICULUM_END = 200_000
LOG10_TEMPERATURE_START = -1.0
LOG10_TEMPERATURE_END = -2.0

# The trapezoid grid of the standard normal for P(gamma): z in [-10, 10] (phi(10) ~ 8e-23) in steps of
# 0.01. The steepest factor, Phi(mu + z)^(K-1), has a width of about 1 / sqrt(2 log K) (0.2 at K = 50k),
# far above the step; for such smooth integrands the rule's error decays exponentially in width / step.
_GRID = torch.linspace(-10.0, 10.0, 2001, dtype=torch.float64)
# Gammas per chunk of the quadrature: [chunk, 2001] float64 is 32 MiB.
_CHUNK = 2048


def _argmax_law(gamma: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(P, 1 - P, dP/dgamma) of P(gamma) = P(argmax w_t = x0), float64, each shaped like gamma.

    With Z standard normal, P = E[Phi(mu + Z)^(K-1)] and dP/dmu = E[(K-1) Phi(mu + Z)^(K-2) phi(mu + Z)];
    1 - P is integrated on its own (with expm1), so that it keeps its precision when P is close to 1.
    """
    if k < 2:
        raise ValueError(f"the Gaussian relaxation needs at least 2 states, got {k}")
    grid = _GRID.to(gamma.device)
    weights = torch.exp(-grid**2 / 2) / math.sqrt(2 * math.pi) * (grid[1] - grid[0])
    flat = gamma.reshape(-1).to(torch.float64)
    p, q, dp = (torch.empty_like(flat) for _ in range(3))
    for start in range(0, flat.numel(), _CHUNK):
        mu = torch.exp(-flat[start : start + _CHUNK] / 2).unsqueeze(-1)
        x = mu + grid
        log_cdf = torch.special.log_ndtr(x)
        p[start : start + _CHUNK] = (weights * torch.exp((k - 1) * log_cdf)).sum(-1)
        q[start : start + _CHUNK] = (weights * -torch.expm1((k - 1) * log_cdf)).sum(-1)
        log_pdf = -x**2 / 2 - math.log(2 * math.pi) / 2
        dp_dmu = (weights * (k - 1) * torch.exp((k - 2) * log_cdf + log_pdf)).sum(-1)
        dp[start : start + _CHUNK] = dp_dmu * -mu.squeeze(-1) / 2  # d mu / d gamma = -mu / 2
    return p.view(gamma.shape), q.view(gamma.shape), dp.view(gamma.shape)


def gaussian_alpha(gamma: Tensor, num_states: int) -> Tensor:
    """alpha_t = (K P(gamma) - 1) / (K - 1) of the uniform-state latent argmax(w_t) (Duo eq. 10), in gamma's
    dtype (computed in float64). ``num_states`` is K, the number of ids the process moves between."""
    p, _, _ = _argmax_law(gamma, num_states)
    return ((num_states * p - 1) / (num_states - 1)).to(gamma.dtype)


def gaussian_alpha_derivative(gamma: Tensor, num_states: int) -> Tensor:
    """d alpha / d gamma = K / (K - 1) dP / dgamma (negative: more Gaussian noise, less signal)."""
    _, _, dp = _argmax_law(gamma, num_states)
    return (num_states / (num_states - 1) * dp).to(gamma.dtype)


class GaussianSchedule(AlphaSchedule):
    """The discrete schedule Duo's curriculum trains with: gamma_t = gamma_min + t (gamma_max - gamma_min),
    alpha_t = :func:`gaussian_alpha` (gamma_t), for a process over ``num_states`` states.

    alpha stays inside (0, 1) on [gamma_min, gamma_max], so the curriculum's loss is the uniform-state
    integrand over that part of the noise levels only, not a bound on -log p(x0).
    """

    name = "duo_gaussian"

    def __init__(self, num_states: int, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> None:
        self.num_states = num_states
        self.gamma_min = gamma_min
        self.gamma_max = gamma_max

    def gamma(self, t: Tensor) -> Tensor:
        return self.gamma_min + t * (self.gamma_max - self.gamma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return gaussian_alpha(self.gamma(t), self.num_states)

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        _, q, _ = _argmax_law(self.gamma(t), self.num_states)
        return (self.num_states / (self.num_states - 1) * q).to(t.dtype)

    def alpha_derivative(self, t: Tensor) -> Tensor:
        return gaussian_alpha_derivative(self.gamma(t), self.num_states) * (self.gamma_max - self.gamma_min)


def relaxed_latent(
    x0: Tensor,
    gamma: Tensor,
    temperature: float | None,
    *,
    vocab_size: int,
    mask_id: int | None,
    loss_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """A draw of the Gaussian latent w_t of x0 [B, L] at ``gamma`` [B] (module docstring), as
    (z_t = argmax(w_t) as ids [B, L], softmax(w_t / temperature) [B, L, V] float32 or None).

    The soft vectors put no mass on MASK; positions outside ``loss_mask`` are x0 and its one-hot. With
    ``temperature`` None only the ids are returned (the curriculum is over). As the temperature falls the
    soft vector tends to the one-hot of z_t. The latent is float32 [B, L, K], as in the reference: at a
    large vocabulary it is the curriculum's largest tensor.
    """
    k = num_states(vocab_size, mask_id)
    gamma = gamma.to(torch.float32).view(-1, 1, 1)
    signal, noise = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    onehot = torch.nn.functional.one_hot(_to_states(x0, mask_id), k).to(torch.float32)
    eps = torch.randn(*x0.shape, k, generator=generator, device=x0.device, dtype=torch.float32)
    latent = signal * onehot + noise * eps
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    z_t = torch.where(keep, _to_ids(latent.argmax(-1), mask_id), x0)
    if temperature is None:
        return z_t, None
    soft = torch.softmax(latent / temperature, dim=-1)
    if mask_id is not None:
        soft = torch.cat([soft[..., :mask_id], torch.zeros_like(soft[..., :1]), soft[..., mask_id:]], dim=-1)
    clean = torch.nn.functional.one_hot(x0, vocab_size).to(torch.float32)
    return z_t, torch.where(keep.unsqueeze(-1), soft, clean)


def argmax_trajectory(
    x0: Tensor,
    gammas: list[Tensor],
    *,
    vocab_size: int,
    mask_id: int | None,
    loss_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """The uniform-state latents z = argmax(w) of x0 [B, L] at each of ``gammas`` (each [B]) along ONE Gaussian
    path: w = a(gamma) onehot(x0) + s(gamma) eps with the same eps for every gamma (the deterministic trajectory
    of Duo's consistency distillation, its PF-ODE path under the optimal denoiser; the reference's
    ``Distillation._sample_trajectory``). Positions outside ``loss_mask`` stay x0."""
    k = num_states(vocab_size, mask_id)
    onehot = torch.nn.functional.one_hot(_to_states(x0, mask_id), k).to(torch.float32)
    eps = torch.randn(*x0.shape, k, generator=generator, device=x0.device, dtype=torch.float32)
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    latents = []
    for gamma in gammas:
        gamma = gamma.to(torch.float32).view(-1, 1, 1)
        latent = torch.sigmoid(-gamma).sqrt() * onehot + torch.sigmoid(gamma).sqrt() * eps
        latents.append(torch.where(keep, _to_ids(latent.argmax(-1), mask_id), x0))
    return latents


def curriculum_temperature(
    step: int,
    start_step: int = CURRICULUM_START,
    end_step: int = CURRICULUM_END,
    log10_start: float = LOG10_TEMPERATURE_START,
    log10_end: float = LOG10_TEMPERATURE_END,
) -> float | None:
    """The softmax temperature tau of the curriculum at a training step, or None once it is over.

    10^log10_start before ``start_step``, then log10 tau linear in the step down to log10_end at
    ``end_step``; None after ``end_step``: train on hard ids with :func:`unmask.bounds.uniform.uniform_nelbo`.
    The reference (``DUO._compute_gumbel_tau_inverse`` and ``DUO.nll``) switches to the hard loss at
    step > end too, but at step == end uses tau = 1e-10 where this gives 10^log10_end; its OpenWebText
    script overrides the defaults with tau = 10^-3 throughout steps 0 to 500,000 and gamma in [-3.55, -1.85].
    """
    if step > end_step:
        return None
    if step < start_step:
        return 10.0**log10_start
    fraction = (step - start_step) / max(end_step - start_step, 1)
    return 10.0 ** (log10_start + fraction * (log10_end - log10_start))


def duo_curriculum_loss(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    temperature: float,
    schedule: Schedule | str,
    mask_id: int | None,
    vocab_size: int | None = None,
    gamma_min: float = GAMMA_MIN,
    gamma_max: float = GAMMA_MAX,
    t: Tensor | None = None,
    antithetic: bool = True,
    loss_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Duo's curriculum loss per sequence in nats (the reference's ``DUO.nll`` in training, mode "simple").

    t ~ U[0, 1] (antithetic; ``t`` [B] replaces the draw), gamma_t linear on [gamma_min, gamma_max],
    (z_t, soft) = :func:`relaxed_latent`, and the loss is sum_i :func:`uniform_token_loss` at z_t with
    the :class:`GaussianSchedule`'s alpha_t and alpha'_t. The denoiser is called with the soft vectors
    [B, L, V] (float32, no mass on MASK) in place of ids, and must embed each as the probability-weighted
    mixture of its input embeddings.

    Its time input is schedule.time_of_alpha(alpha_t): the time at which the run's own ``schedule``
    (the one of the hard-id loss after the curriculum) has the same alpha. The reference conditions its
    model on sigma = -log alpha_t of the discrete process in both phases; a function of alpha_t alone keeps
    the conditioning the same before and after the switch. The reference draws t on [1e-3, 1]; the
    Gaussian schedule's alpha stays inside (0, 1), so no floor is needed here.
    """
    schedule = get_schedule(schedule)
    if vocab_size is None:
        if mask_id is None:
            raise ValueError("vocab_size is needed when there is no mask_id")
        vocab_size = mask_id + 1
    k = num_states(vocab_size, mask_id)
    if t is None:
        t = sample_times(x0.shape[0], antithetic=antithetic, generator=generator, device=x0.device)
    gamma = gamma_min + t.to(x0.device, torch.float64) * (gamma_max - gamma_min)
    p, q, dp = _argmax_law(gamma, k)
    alpha, one_minus_alpha = (k * p - 1) / (k - 1), k / (k - 1) * q
    alpha_rate = k / (k - 1) * dp * (gamma_max - gamma_min)

    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    z_t, soft = relaxed_latent(x0, gamma, temperature, vocab_size=vocab_size, mask_id=mask_id, loss_mask=keep,
                               generator=generator)
    model_time = schedule.time_of_alpha(alpha).float()
    logits = denoise(denoiser, soft, model_time, where=keep, attention_mask=None if loss_mask is None else keep)
    rows = keep.nonzero()[:, 0]
    token_loss = uniform_token_loss(logits, x0[keep], z_t[keep], alpha[rows], one_minus_alpha[rows],
                                    alpha_rate[rows], mask_id=mask_id)
    return per_row_sum(token_loss, keep)
