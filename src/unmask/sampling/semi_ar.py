"""Semi-autoregressive generation of any length (MDLM paper, section 4.3).

Generate a window of the model's length; keep its last ``overlap`` tokens as the fixed start of
the next window; repeat until ``total_length`` tokens exist. :class:`WindowedRun` is a run
(:mod:`unmask.sampling.run`) made of one ordinary :class:`unmask.sampling.loop.SamplingRun` per
window, so every sampler and strategy works here too, and the number of network calls is the sum
over windows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unmask.denoiser import Denoiser
from unmask.sampling.config import SamplerConfig, SamplingError
from unmask.sampling.loop import SamplingRun
from unmask.sampling.process import Process
from unmask.sampling.run import DenoiserCall, Events, Run, SampleOutput, StepDone, model_device, run_to_end
from unmask.schedules import Schedule


def window_plan(total_length: int, window: int, overlap: int, prefix_length: int) -> list[int]:
    """New tokens produced by each window: the first fills up after the prefix, the rest after the overlap."""
    if not 0 <= overlap < window:
        raise SamplingError(f"{{0}} must be in [0, {window}) (the model's length is {window}), got {overlap}",
                            "overlap")
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


# A sampler of one window: (config, the window's template [B, L] with MASK where to generate, process, generator).
WindowSampler = Callable[..., Run]


class WindowedRun:
    """``total_length`` tokens after ``prefix`` [B, P], window by window (see the module docstring).

    ``overlap`` generated tokens of a window start the next one; with ``stop_id`` the run ends after
    the first window in which every row has produced it. Steps report the whole sequence so far. Each
    window is a ``window_run(config, template, process=, generator=)``: a :class:`SamplingRun` unless a
    model kind samples its windows otherwise.
    """

    def __init__(self, config: SamplerConfig, prefix: Tensor, *, total_length: int, window: int, overlap: int,
                 process: Process, stop_id: int | None = None, generator: torch.Generator | None = None,
                 window_run: WindowSampler = SamplingRun) -> None:
        self.plan = window_plan(total_length, window, overlap, prefix.shape[1])
        self.window_run = window_run
        self.config, self.prefix, self.overlap, self.process = config, prefix, overlap, process
        self.stop_id, self.generator = stop_id, generator
        # The whole text's room at once, filled window by window: each step costs its window, not the text so far.
        self.buffer = torch.full((prefix.shape[0], prefix.shape[1] + sum(self.plan)), process.mask_id,
                                 dtype=torch.long, device=prefix.device)
        self.buffer[:, : prefix.shape[1]] = prefix
        self.end = prefix.shape[1]
        self.calls = self.steps = 0

    @property
    def tokens(self) -> Tensor:
        """The text so far [B, end]."""
        return self.buffer[:, : self.end]

    def output(self) -> SampleOutput:
        return SampleOutput(tokens=self.tokens, num_calls=self.calls, num_steps=self.steps)

    def events(self) -> Events:
        batch, mask_id = self.prefix.shape[0], self.process.mask_id
        stopped = torch.zeros(batch, dtype=torch.bool, device=self.buffer.device)
        for i, new in enumerate(self.plan):
            start = self.end - (self.prefix.shape[1] if i == 0 else self.overlap)  # the window's fixed context
            masks = torch.full((batch, new), mask_id, dtype=torch.long, device=self.buffer.device)
            run = self.window_run(self.config, torch.cat([self.buffer[:, start : self.end], masks], dim=1),
                                  process=self.process, generator=self.generator)
            events, reply = run.events(), None
            while True:
                try:
                    event = events.send(reply)
                except StopIteration:
                    break
                if isinstance(event, DenoiserCall):
                    reply = yield event
                else:
                    self.buffer[:, start : self.end + new] = event.x
                    reply = yield StepDone(self.steps + event.step, self.buffer[:, : self.end + new])
            out = run.output()
            self.buffer[:, start : self.end + new] = out.tokens
            self.end += new
            self.calls, self.steps = self.calls + out.num_calls, self.steps + out.num_steps
            if self.stop_id is not None:
                stopped |= (out.tokens[:, out.tokens.shape[1] - new :] == self.stop_id).any(1)
                if bool(stopped.all()):
                    return


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
    static_shapes: bool = False,
) -> SampleOutput:
    """Generate ``total_length`` tokens window by window; ``prefix`` [P] or [B, P] stays as given.

    ``overlap`` (default half the window) is how many generated tokens the next window sees.
    With ``stop_id`` (e.g. EOS), generation stops after the first window in which every row has
    produced it. Each window is sampled as ``config`` says; ``on_step`` sees the whole sequence
    so far after every step. ``parameterization`` and ``static_shapes`` are :func:`unmask.sampling.generate`'s
    (with ``static_shapes`` each window runs at its own shape).
    """
    device = model_device(denoiser) if device is None else device
    run = WindowedRun(config or SamplerConfig(), prefix_rows(prefix, batch_size, device), total_length=total_length,
                      window=window, overlap=window // 2 if overlap is None else overlap,
                      process=Process(mask_id=mask_id, schedule=schedule, parameterization=parameterization),
                      stop_id=stop_id, generator=generator)
    return run_to_end(denoiser, run, on_step=on_step, static_shapes=static_shapes)


def prefix_rows(prefix: Tensor | None, batch_size: int, device: torch.device | str) -> Tensor:
    """``prefix`` ([P] or [B, P], or None: empty) as [batch_size, P] on ``device``."""
    if prefix is None:
        return torch.empty(batch_size, 0, dtype=torch.long, device=device)
    prefix = torch.as_tensor(prefix, device=device).long()
    return prefix.unsqueeze(0).expand(batch_size, -1) if prefix.dim() == 1 else prefix
