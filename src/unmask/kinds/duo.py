"""Uniform-state diffusion (Duo, Sahoo et al., ICML 2025, "The Diffusion Duality"): tokens are corrupted
toward the uniform distribution over the vocabulary (no MASK), the model predicts x0 (mean
parameterization, time-conditioned), its bound is the uniform-state NELBO (:mod:`unmask.bounds.uniform`),
and training starts with Duo's curriculum through the Gaussian relaxation (:mod:`unmask.bounds.relaxation`).
Every step of its samplers moves every position (:mod:`unmask.sampling.uniform`), which is what makes it
sample well in few steps and distil (:mod:`unmask.distill`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.bounds.conditional import RowNoise
from unmask.bounds.relaxation import curriculum_temperature, duo_curriculum_loss
from unmask.bounds.uniform import uniform_conditional_bound, uniform_greedy_matches, uniform_nelbo
from unmask.denoiser import Denoiser, unwrap
from unmask.errors import ConfigError
from unmask.kinds.base import ModelKind, padding_of
from unmask.sampling.config import SamplerConfig
from unmask.sampling.process import UNIFORM, Process
from unmask.sampling.run import Run
from unmask.sampling.uniform import UniformRun

if TYPE_CHECKING:
    from unmask.config import Config, ObjectiveConfig


class DuoKind(ModelKind):
    name = "duo"
    label = "Duo (uniform-state)"
    parameterization = UNIFORM
    study_overrides = ("model.time_conditioning=true",)
    samplers = ("ancestral", "cached", "psi")
    distillation = "dcd"
    needs_time = "predicts x0 from a latent whose noise level only t tells"
    continuous_only = "has no MASK to carry over or to zero"
    frontier_samplers = ("ancestral", "greedy", "psi")
    objective_fields = ("curriculum_start", "curriculum_end", "temperature_start", "temperature_end", "gamma_min",
                        "gamma_max")

    def validate(self, config: Config) -> None:
        super().validate(config)
        objective = config.objective
        if objective.curriculum_end and objective.curriculum_start > objective.curriculum_end:
            raise ConfigError(f"objective.curriculum_start ({objective.curriculum_start}) must not come after "
                              f"objective.curriculum_end ({objective.curriculum_end})")
        if not objective.gamma_min < objective.gamma_max:
            raise ConfigError(f"objective.gamma_min ({objective.gamma_min}) must be below objective.gamma_max "
                              f"({objective.gamma_max})")

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        self.check_discrete_steps(discrete_steps)
        x0, loss_mask = batch["input_ids"], batch["loss_mask"]
        common = dict(schedule=objective.schedule, mask_id=mask_id, vocab_size=_vocab_size(model, mask_id),
                      antithetic=objective.antithetic, loss_mask=padding_of(batch), generator=generator)
        if step is not None and step < objective.curriculum_end:
            temperature = curriculum_temperature(
                step, objective.curriculum_start, objective.curriculum_end,
                math.log10(objective.temperature_start), math.log10(objective.temperature_end))
            loss = duo_curriculum_loss(model, x0, temperature=temperature, gamma_min=objective.gamma_min,
                                       gamma_max=objective.gamma_max, **common)
        else:
            loss = uniform_nelbo(model, x0, num_t=num_t, **common)
        return loss, loss_mask.sum(1)

    def conditional_losses(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                           mask_id: int, noise: RowNoise) -> Tensor:
        return uniform_conditional_bound(model, x0, scored, noise.u, noise.order, schedule=objective.schedule,
                                         mask_id=mask_id, vocab_size=_vocab_size(model, mask_id))

    def greedy_matches(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                       mask_id: int) -> Tensor:
        # Each row's own tokens seed its noise: the same row gives the same verdict in any batch.
        order = torch.stack([torch.rand(x0.shape[1], generator=torch.Generator().manual_seed(hash(tuple(row))))
                             for row in x0.tolist()])
        return uniform_greedy_matches(model, x0, scored, order.to(x0.device), mask_id=mask_id,
                                      vocab_size=_vocab_size(model, mask_id))

    def window_run(self, sampling: SamplerConfig, x: Tensor, *, process: Process,
                   generator: torch.Generator | None = None) -> Run:
        return UniformRun(sampling, x, process=process, generator=generator)


def _vocab_size(model: Denoiser, mask_id: int) -> int:
    """The ids the model's logits cover, where its config says (a DiT's); else MASK is the last."""
    return getattr(getattr(unwrap(model), "config", None), "vocab_size", None) or mask_id + 1


DUO = DuoKind()
