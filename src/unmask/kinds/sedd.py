"""SEDD with the absorbing process (Lou et al. 2024): score entropy, its logits a log concrete score."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.bounds.conditional import RowNoise, time_bound
from unmask.bounds.sedd import sedd_nelbo, sedd_token_loss
from unmask.denoiser import Denoiser
from unmask.kinds.base import ModelKind, padding_of

if TYPE_CHECKING:
    from unmask.config import ObjectiveConfig


class SEDDKind(ModelKind):
    name = "sedd"
    label = "SEDD (absorbing)"
    parameterization = "sedd"
    study_overrides = ("model.time_conditioning=true",)
    needs_time = "reads the output as a score at the noise level t, so the model must see t"
    continuous_only = "has its own parameterization"

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        self.check_discrete_steps(discrete_steps)
        loss = sedd_nelbo(model, batch["input_ids"], schedule=objective.schedule, mask_id=mask_id, num_t=num_t,
                          antithetic=objective.antithetic, loss_mask=padding_of(batch), generator=generator)
        return loss, batch["loss_mask"].sum(1)

    def conditional_losses(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                           mask_id: int, noise: RowNoise) -> Tensor:
        # The score reads t, so times are drawn (no count estimator); the loss is the score entropy.
        return time_bound(model, x0, scored, noise, mask_id=mask_id, schedule=objective.schedule,
                          token_loss=sedd_token_loss)


SEDD = SEDDKind()
