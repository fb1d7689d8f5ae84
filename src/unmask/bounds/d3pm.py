"""D3PM with the absorbing process (Austin et al. 2021), the MDLM paper's D3PM row.

D3PM's bound is the discrete-time variational bound L_vb = L_T + sum_{t > 1} L_{t-1} + L_0 of
Austin et al. (section 2), with L_{t-1} = KL(q(x_s | x_t, x0) || p_theta(x_s | x_t)) and the model's
reverse step p_theta(x_s | x_t) = sum_x0' q(x_s | x_t, x0') p_theta(x0' | x_t) built from its x0
prediction. The MDLM paper's D3PM row is the SUBS ablation taken all the way (docs/math.md §6):

- discrete time, T = ``objective.discrete_steps`` (1000 unless set): :func:`unmask.bounds.mdlm.nelbo_discrete`,
  whose step i goes from t = i / T to s = (i - 1) / T; its first step (s = 0, alpha_0 = 1, so the
  posterior is the clean token) is L_0. L_T, the prior term, is left out as for MDLM (alpha_1 ~ 0);
- no zero masking: the softmax includes MASK, and the KL is the D3PM posterior KL with that mass
  (``zero_masking=False`` in :func:`unmask.bounds.mdlm.nelbo_discrete`);
- no carry-over: D3PM's reverse step copies an unmasked token by construction (q(x_t | x_s) is 0
  unless x_s = x_t), so its KL is 0 at unmasked positions and the diffusion terms score masked
  positions only. Where carry-over's absence shows is the reconstruction term the reference code
  adds at t = 0: -log p_theta(x0 | x_0 = x0) at every position, the model asked for the tokens it
  sees, with MASK in its softmax. It is >= 0 (so the sum stays an upper bound) and is ~0 for a model
  that has learnt to copy what it sees.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.bounds.masking import per_row_sum
from unmask.bounds.mdlm import nelbo_discrete
from unmask.bounds.nll import masked_nll
from unmask.denoiser import Denoiser, denoise
from unmask.schedules import Schedule

D3PM_STEPS = 1000  # T of the paper's D3PM row


def reconstruction_nll(denoiser: Denoiser, x0: Tensor, *, loss_mask: Tensor | None = None,
                       scored: Tensor | None = None) -> Tensor:
    """-sum_i log p_theta(x0^i | x0) per sequence: the denoiser at t = 0 on the clean sequence, every
    counted position scored (or those of ``scored``: a continuation's), every id (MASK included) in the
    softmax."""
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    where = keep if scored is None else scored.bool()
    t = torch.zeros(x0.shape[0], device=x0.device)
    logits = denoise(denoiser, x0, t, where=where, attention_mask=None if loss_mask is None else keep)
    return per_row_sum(masked_nll(logits, x0[where], None), where)


def d3pm_nelbo(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    schedule: Schedule | str,
    mask_id: int,
    steps: int = D3PM_STEPS,
    num_t: int = 1,
    antithetic: bool = True,
    loss_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """D3PM's bound per sequence in nats: T-step KL terms (averaged over ``num_t`` steps drawn per
    sequence) plus the reconstruction term, which has no noise and is computed once."""
    diffusion = nelbo_discrete(denoiser, x0, schedule=schedule, mask_id=mask_id, steps=steps, num_t=num_t,
                               antithetic=antithetic, loss_mask=loss_mask, generator=generator, zero_masking=False)
    return diffusion + reconstruction_nll(denoiser, x0, loss_mask=loss_mask)
