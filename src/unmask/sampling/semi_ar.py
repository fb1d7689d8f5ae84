"""Semi-autoregressive generation of any length (MDLM paper, section 4.3).

Generate a window of the model's length; keep its last ``overlap`` tokens as the fixed start of
the next window; repeat until ``total_length`` tokens exist. Each window is an ordinary call of
:func:`unmask.sampling.generate`, so every sampler and strategy works here too, and the number of
network calls is the sum over windows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unmask.denoiser import Denoiser
from unmask.sampling.config import SamplerConfig, SamplingError
from unmask.sampling.loop import SampleOutput, generate, model_device
from unmask.schedules import Schedule


def window_plan(total_length: int, window: int, overlap: int, prefix_length: int) -> list[int]:
    """New tokens produced by each window: the first fills up after the prefix, the rest after the overlap."""
    if not 0 <= overlap < window:
        raise SamplingError(f"--overlap must be in [0, {window}) (the model's length is {window}), got {overlap}")
    if prefix_length >= window:
        raise SamplingError(f"the prefix has {prefix_length} tokens; at most {window - 1} fit in a window of "
                            f"{window}; shorten the prompt")
    plan, produced = [], prefix_length
    while produced < total_length:
        context = prefix_length if not plan else overlap
        new = min(window - context, total_length - produced)
        plan.append(new)
        produced += new
    return plan


def generate_long(
    denoiser: Denoiser,
    config: SamplerConfig | None = None,
    *,
    batch_size: int,
    total_length: int,
    window: int,
    mask_id: int,
    schedule: Schedule | str = "loglinear",
    overlap: int | None = None,
    prefix: Tensor | None = None,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[Tensor], None] | None = None,
    parameterization: str = "subs",
) -> SampleOutput:
    """Generate ``total_length`` tokens window by window; ``prefix`` [P] or [B, P] stays as given.

    ``overlap`` (default half the window) is how many generated tokens the next window sees.
    With ``stop_id`` (e.g. EOS), generation stops after the first window in which every row has
    produced it. Each window is sampled as ``config`` says; ``on_step`` sees the whole sequence
    so far after every step. ``parameterization`` is :func:`generate`'s.
    """
    overlap = window // 2 if overlap is None else overlap
    device = model_device(denoiser) if device is None else device
    if prefix is None:
        prefix = torch.empty(batch_size, 0, dtype=torch.long, device=device)
    prefix = torch.as_tensor(prefix, device=device).long()
    if prefix.dim() == 1:
        prefix = prefix.unsqueeze(0).expand(batch_size, -1)
    plan = window_plan(total_length, window, overlap, prefix.shape[1])
    tokens, calls, steps = prefix.clone(), 0, 0
    for i, new in enumerate(plan):
        context = prefix if i == 0 else tokens[:, tokens.shape[1] - overlap :]
        masks = torch.full((batch_size, new), mask_id, dtype=torch.long, device=device)
        template = torch.cat([context, masks], dim=1)
        done = tokens[:, : tokens.shape[1] - context.shape[1]]
        window_on_step = None if on_step is None else (lambda x, done=done: on_step(torch.cat([done, x], dim=1)))
        out = generate(denoiser, config, batch_size=batch_size, length=template.shape[1], mask_id=mask_id,
                       schedule=schedule, template=template, generator=generator, device=device,
                       on_step=window_on_step, parameterization=parameterization)
        tokens = torch.cat([tokens, out.tokens[:, context.shape[1]:]], dim=1)
        calls, steps = calls + out.num_calls, steps + out.num_steps
        generated = tokens[:, prefix.shape[1]:]
        if stop_id is not None and bool((generated == stop_id).any(1).all()):
            break
    return SampleOutput(tokens=tokens, num_calls=calls, num_steps=steps)
