"""SEDD with the absorbing process (Lou et al. 2024), as the reference MDLM code trains it.

The denoiser's logits are read as a log concrete score (:mod:`unmask.score`, parameterization
"sedd"): at a masked position, for every real token y,

    log s_y = logits_y - log expm1(sigma_t) - log(V - 1),        and 0 for the current token (MASK).

The bound is SEDD's diffusion-weighted denoising score entropy (Lou et al. 2024, section 3.3, the
likelihood bound built from the denoising score entropy of Theorem 3.4):

    -log p(x0) <= int_0^1 E_{x_t ~ q(.|x0)} sum_{y != x_t} Q_t(x_t, y) [ s_y - r_y log s_y + K(r_y) ] dt,

with r_y = q_t(y | x0) / q_t(x_t | x0) and K(r) = r (log r - 1). For the masking process the only
moves that reach x_t are "position i was y, then masked", at rate Q_t = sigma'(t), for every masked
position i and real token y. The ratio r_y is alpha_t / (1 - alpha_t) = 1 / expm1(sigma_t) =: q for
y = x0^i and 0 for every other y (K(0) = 0). Per masked position this is the reference's

    sigma'(t) [ sum_{y != MASK} exp(log s_y) - q log s_{x0} + q (log q - 1) ].

Write p_hat = softmax over the real tokens of the logits (SUBS zero masking) and
Z = sum_{y != MASK} exp(logits_y) / (V - 1), so that s_y = q Z p_hat_y. Then the bracket is

    q Z - q (log p_hat_x0 + log Z + log q) + q log q - q = q [ -log p_hat_x0 + (Z - 1 - log Z) ],

and the weight sigma'(t) q = sigma'(t) / expm1(sigma_t) is the MDLM weight -alpha'_t / (1 - alpha_t)
(paper eq. 10). So SEDD's bound is the MDLM estimator (:func:`unmask.bounds.mdlm.nelbo`) with the
per-token loss -log p_hat(x0) + (Z - 1 - log Z), computed in this form: without the two q log q
terms that cancel (they grow like log(1 / t) near t = 0), from the fused NLL and its normaliser.

Two facts follow, both tested against the enumerable toy distribution: Z - 1 - log Z >= 0 with
equality only at Z = 1, so SEDD's bound is never below the MDLM bound of its own x0 prediction
p_hat; and with the exact score (Z = 1, p_hat the exact conditional) it is the MDLM bound of the
exact denoiser, i.e. -log p(x0).

The denoiser sees the time t (the DiT's conditioning input), not sigma_t as in the reference: sigma
is a fixed function of t, so the two carry the same information. SEDD runs need
``model.time_conditioning=true`` (checked by :func:`unmask.validation.validate`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unmask.bounds.mdlm import nelbo
from unmask.bounds.nll import masked_nll_and_logsumexp
from unmask.denoiser import Denoiser


def sedd_token_loss(logits: Tensor, targets: Tensor, mask_id: int) -> Tensor:
    """The denoising score entropy of each masked position divided by q = 1 / expm1(sigma_t):
    -log p_hat(target) + (Z - 1 - log Z), from logits [N, V] read as a log-score (module docstring)."""
    nll, logsumexp = masked_nll_and_logsumexp(logits, targets, mask_id)
    log_z = logsumexp - math.log(logits.shape[-1] - 1)
    return nll + (torch.expm1(log_z) - log_z)


def sedd_nelbo(denoiser: Denoiser, x0: Tensor, **options: Any) -> Tensor:
    """SEDD's bound per sequence in nats (the diffusion-weighted denoising score entropy), averaged over
    ``num_t`` times: :func:`unmask.bounds.mdlm.nelbo` with SEDD's per-token loss, and the same ``options``
    (``schedule``, ``mask_id``, ``num_t``, ``t``, ``antithetic``, ``loss_mask``, ``generator``)."""
    return nelbo(denoiser, x0, token_loss=sedd_token_loss, **options)
