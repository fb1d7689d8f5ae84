"""MDLM (Sahoo et al. 2024): the SUBS objective in continuous or discrete time, with the paper's ablations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.bounds.conditional import RowNoise, count_bound, discrete_bound, time_bound
from unmask.bounds.mdlm import nelbo, nelbo_discrete
from unmask.denoiser import Denoiser, capabilities
from unmask.errors import ConfigError
from unmask.kinds.base import ModelKind, padding_of, seen_of

if TYPE_CHECKING:
    from unmask.config import Config, ObjectiveConfig


class MDLMKind(ModelKind):
    name = "mdlm"
    label = "MDLM"
    discrete_time = True
    distillation = "sdtt"
    adaptable = True
    prompted = True

    def validate(self, config: Config) -> None:
        super().validate(config)
        objective = config.objective
        if not objective.zero_masking and self.time_steps(objective) == 0:
            raise ConfigError("objective.zero_masking=false needs the discrete-time bound: "
                              "set objective.discrete_steps=1000")

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        x0, loss_mask = batch["input_ids"], batch["loss_mask"]
        steps = self.time_steps(objective) if discrete_steps is None else discrete_steps
        common = dict(schedule=objective.schedule, mask_id=mask_id, num_t=num_t, antithetic=objective.antithetic,
                      loss_mask=padding_of(batch), attention_mask=seen_of(batch), generator=generator,
                      carry_over=objective.carry_over)
        if steps > 0:
            loss = nelbo_discrete(model, x0, steps=steps, zero_masking=objective.zero_masking, **common)
        else:
            loss = nelbo(model, x0, **common)
        return loss, loss_mask.sum(1)

    def conditional_losses(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                           mask_id: int, noise: RowNoise) -> Tensor:
        common = dict(mask_id=mask_id, schedule=objective.schedule)
        steps = self.time_steps(objective)
        if steps:
            return discrete_bound(model, x0, scored, noise, steps=steps, carry_over=objective.carry_over,
                                  zero_masking=objective.zero_masking, **common)
        if self._counts(model, objective):
            return count_bound(model, x0, scored, noise, **common)
        return time_bound(model, x0, scored, noise, carry_over=objective.carry_over, **common)

    def conditional_samples(self, model: Denoiser, objective: ObjectiveConfig, scored_tokens: int,
                            num_t: int) -> int:
        # One masked token given a clean context: the count estimator is -log p(token | context) itself.
        return 1 if scored_tokens <= 1 and self._counts(model, objective) else num_t

    def _counts(self, model: Denoiser, objective: ObjectiveConfig) -> bool:
        """The count estimator applies: continuous time, SUBS, and a denoiser that does not read t."""
        return not self.time_steps(objective) and objective.carry_over and not capabilities(model).reads_time


MDLM = MDLMKind()
