"""D3PM with the absorbing process (Austin et al. 2021), the MDLM paper's D3PM row: discrete time, no
zero masking, no carry-over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.bounds.conditional import RowNoise, discrete_bound
from unmask.bounds.d3pm import D3PM_STEPS, d3pm_nelbo, reconstruction_nll
from unmask.denoiser import Denoiser
from unmask.errors import ConfigError
from unmask.kinds.base import ModelKind, padding_of, switched_off

if TYPE_CHECKING:
    from unmask.config import Config, ObjectiveConfig


class D3PMKind(ModelKind):
    name = "d3pm"
    label = "D3PM (absorbing)"
    discrete_time = True
    default_time_steps = D3PM_STEPS

    def validate(self, config: Config) -> None:
        super().validate(config)
        objective = config.objective
        if switched_off(objective):
            raise ConfigError(f"d3pm has neither zero masking nor carry-over already: drop {switched_off(objective)}")
        if self.time_steps(objective) == 0:
            raise ConfigError(f"d3pm is a discrete-time objective: set objective.discrete_steps to T >= 1 "
                              f"(or leave it unset for {D3PM_STEPS})")

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        steps = self.time_steps(objective) if discrete_steps is None else discrete_steps
        loss = d3pm_nelbo(model, batch["input_ids"], schedule=objective.schedule, mask_id=mask_id, steps=steps,
                          num_t=num_t, antithetic=objective.antithetic, loss_mask=padding_of(batch),
                          generator=generator)
        return loss, batch["loss_mask"].sum(1)

    def conditional_losses(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                           mask_id: int, noise: RowNoise) -> Tensor:
        # d3pm_nelbo's two terms with the continuation alone noised and scored; the reconstruction term
        # has no noise and is the same in every sample.
        diffusion = discrete_bound(model, x0, scored, noise, mask_id=mask_id, schedule=objective.schedule,
                                   steps=self.time_steps(objective), zero_masking=False)
        return diffusion + reconstruction_nll(model, x0, scored=scored)


D3PM = D3PMKind()
