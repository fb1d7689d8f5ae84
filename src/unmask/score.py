"""The concrete score of the masking process, read from a denoiser's output, and SEDD's sampling step.

SEDD (Lou et al. 2024, "Discrete Diffusion Modeling by Estimating the Ratios of the Data
Distribution") learns the concrete score s(x_t)_y = p_t(y) / p_t(x_t), the ratio of the marginal
at a neighbour y of x_t (one position changed) to the marginal at x_t. Under the masking process
only the masked positions have neighbours the reverse process can move to, and for a masked
position i and a real token y (notation of ``docs/math.md`` §1, alpha_t = exp(-sigma_t)):

    p_t(x_t with x^i = y) / p_t(x_t) = [alpha_t / (1 - alpha_t)] p(x0^i = y | x_t)
                                     = p(x0^i = y | x_t) / expm1(sigma_t),

because the two sequences differ only in whether position i kept its clean token (probability
alpha_t, which requires x0^i = y) or lost it (probability 1 - alpha_t). So a score and an x0
prediction carry the same information, and two readings of a denoiser's logits [N, V] are
supported (``parameterization``):

- ``"sedd"`` (a SEDD model, as the reference MDLM code trains it): the logits ARE the log-score up
  to the noise level, log s_y = logits_y - log expm1(sigma_t) - log(V - 1). The log(V - 1) makes a
  freshly initialised network (all logits 0) start at the score of a uniform x0 prediction.
  Nothing forces sum_y exp(logits_y) / (V - 1) to be 1: SEDD learns the normaliser too.
- ``"subs"`` (MDLM, and any x0 prediction): log s_y = log p_theta(y | x_t) - log expm1(sigma_t),
  with p_theta the zero-masked softmax (MASK gets no mass).

The entry of the current token (MASK) is log 1 = 0 in both: a sequence's ratio to itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PARAMETERIZATIONS = ("subs", "sedd")


def log_score(logits: Tensor, sigma: Tensor, *, mask_id: int, parameterization: str) -> Tensor:
    """log s(x_t)_y [N, V] (float64) at masked positions, from the logits [N, V] there and the total
    noise sigma_t ([N] or a scalar); the MASK entry is 0."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")
    logits = logits.to(torch.float64, copy=True)
    logits[..., mask_id] = float("-inf")
    if parameterization == "subs":
        prediction = torch.log_softmax(logits, dim=-1)  # log p_theta(y | x_t)
    else:
        prediction = logits - math.log(logits.shape[-1] - 1)
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=logits.device)
    result = prediction - torch.log(torch.expm1(sigma)).reshape(-1, 1)
    result[..., mask_id] = 0.0
    return result


def tweedie_unmask_probability(logits: Tensor, sigma_t: Tensor, sigma_s: Tensor, *, mask_id: int,
                               parameterization: str) -> Tensor:
    """The probability [N] (float64) that a masked position takes a token between t and s < t in
    SEDD's Tweedie tau-leaping step (Lou et al. 2024, section 4.2).

    The Tweedie step draws x_s^i from [exp(-(sigma_t - sigma_s) Q) s(x_t)]_y exp((sigma_t - sigma_s) Q)(x_t, y),
    which for a masked position and the absorbing rate matrix Q works out to

        P(x_s^i = y) = expm1(sigma_t - sigma_s) s_y            for every real token y,
        P(x_s^i = MASK) = 1 - expm1(sigma_t - sigma_s) sum_y s_y.

    With s_y = p(y | x_t) / expm1(sigma_t) the token mass is (alpha_s - alpha_t) / (1 - alpha_t) p(y | x_t):
    the exact reverse step, the ancestral sampler's (paper eq. 7), whenever the score's x0
    prediction sums to 1 (always for ``"subs"``). A SEDD score need not: its mass sum_y s_y sets how
    fast positions unmask, and where it asks for more than 1 the MASK branch is empty (the reference
    draws from the same unnormalised weights, on which a negative MASK weight never wins). Given
    that a position unmasks, its token is drawn in proportion to s_y, i.e. from softmax(logits)
    over the real tokens.
    """
    score = log_score(logits, sigma_t, mask_id=mask_id, parameterization=parameterization).exp()
    score[..., mask_id] = 0.0  # the current token: staying masked is the remaining mass
    step = torch.expm1(torch.as_tensor(sigma_t - sigma_s, dtype=torch.float64, device=score.device))
    return (step.reshape(-1) * score.sum(-1)).clamp(0.0, 1.0)
