"""Every objective a run can train with, chosen by ``objective.name``, for training and evaluation alike.

:func:`sequence_losses` is the one dispatch from a run's :class:`ObjectiveConfig` to the math:
``mdlm`` (the paper's SUBS objective, continuous or discrete time, with its ablations:
:mod:`unmask.objective`), ``ar`` (the autoregressive baseline on the same backbone), ``sedd``
(score entropy with the absorbing process: :mod:`.sedd`), ``d3pm`` (absorbing D3PM, the paper's
D3PM row: :mod:`.d3pm`) and ``bd3lm`` (block diffusion: :mod:`.bd3lm`). It returns per-sequence
losses in nats and the number of tokens each one scores, so that callers can form per-token
figures over any number of batches, processes or time samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.config import ObjectiveConfig
from unmask.denoiser import Denoiser
from unmask.objective import ar_loss, ar_token_count, nelbo, nelbo_discrete
from unmask.objectives.bd3lm import FULL_RANGE, bd3lm_nelbo
from unmask.objectives.d3pm import d3pm_nelbo
from unmask.objectives.sedd import sedd_nelbo

# Objectives whose bound can be taken at any number of steps T (``unmask eval --discrete-steps``).
DISCRETE_TIME_OBJECTIVES = ("mdlm", "d3pm")


def sequence_losses(
    model: Denoiser,
    batch: dict[str, Tensor],
    objective: ObjectiveConfig,
    mask_id: int,
    *,
    generator: torch.Generator | None = None,
    num_t: int = 1,
    discrete_steps: int | None = None,
    train: bool = False,
) -> tuple[Tensor, Tensor]:
    """(loss [B], scored tokens [B]) for a batch {"input_ids", "loss_mask"}.

    ``discrete_steps`` overrides the configuration's choice of bound (evaluation at several T) of
    the objectives in ``DISCRETE_TIME_OBJECTIVES``. ``train`` marks the training loss: only it draws
    bd3lm's masking rates from the clipped range.
    """
    x0, loss_mask = batch["input_ids"], batch["loss_mask"]
    padded = None if bool(loss_mask.all()) else loss_mask
    if objective.name == "ar":
        return ar_loss(model, x0, mask_id=mask_id, loss_mask=padded), ar_token_count(x0, loss_mask)
    if discrete_steps is not None and objective.name not in DISCRETE_TIME_OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} has no discrete-time bound")
    steps = objective.time_steps if discrete_steps is None else discrete_steps
    common = dict(
        schedule=objective.schedule,
        mask_id=mask_id,
        num_t=num_t,
        antithetic=objective.antithetic,
        loss_mask=padded,
        generator=generator,
    )
    if objective.name == "sedd":
        loss = sedd_nelbo(model, x0, **common)
    elif objective.name == "bd3lm":
        loss = bd3lm_nelbo(model, x0, block_size=objective.block_size,
                           mask_rate_range=objective.mask_rate_range if train else FULL_RANGE, **common)
    elif objective.name == "d3pm":
        loss = d3pm_nelbo(model, x0, steps=steps, **common)
    elif steps > 0:
        loss = nelbo_discrete(model, x0, steps=steps, carry_over=objective.carry_over,
                              zero_masking=objective.zero_masking, **common)
    else:
        loss = nelbo(model, x0, carry_over=objective.carry_over, **common)
    return loss, loss_mask.sum(1)
