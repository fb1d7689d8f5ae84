"""Left-to-right sampling from the AR baseline (a causal DiT), for comparison with MDLM."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, denoise
from unmask.sampling.config import DrawConfig, SamplingError
from unmask.sampling.draw import draw_categorical, filtered_probs
from unmask.sampling.loop import SampleOutput, initial_state, model_device


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
    """Fill the MASK positions of the template (or an all-MASK sequence) left to right.

    One network call per position; the model sees only the tokens before each position, so fixed
    tokens after it (an infilling suffix) cannot inform it: that is the AR model's limitation.
    ``on_step`` sees the state after every position.
    """
    draw = draw or DrawConfig()
    device = model_device(model) if device is None else device
    x = initial_state(batch_size=batch_size, length=length, mask_id=mask_id, template=template, device=device)
    if bool((x[:, 0] == mask_id).any()):
        raise SamplingError("the AR model needs a first token: start the template with BOS or a prompt")
    calls = 0
    with torch.no_grad():
        for i in range(1, length):
            todo = x[:, i] == mask_id
            if not bool(todo.any()):
                continue
            where = torch.zeros(batch_size, i, dtype=torch.bool, device=x.device)
            where[:, i - 1] = todo
            logits = denoise(model, x[:, :i], torch.zeros(batch_size, device=x.device), where=where)
            calls += 1
            probs = filtered_probs(logits, mask_id, temperature=draw.temperature, top_k=draw.top_k, top_p=draw.top_p)
            x[todo, i] = draw_categorical(probs, generator)
            if on_step is not None:
                on_step(x)
    return SampleOutput(tokens=x, num_calls=calls, num_steps=calls)
