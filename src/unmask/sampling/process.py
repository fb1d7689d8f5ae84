"""What a sampler reverses, as one value: the MASK id, the noise schedule and how the model's logits read.

A model's :class:`Process` comes with it (``Pipeline.process``, made by its model kind), so a sampler
is given one value instead of three arguments that must agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from unmask.schedules import Schedule, get_schedule
from unmask.score import PARAMETERIZATIONS

UNIFORM = "mean"  # the parameterization of uniform-state models (Duo's "mean parameterization")


@dataclass(frozen=True)
class Process:
    """The forward process a model was trained to reverse, and how its logits read.

    - ``mask_id``: the MASK id (the absorbing state).
    - ``schedule``: alpha_t (a :class:`unmask.schedules.Schedule` or its name).
    - ``parameterization``: how the logits read: "subs" (an x0 prediction under the masking process:
      MDLM and its kin), "sedd" (a log concrete score, :mod:`unmask.score`; the analytic sampler reads
      the score from it) or "mean" (an x0 prediction under the uniform process: Duo).
    - ``block_size``: tokens per block of a block diffusion model, sampled block by block (None: the
      whole sequence at once).
    - ``vocab_size``: every id the model has, MASK included (a uniform-state process draws its noise
      over all but MASK); None: MASK is the last id.
    """

    mask_id: int
    schedule: Schedule | str = "loglinear"
    parameterization: str = "subs"
    block_size: int | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.parameterization not in (*PARAMETERIZATIONS, UNIFORM):
            raise ValueError(f"parameterization must be one of {', '.join((*PARAMETERIZATIONS, UNIFORM))}, "
                             f"got {self.parameterization!r}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        object.__setattr__(self, "schedule", get_schedule(self.schedule))
        if self.vocab_size is None:
            object.__setattr__(self, "vocab_size", self.mask_id + 1)
