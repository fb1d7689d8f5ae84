"""The denoiser protocol: what the objective and the samplers need from a model.

A denoiser is any callable

    denoiser(x_t: LongTensor[B, L], t: FloatTensor[B]) -> logits FloatTensor[B, L, V]

where V counts every id including MASK (by default MASK is the last id, V - 1; a tokenizer may
bring its own mask id). The logits are raw: the SUBS parameterization (no mass on MASK, unmasked
tokens copied) is applied by :mod:`unmask.objective`, never by the denoiser. ``t`` is the
diffusion time; a denoiser without time conditioning simply ignores it.

Two optional capabilities make a denoiser faster; both are announced by attributes of the model
itself (a wrapper such as DDP or ``torch.compile`` need not copy them: :func:`capabilities` reads
them from the model inside):

- ``supports_positions = True``: it also accepts ``where: BoolTensor[B, L]`` and then returns
  logits only at those positions, as ``FloatTensor[N, V]`` in row-major order
  (``N = where.sum()``). The output head and the cross-entropy then cost only what is used.
- ``supports_attention_mask = True``: it accepts ``attention_mask: BoolTensor[B, L]``
  (True = real token) so that padding takes no part in attention.
- ``supports_block_diffusion = True``: it accepts ``block_size: int`` (block-causal attention)
  and with it ``x0: LongTensor[B, L]``, the clean sequence: the vectorised block diffusion pass,
  where every block of x_t sees itself and the clean blocks before it (see
  :mod:`unmask.models.block_attention`); and ``cache``, a key/value cache of finished blocks that
  the new tokens attend to (block-by-block sampling). A denoiser without it is run block by block
  on whole sequences instead.

One more attribute says how a model uses its input: ``reads_time = False`` announces that its output
does not depend on ``t`` (a DiT without time conditioning, a masked LM). The conditional bounds then
use an estimator that needs no time (:mod:`unmask.bounds.conditional`); a model that does not say
is taken to read ``t``.

Two optional hooks concern training, not the math: ``set_training_step(step)`` is called before every
optimizer step (an adapted causal LM anneals its attention mask with it: :mod:`unmask.models.causal_lm`),
and ``checkpoint_activations()`` replaces unmask's per-block activation checkpointing by the model
library's own.

A Hugging Face masked LM fits with a few lines::

    class HFDenoiser:
        def __init__(self, model):
            self.model = model
        def __call__(self, x_t, t):
            return self.model(input_ids=x_t).logits

:func:`denoise` is the single place where these calls are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

# Where wrappers keep the model they wrap: DDP (``module``) and torch.compile (``_orig_mod``).
_WRAPPER_ATTRIBUTES = ("module", "_orig_mod")


class Denoiser(Protocol):
    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor: ...


def unwrap(denoiser: Denoiser) -> Denoiser:
    """The model inside any DDP or torch.compile wrappers, or ``denoiser`` itself."""
    while True:
        inner = next((getattr(denoiser, name) for name in _WRAPPER_ATTRIBUTES
                      if isinstance(getattr(denoiser, name, None), torch.nn.Module)), None)
        if inner is None:
            return denoiser
        denoiser = inner


@dataclass(frozen=True)
class Capabilities:
    positions: bool
    attention_mask: bool
    block_diffusion: bool = False
    reads_time: bool = True


def capabilities(denoiser: Denoiser) -> Capabilities:
    """What the model inside ``denoiser`` accepts besides ``(x_t, t)``."""
    model = unwrap(denoiser)
    return Capabilities(positions=bool(getattr(model, "supports_positions", False)),
                        attention_mask=bool(getattr(model, "supports_attention_mask", False)),
                        block_diffusion=bool(getattr(model, "supports_block_diffusion", False)),
                        reads_time=bool(getattr(model, "reads_time", True)))


def denoise(
    denoiser: Denoiser,
    x_t: Tensor,
    t: Tensor,
    *,
    where: Tensor | None = None,
    attention_mask: Tensor | None = None,
    block_size: int | None = None,
    x0: Tensor | None = None,
    cache: object | None = None,
) -> Tensor:
    """Call ``denoiser``; with ``where`` return logits [N, V] at those positions only.

    ``block_size``, ``x0`` and ``cache`` ask for block diffusion's attention, which the denoiser must
    support; each is passed on only when given.
    """
    can = capabilities(denoiser)
    kwargs = {}
    if attention_mask is not None and can.attention_mask:
        kwargs["attention_mask"] = attention_mask
    blockwise = {name: value for name, value in (("block_size", block_size), ("x0", x0), ("cache", cache))
                 if value is not None}
    if blockwise:
        if not can.block_diffusion:
            raise ValueError("this denoiser has no block diffusion attention (supports_block_diffusion)")
        kwargs.update(blockwise)
    if where is not None and can.positions:
        return denoiser(x_t, t, where=where, **kwargs)
    logits = denoiser(x_t, t, **kwargs)
    return logits if where is None else logits[where]

