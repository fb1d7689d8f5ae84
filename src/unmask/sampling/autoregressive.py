"""Left-to-right sampling from the AR baseline (a causal DiT), as a run, for comparison with MDLM."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unmask.denoiser import Denoiser
from unmask.sampling.config import DrawConfig, SamplingError
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.run import DenoiserCall, Events, SampleOutput, StepDone, initial_state, model_device, run_to_end


class AutoregressiveRun:
    """Fill the MASK positions of ``x`` [B, L] left to right, one network call per position.

    The model sees only the tokens before each position, so fixed tokens after it (an infilling
    suffix) cannot inform it: that is the AR model's limitation. Every call asks for all rows (those
    whose position is fixed ask for no logits), so a seed gives the same tokens however it is run.
    """

    def __init__(self, x: Tensor, *, mask_id: int, draw: DrawConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        if bool((x[:, 0] == mask_id).any()):
            raise SamplingError("the AR model needs a first token: start the template with BOS or a prompt")
        self.x, self.mask_id, self.draw, self.generator = x, mask_id, draw or DrawConfig(), generator
        self.num_calls = 0

    def output(self) -> SampleOutput:
        return SampleOutput(tokens=self.x, num_calls=self.num_calls, num_steps=self.num_calls)

    def events(self) -> Events:
        x, draw = self.x, self.draw
        batch = x.shape[0]
        for i in range(1, x.shape[1]):
            todo = x[:, i] == self.mask_id
            if not bool(todo.any()):
                continue
            where = torch.zeros(batch, i, dtype=torch.bool, device=x.device)
            where[:, i - 1] = todo
            logits = yield DenoiserCall(x[:, :i], torch.zeros(batch, device=x.device), where)
            self.num_calls += 1
            probs = filtered_probs(logits, self.mask_id, temperature=draw.temperature, top_k=draw.top_k,
                                   top_p=draw.top_p)
            x[todo, i] = draw_categorical(probs, self.generator)
            yield StepDone(self.num_calls, x)


def generate_autoregressive(
    model: Denoiser,
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    template: Tensor | None = None,
    generator: torch.Generator | None = None,
    draw: DrawConfig | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[Tensor], None] | None = None,
) -> SampleOutput:
    """Fill the MASK positions of the template (or an all-MASK sequence) left to right with ``model``
    (:class:`AutoregressiveRun`); ``on_step`` sees the state after every position."""
    device = model_device(model) if device is None else device
    x = initial_state(batch_size=batch_size, length=length, mask_id=mask_id, template=template, device=device)
    return run_to_end(model, AutoregressiveRun(x, mask_id=mask_id, draw=draw, generator=generator), on_step=on_step)
