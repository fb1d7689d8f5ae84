"""Per-token losses under the SUBS parameterization: -log p_theta(x0^i | x_t) with MASK given no mass.

SUBS (paper section 3.2.3; ``docs/math.md`` §2) makes two substitutions in the denoiser's softmax:
zero masking (MASK never gets probability) and carry-over unmasking (an unmasked token predicts
itself). :func:`masked_nll` is the first at the scored positions, fused and in float32 whatever the
logits' dtype; :func:`subs_log_probs` is both over whole sequences.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# The per-token loss at a scored position: (logits [N, V], targets [N], mask_id) -> nats [N].
TokenLoss = Callable[[Tensor, Tensor, int], Tensor]


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
