"""What a model kind is: one object that says everything depending on a run's ``objective.name``.

A kind says what its loss is (:meth:`ModelKind.losses`, calling the math of :mod:`unmask.bounds`),
how it bounds a continuation given a context (:meth:`ModelKind.conditional_losses`,
:meth:`ModelKind.greedy_matches`), how its logits read (``parameterization``), whether its figure is
an exact NLL or a bound and at which times the bound can be taken, what it checks in a run's
configuration (:meth:`ModelKind.validate`), and how it samples (:meth:`ModelKind.sampling_run`: a run
of :mod:`unmask.sampling`). Every other module asks the kind; none compares kind names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.bounds.conditional import RowNoise, greedy_matches
from unmask.denoiser import Denoiser
from unmask.errors import ConfigError, UserError
from unmask.sampling.config import SamplerConfig, SamplingError
from unmask.sampling.loop import SamplingRun
from unmask.sampling.process import Process
from unmask.sampling.run import Run, initial_state
from unmask.sampling.semi_ar import WindowedRun, prefix_rows

if TYPE_CHECKING:
    from unmask.config import Config, ObjectiveConfig

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
    - ``samplers``: the samplers (``SamplerConfig.sampler``) it can sample with.
    - ``frontier_samplers``: the sampler labels ``unmask frontier`` sweeps by default.
    - ``distillation``: the method that distils it into a few-step student (``unmask distill``), or None.
    - ``objective_fields``: the ``objective`` keys only this kind (and others that list them) reads; a run of
      any other kind must leave them at their defaults (checked by :func:`unmask.validation.validate`).
    - ``adaptable``: it can start from a pretrained causal LM (``adapt.init``: :mod:`unmask.models.causal_lm`).
    - ``prompted``: its loss takes prompts (a batch's ``attention_mask`` beside its ``loss_mask``: the prompt is
      seen but never noised nor scored), so it fine-tunes on conversations (``data.format=chat``).
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
    samplers: tuple[str, ...] = ("ancestral", "cached", "first_hitting", "analytic")
    objective_fields: tuple[str, ...] = ()
    distillation: str | None = None
    # Why a run of this kind must see t (None: it need not), and why MDLM's ablation switches and discrete time
    # do not apply to it (None: they may).
    needs_time: str | None = None
    continuous_only: str | None = None
    frontier_samplers: tuple[str, ...] = ("cached", "first_hitting", "confidence", "threshold-0.9", "remdm-cap")
    adaptable: bool = False
    prompted: bool = False

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
        if self.continuous_only and switched_off(objective):
            raise ConfigError(f"{switched_off(objective)}: these are MDLM ablations; {self.name} "
                              f"{self.continuous_only}: drop them")
        if self.continuous_only and self.time_steps(objective):
            raise ConfigError(f"{self.name}'s bound is continuous-time: drop objective.discrete_steps")
        if self.needs_time and not config.model.time_conditioning:
            raise ConfigError(f"objective.name={self.name} {self.needs_time}: add model.time_conditioning=true")

    def losses(self, model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
               generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
               step: int | None = None) -> tuple[Tensor, Tensor]:
        """(loss [B] in nats, tokens scored [B]) of a batch {"input_ids", "loss_mask"}: the kind's training
        loss at training ``step``, its bound (or NLL) when ``step`` is None. ``discrete_steps`` takes the
        bound at that T (kinds with ``discrete_time``); ``num_t`` averages that many time samples."""
        raise NotImplementedError

    def conditional_losses(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                           mask_id: int, noise: RowNoise) -> Tensor:
        """One Monte Carlo sample per row [R] of a bound on -log p(x0 at ``scored`` | the rest of x0), in
        nats: the ``scored`` [R, L] positions (a continuation) are noised and scored, every other token is
        clean context, a MASK in x0 is unknown throughout (``docs/math.md`` §9; :mod:`unmask.bounds.conditional`).
        ``noise`` holds each row's randomness; the mean over a sequence's rows is its estimate."""
        raise UserError(f"a {self.label} model has no conditional bound in this unmask (ModelKind."
                        "conditional_losses), so it cannot score a continuation given a context; use generation "
                        "or rolling-likelihood tasks, or unmask eval")

    def conditional_samples(self, model: Denoiser, objective: ObjectiveConfig, scored_tokens: int,
                            num_t: int) -> int:
        """How many rows (samples) :meth:`conditional_losses` needs for a continuation of ``scored_tokens``
        tokens: ``num_t``, or 1 where one sample is the bound itself."""
        return num_t if scored_tokens else 1

    def greedy_matches(self, model: Denoiser, x0: Tensor, scored: Tensor, objective: ObjectiveConfig,
                       mask_id: int) -> Tensor:
        """Per row [R]: whether greedy decoding of the ``scored`` positions, the rest of x0 given, gives x0's
        tokens there (most confident position first, block by block for block diffusion)."""
        return greedy_matches(model, x0, scored, mask_id=mask_id, schedule=objective.schedule,
                              block_size=self.block_size(objective))

    def check_discrete_steps(self, discrete_steps: int | None) -> None:
        if discrete_steps is not None and not self.discrete_time:
            raise ValueError(f"objective {self.name!r} has no discrete-time bound")

    def process(self, objective: ObjectiveConfig, mask_id: int, vocab_size: int | None = None) -> Process:
        """What this kind's samplers reverse, for a run trained with ``objective`` (``vocab_size`` ids)."""
        return Process(mask_id=mask_id, schedule=objective.schedule, parameterization=self.parameterization,
                       block_size=self.block_size(objective), vocab_size=vocab_size)

    def check_sampling(self, sampling: SamplerConfig) -> None:
        """Refuse sampler options this kind cannot honour (one line naming the fix)."""
        if sampling.sampler not in self.samplers:
            raise SamplingError(f"a {self.label} model samples with {{0}} {', '.join(self.samplers)}; "
                                f"{sampling.sampler} is for another kind of model", "sampler")

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
                               stop_id=stop_id, generator=generator, window_run=self.window_run)
        x = initial_state(batch_size=num_samples, length=len(fixed), mask_id=process.mask_id, template=fixed,
                          device=fixed.device)
        return self.window_run(sampling, x, process=process, generator=generator)

    def window_run(self, sampling: SamplerConfig, x: Tensor, *, process: Process,
                   generator: torch.Generator | None = None) -> Run:
        """The run that samples one window ``x`` [B, L] (MASK where to generate): the absorbing samplers'."""
        return SamplingRun(sampling, x, process=process, generator=generator)


def switched_off(objective: ObjectiveConfig) -> str:
    """The MDLM ablation switches ``objective`` turns off, as overrides ("" when none is)."""
    return " and ".join(f"objective.{name}=false" for name in ("carry_over", "zero_masking")
                        if not getattr(objective, name))


def padding_of(batch: dict[str, Tensor]) -> Tensor | None:
    """The batch's loss mask where it hides padding, None when every token counts."""
    loss_mask = batch["loss_mask"]
    return None if bool(loss_mask.all()) else loss_mask


def seen_of(batch: dict[str, Tensor]) -> Tensor | None:
    """The batch's attention mask where it has one (a prompt: seen, not counted); None: the counted tokens."""
    return batch.get("attention_mask")
