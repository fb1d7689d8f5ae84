"""Block diffusion (BD3-LM, Arriola et al., ICLR 2025): autoregressive across blocks, MDLM within each,
sampled block by block with a key/value cache to any length."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.bounds.blocks import FULL_RANGE, bd3lm_nelbo
from unmask.bounds.conditional import RowNoise, count_bound
from unmask.denoiser import Denoiser
from unmask.errors import ConfigError
from unmask.kinds.base import SLIDING, ModelKind, padding_of, seen_of
from unmask.sampling.blocks import BlockRun, CachedContext, block_template
from unmask.sampling.config import SamplerConfig
from unmask.sampling.process import Process
from unmask.sampling.run import Run, initial_state

if TYPE_CHECKING:
    from unmask.config import Config, ObjectiveConfig


class BD3LMKind(ModelKind):
    name = "bd3lm"
    label = "BD3-LM"
    beyond_window = SLIDING
    static_shapes = False
    objective_fields = ("mask_rate_range",)
    adaptable = True
    prompted = True

    def block_size(self, objective: ObjectiveConfig) -> int | None:
        return objective.block_size

    def validate(self, config: Config) -> None:
        super().validate(config)
        objective = config.objective
        if config.data.length % objective.block_size:
            raise ConfigError(f"objective.block_size ({objective.block_size}) must divide data.length "
                              f"({config.data.length}), e.g. 4, 8 or 16")
        if config.model.time_conditioning:
            raise ConfigError("objective.name=bd3lm gives every block its own time: set model.time_conditioning=false")
        if self.time_steps(objective) or not objective.carry_over or not objective.zero_masking:
            raise ConfigError("objective.name=bd3lm uses the continuous-time SUBS bound: drop "
                              "objective.discrete_steps, carry_over and zero_masking")

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        self.check_discrete_steps(discrete_steps)
        # Only training draws the masking rates from the clipped range; the bound uses all of [0, 1].
        rates = objective.mask_rate_range if step is not None else FULL_RANGE
        loss = bd3lm_nelbo(model, batch["input_ids"], block_size=objective.block_size, mask_rate_range=rates,
                           schedule=objective.schedule, mask_id=mask_id, num_t=num_t, antithetic=objective.antithetic,
                           loss_mask=padding_of(batch), attention_mask=seen_of(batch), generator=generator)
        return loss, batch["loss_mask"].sum(1)

    def conditional_losses(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                           mask_id: int, noise: RowNoise) -> Tensor:
        # Blocks wholly in the context are clean; each block of the continuation is bounded given the clean
        # blocks before it, with its own number of masks (a block diffusion model never reads t).
        return count_bound(model, x0, scored, noise, mask_id=mask_id, schedule=objective.schedule,
                           block_size=objective.block_size)

    def conditional_samples(self, model: Denoiser, objective: ObjectiveConfig, scored_tokens: int,
                            num_t: int) -> int:
        return 1 if scored_tokens <= 1 else num_t

    def sampling_run(self, model: Denoiser, sampling: SamplerConfig, fixed: Tensor, *, process: Process,
                     num_samples: int, window: int, length: int | None = None, overlap: int | None = None,
                     stop_id: int | None = None, generator: torch.Generator | None = None) -> Run:
        block_size = process.block_size
        x = initial_state(batch_size=num_samples, length=len(fixed), mask_id=process.mask_id, template=fixed,
                          device=fixed.device)
        return BlockRun(CachedContext(model, block_size), sampling, block_template(x, block_size, process.mask_id),
                        block_size=block_size, length=len(fixed), process=process, stop_id=stop_id,
                        generator=generator)


BD3LM = BD3LMKind()
