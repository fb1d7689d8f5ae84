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
    scored: Tensor | None = None,
) -> Tensor:
    """Autoregressive next-token NLL per sequence in nats, for the AR baseline on the same backbone.

    ``model`` must be causal (a :class:`unmask.models.DiT` with ``causal=True``). Position i
    predicts token i + 1; ``loss_mask`` marks the tokens that count as targets; ``attention_mask`` the
    tokens seen (by default the counted ones: padding hidden). ``scored`` [B, L] marks the tokens whose
    -log p is summed (default: every counted token but the first); a continuation's tokens give the exact
    -log p(continuation | the tokens before it) (``docs/math.md`` §9). The first token is never scored:
    nothing precedes it.
    """
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    targets_mask = keep[:, 1:] if scored is None else scored[:, 1:].bool()
    predicting = torch.zeros_like(keep)
    predicting[:, :-1] = targets_mask
    t = torch.zeros(x0.shape[0], device=x0.device)
    logits = denoise(model, x0, t, where=predicting, attention_mask=seen_rows(keep, attention_mask, 1))
    targets = x0[:, 1:][predicting[:, :-1]]
    token_nll = masked_nll(logits, targets, mask_id)
    return per_row_sum(token_nll, predicting)


def ar_greedy_matches(model: Denoiser, x0: Tensor, scored: Tensor, *, mask_id: int | None = None) -> Tensor:
    """Per row [B]: whether greedy decoding after the tokens before ``scored`` gives exactly x0's tokens there.

    Greedy decoding takes the most likely next token at every step; as long as it has matched x0 its
    prefix is x0's, so one teacher-forced pass tells: x0 at every scored position is the argmax of the
    prediction from the position before it (MASK never predicted).
    """
    predicting = torch.zeros_like(scored, dtype=torch.bool)
    predicting[:, :-1] = scored[:, 1:].bool()
    logits = denoise(model, x0, torch.zeros(x0.shape[0], device=x0.device), where=predicting)
    logits = logits.float()
    if mask_id is not None:
        logits[:, mask_id] = float("-inf")
    wrong = (logits.argmax(-1) != x0[:, 1:][predicting[:, :-1]]).long()
    return per_row_sum(wrong, predicting) == 0


def ar_token_count(x0: Tensor, loss_mask: Tensor | None = None) -> Tensor:
    """Number of targets per sequence that :func:`ar_loss` scores (every counted token but the first)."""
    keep = torch.ones_like(x0, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    return keep[:, 1:].sum(1)
