"""The autoregressive baseline on the same backbone: causal attention, exact NLL, left-to-right sampling."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.bounds.ar import ar_greedy_matches, ar_loss, ar_token_count
from unmask.bounds.conditional import RowNoise
from unmask.denoiser import Denoiser
from unmask.kinds.base import WITHIN, ModelKind, padding_of
from unmask.sampling.autoregressive import AutoregressiveRun
from unmask.sampling.config import SamplerConfig, SamplingError
from unmask.sampling.process import Process
from unmask.sampling.run import Run, initial_state

if TYPE_CHECKING:
    from unmask.config import ObjectiveConfig


class ARKind(ModelKind):
    name = "ar"
    label = "AR (same backbone)"
    exact = True
    autoregressive = True
    beyond_window = WITHIN
    static_shapes = False

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        self.check_discrete_steps(discrete_steps)
        x0 = batch["input_ids"]
        return ar_loss(model, x0, mask_id=mask_id, loss_mask=padding_of(batch)), ar_token_count(x0, batch["loss_mask"])

    def conditional_losses(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                           mask_id: int, noise: RowNoise) -> Tensor:
        # Exact: the chain rule over the continuation, each token given everything before it (no noise).
        return ar_loss(model, x0, mask_id=mask_id, scored=scored)

    def conditional_samples(self, model: Denoiser, objective: ObjectiveConfig, scored_tokens: int,
                            num_t: int) -> int:
        return 1

    def greedy_matches(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                       mask_id: int) -> Tensor:
        return ar_greedy_matches(model, x0, scored, mask_id=mask_id)

    def check_sampling(self, sampling: SamplerConfig) -> None:
        if sampling.uses_strategy or sampling.sampler in ("first_hitting", "analytic", "psi"):
            raise SamplingError("an AR model decodes left to right, one token per step: {0}, {1}, {2}, "
                                "{3} first_hitting, {3} analytic and {3} psi apply to diffusion models only",
                                "order", "threshold", "remask", "sampler")

    def check_template(self, fixed: Tensor, mask_id: int) -> None:
        masked = (fixed == mask_id).nonzero()
        if len(masked) and bool((fixed[int(masked[0]):] != mask_id).any()):
            raise SamplingError("an AR model writes left to right and never sees text after a [MASK]: put the "
                                "placeholders of the {0} at its end, or fill it in with a diffusion model",
                                "template")

    def sampling_run(self, model: Denoiser, sampling: SamplerConfig, fixed: Tensor, *, process: Process,
                     num_samples: int, window: int, length: int | None = None, overlap: int | None = None,
                     stop_id: int | None = None, generator: torch.Generator | None = None) -> Run:
        x = initial_state(batch_size=num_samples, length=len(fixed), mask_id=process.mask_id, template=fixed,
                          device=fixed.device)
        return AutoregressiveRun(x, mask_id=process.mask_id, draw=sampling.draw, generator=generator)


AR = ARKind()
