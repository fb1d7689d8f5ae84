"""Token draws from p_theta(x0 | x_t): SUBS zero masking, temperature, top-k, nucleus, float64.

Categorical draws are made by inverse CDF in float64. Float32 Gumbel noise truncates the tail of
the noise distribution, which lowers the effective temperature: samples look better (lower
generative perplexity) and less diverse (lower entropy) than the model really is (Zheng et al.
2024, arXiv 2409.02908).
"""

from __future__ import annotations

import torch
from torch import Tensor


def filtered_probs(
    logits: Tensor,
    mask_id: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Float64 probabilities [N, V] after zero masking, temperature, top-k and nucleus filtering.

    ``temperature == 0`` gives a one-hot at the argmax. top-k keeps the k most likely ids; top-p
    keeps the smallest set of most likely ids whose mass reaches p (the most likely id always
    stays). Filtering renormalises what remains; k >= V and p = 1 change nothing.
    """
    # A fresh float64 copy, edited in place: with a 50k vocabulary every extra pass over [N, V]
    # costs about as much as the network call that produced the logits.
    logits = logits.to(torch.float64, copy=True)
    logits[..., mask_id] = float("-inf")
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double()
    if temperature != 1.0:
        logits /= temperature
    probs = torch.softmax(logits, dim=-1)
    filtered = False
    if top_k is not None and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
        filtered = True
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        keep_sorted = mass_before < top_p * sorted_probs.sum(-1, keepdim=True)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, 0.0)
        filtered = True
    return probs / probs.sum(-1, keepdim=True) if filtered else probs


def draw_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One id per row of float64 probabilities [N, V], by inverse CDF with a float64 uniform."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
    ids = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    # The first id whose CDF exceeds u * total has mass, except when rounding interferes: u * total
    # rounds up to the total itself (searchsorted answers V), or a parallel cumsum is not exactly
    # flat across an id without mass. Such rows (probability ~1e-16) take their last id with mass.
    no_mass = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1) == 0
    if bool(no_mass.any()):
        ids[no_mass] = (probs[no_mass] > 0).long().cumsum(-1).argmax(-1)
    return ids
