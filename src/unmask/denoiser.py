"""The denoiser protocol: what the objective and the samplers need from a model.

A denoiser is any callable

    denoiser(x_t: LongTensor[B, L], t: FloatTensor[B]) -> logits FloatTensor[B, L, V]

where V counts every id including MASK (by default MASK is the last id, V - 1; a tokenizer may
bring its own mask id). The logits are raw: the SUBS parameterization (no mass on MASK, unmasked
tokens copied) is applied by :mod:`unmask.objective`, never by the denoiser. ``t`` is the
diffusion time; a denoiser without time conditioning simply ignores it.

Two optional capabilities make a denoiser faster; both are announced by attributes:

- ``supports_positions = True``: it also accepts ``where: BoolTensor[B, L]`` and then returns
  logits only at those positions, as ``FloatTensor[N, V]`` in row-major order
  (``N = where.sum()``). The output head and the cross-entropy then cost only what is used.
- ``supports_attention_mask = True``: it accepts ``attention_mask: BoolTensor[B, L]``
  (True = real token) so that padding takes no part in attention.

A Hugging Face masked LM fits with a few lines::

    class HFDenoiser:
        def __init__(self, model):
            self.model = model
        def __call__(self, x_t, t):
            return self.model(input_ids=x_t).logits

:func:`denoise` is the single place where these calls are made.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Denoiser(Protocol):
    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor: ...


def denoise(
    denoiser: Denoiser,
    x_t: Tensor,
    t: Tensor,
    *,
    where: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Call ``denoiser``; with ``where`` return logits [N, V] at those positions only."""
    kwargs = {}
    if attention_mask is not None and getattr(denoiser, "supports_attention_mask", False):
        kwargs["attention_mask"] = attention_mask
    if where is not None and getattr(denoiser, "supports_positions", False):
        return denoiser(x_t, t, where=where, **kwargs)
    logits = denoiser(x_t, t, **kwargs)
    return logits if where is None else logits[where]


class FullHead(torch.nn.Module):
    """Wraps a denoiser so that it computes every position: the plain path the fast one must match."""

    supports_attention_mask = True

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_t: Tensor, t: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return denoise(self.denoiser, x_t, t, attention_mask=attention_mask)
