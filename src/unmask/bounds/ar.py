"""The autoregressive baseline's loss: next-token NLL on the same backbone, causal (``docs/math.md`` §8)."""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.bounds.masking import per_row_sum, seen_rows
from unmask.bounds.nll import masked_nll
from unmask.denoiser import Denoiser, denoise


def ar_loss(
    model: Denoiser,
    x0: Tensor,
    *,
    mask_id: int | None = None,
    loss_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Autoregressive next-token NLL per sequence in nats, for the AR baseline on the same backbone.

    ``model`` must be causal (a :class:`unmask.models.DiT` with ``causal=True``). Position i
    predicts token i + 1; ``loss_mask`` marks the tokens that count as targets; ``attention_mask`` the
    tokens seen (by default the counted ones).
    """
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    scored = torch.zeros_like(keep)
    scored[:, :-1] = keep[:, 1:]
    t = torch.zeros(x0.shape[0], device=x0.device)
    logits = denoise(model, x0, t, where=scored, attention_mask=seen_rows(keep, attention_mask, 1))
    targets = x0[:, 1:][scored[:, :-1]]
    token_nll = masked_nll(logits, targets, mask_id)
    return per_row_sum(token_nll, scored)


def ar_token_count(x0: Tensor, loss_mask: Tensor | None = None) -> Tensor:
    """Number of targets per sequence that :func:`ar_loss` scores (every counted token but the first)."""
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    return keep[:, 1:].sum(1)
