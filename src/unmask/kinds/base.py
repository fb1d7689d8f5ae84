"""What a model kind is: one object that says everything depending on a run's ``objective.name``.

A kind says what its loss is (:meth:`ModelKind.losses`, calling the math of :mod:`unmask.bounds`),
how its logits read (``parameterization``), whether its figure is an exact NLL or a bound and at
which times the bound can be taken, what it checks in a run's configuration
(:meth:`ModelKind.validate`), and how it samples (:meth:`ModelKind.sampling_run`: a run of
:mod:`unmask.sampling`). Every other module asks the kind; none compares kind names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.denoiser import Denoiser
from unmask.errors import ConfigError
from unmask.sampling.config import SamplerConfig
from unmask.sampling.loop import SamplingRun
from unmask.sampling.process import Process
from unmask.sampling.run import Run, initial_state
from unmask.sampling.semi_ar import WindowedRun, prefix_rows

if TYPE_CHECKING:
    from unmask.config import Config, ObjectiveConfig

FULL_RANGE = (0.0, 1.0)

# How a kind generates past its model's length: in windows (semi-autoregressively), by sliding a block
# cache, or not at all.
WINDOWS, SLIDING, WITHIN = "windows", "sliding", "within"


class ModelKind:
    """The kind of a run (``objective.name``); subclasses set the attributes and override what differs.

    - ``name``: the ``objective.name`` that selects it; ``label``: its name in tables.
    - ``exact``: its figure is the exact NLL (the AR baseline), not an upper bound.
    - ``autoregressive``: a causal backbone, sampled left to right.
    - ``parameterization``: how its logits read (:mod:`unmask.score`): "subs" or "sedd".
    - ``discrete_time``: its bound can be taken at any number of steps T (``unmask eval --discrete-steps``);
      ``default_time_steps``: its T when ``objective.discrete_steps`` is unset (0: continuous time).
    - ``beyond_window``: how it generates past the model's length (``WINDOWS``, ``SLIDING``, ``WITHIN``).
    - ``static_shapes``: its sampling calls can all run at one shape (``--static-shapes``).
    - ``study_overrides``: the config keys a run of this kind needs besides ``objective.name`` (``unmask study``).
    """

    name: str = ""
    label: str = ""
    exact: bool = False
    autoregressive: bool = False
    parameterization: str = "subs"
    discrete_time: bool = False
    default_time_steps: int = 0
    beyond_window: str = WINDOWS
    static_shapes: bool = True
    study_overrides: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<model kind {self.name}>"

    def time_steps(self, objective: ObjectiveConfig) -> int:
        """T of the bound this kind trains and evaluates with under ``objective`` (0: continuous time)."""
        return self.default_time_steps if objective.discrete_steps is None else objective.discrete_steps

    def block_size(self, objective: ObjectiveConfig) -> int | None:
        """Tokens per block of a block-wise kind, None for the others."""
        return None

    def validate(self, config: Config) -> None:
        """Refuse a configuration this kind cannot train, in one line naming the fix."""
        objective = config.objective
        rates = objective.mask_rate_range
        if len(rates) != 2 or not 0 <= rates[0] < rates[1] <= 1:
            raise ConfigError(f"objective.mask_rate_range must be [beta, omega] with 0 <= beta < omega <= 1 "
                              f"(e.g. [0.3, 0.8]), got {rates}")
        if self.block_size(objective) is None and list(rates) != list(FULL_RANGE):
            raise ConfigError(f"objective.mask_rate_range applies to block diffusion only, not to {self.name}; "
                              "drop it")

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        """(loss [B] in nats, tokens scored [B]) of a batch {"input_ids", "loss_mask"}: the kind's training
        loss at training ``step``, its bound (or NLL) when ``step`` is None. ``discrete_steps`` takes the
        bound at that T (kinds with ``discrete_time``); ``num_t`` averages that many time samples."""
        raise NotImplementedError

    def check_discrete_steps(self, discrete_steps: int | None) -> None:
        if discrete_steps is not None and not self.discrete_time:
            raise ValueError(f"objective {self.name!r} has no discrete-time bound")

    def process(self, objective: ObjectiveConfig, mask_id: int) -> Process:
        """What this kind's samplers reverse, for a run trained with ``objective``."""
        return Process(mask_id=mask_id, schedule=objective.schedule, parameterization=self.parameterization,
                       block_size=self.block_size(objective))

    def check_sampling(self, sampling: SamplerConfig) -> None:
        """Refuse sampler options this kind cannot honour (one line naming the fix)."""

    def check_template(self, fixed: Tensor, mask_id: int) -> None:
        """Refuse fixed tokens [L] (MASK where to generate) this kind would not honour (one line naming the fix)."""

    def sampling_run(self, model: Denoiser, sampling: SamplerConfig, fixed: Tensor, *, process: Process,
                     num_samples: int, window: int, length: int | None = None, overlap: int | None = None,
                     stop_id: int | None = None, generator: torch.Generator | None = None) -> Run:
        """The run that samples ``num_samples`` rows of ``fixed`` [L] (MASK where to generate), or past the
        model's length ``window`` (``length`` tokens in all after the prefix ``fixed``) in windows that keep
        ``overlap`` tokens (default half a window), stopping early at ``stop_id``."""
        if length is not None and length > window:
            prefix = prefix_rows(fixed, num_samples, fixed.device)
            return WindowedRun(sampling, prefix, total_length=length, window=window,
                               overlap=window // 2 if overlap is None else overlap, process=process,
                               stop_id=stop_id, generator=generator)
        x = initial_state(batch_size=num_samples, length=len(fixed), mask_id=process.mask_id, template=fixed,
                          device=fixed.device)
        return SamplingRun(sampling, x, process=process, generator=generator)


def switched_off(objective: ObjectiveConfig) -> str:
    """The MDLM ablation switches ``objective`` turns off, as overrides ("" when none is)."""
    return " and ".join(f"objective.{name}=false" for name in ("carry_over", "zero_masking")
                        if not getattr(objective, name))


def padding_of(batch: dict[str, Tensor]) -> Tensor | None:
    """The batch's loss mask where it hides padding, None when every token counts."""
    loss_mask = batch["loss_mask"]
    return None if bool(loss_mask.all()) else loss_mask
