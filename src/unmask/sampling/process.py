"""What a sampler reverses, as one value: the MASK id, the noise schedule and how the model's logits read.

A model's :class:`Process` comes with it (``Pipeline.process``, made by its model kind), so a sampler
is given one value instead of three arguments that must agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from unmask.schedules import Schedule, get_schedule
from unmask.score import PARAMETERIZATIONS


@dataclass(frozen=True)
class Process:
    """The forward process a model was trained to reverse, and how its logits read.

    - ``mask_id``: the MASK id (the absorbing state).
    - ``schedule``: alpha_t (a :class:`unmask.schedules.Schedule` or its name).
    - ``parameterization``: "subs" (the logits are an x0 prediction: MDLM and its kin) or "sedd" (a
      log concrete score, :mod:`unmask.score`); the analytic sampler reads the score from it.
    - ``block_size``: tokens per block of a block diffusion model, sampled block by block (None: the
      whole sequence at once).
    """

    mask_id: int
    schedule: Schedule | str = "loglinear"
    parameterization: str = "subs"
    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, "
                             f"got {self.parameterization!r}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")
        object.__setattr__(self, "schedule", get_schedule(self.schedule))
