"""Block-by-block sampling for block diffusion (BD3-LM): any length, with an exact key/value cache.

The sequence is generated one block of ``block_size`` tokens at a time. A new block starts all
MASK (or holds the template's fixed tokens: a prompt fills the first blocks) after the finished
ones and is sampled by an ordinary :class:`unmask.sampling.loop.SamplingRun`, so every sampler
and strategy (cached, first-hitting, ordered, threshold, remasking, temperature / top-k / top-p)
works unchanged within a block; ``steps`` are per block. :class:`BlockRun` is itself a run
(:mod:`unmask.sampling.run`): a *context* turns each call of the block's run into the network call
that lets the block see the finished blocks:

- :class:`CachedContext`: the model's per-layer key/value cache (:class:`unmask.models.block_attention.KVCache`),
  carried by the call. A finished block's keys and values are computed once and appended; a call
  then runs the current block alone. The finished block rides along with the next block's first
  call (one block-causal pass over both), so filling the cache costs no call of its own.
- :class:`RecomputedContext`: no cache; every call runs the finished blocks again with the
  current one (block-causal attention, or for a fixed-length denoiser without it the later
  blocks as MASK). It is what the cache must match, and it samples block by block from any denoiser.

Past the model's length the context slides: it keeps the last ``length - block_size`` positions,
so generation goes on as long as asked, and stops early at ``stop_id`` (EOS) once every row has it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Protocol

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, capabilities, unwrap
from unmask.sampling.config import SamplerConfig, SamplingError
from unmask.sampling.loop import SamplingRun
from unmask.sampling.process import Process
from unmask.sampling.run import (
    DenoiserCall,
    Event,
    Events,
    SampleOutput,
    StepDone,
    initial_state,
    model_device,
    run_to_end,
)

# What a context does for one call of a block's run: the network calls to make, then that call's logits.
Calls = Generator[DenoiserCall, Tensor, Tensor]


class BlockContext(Protocol):
    """What a block is sampled after: ``answer`` makes the network calls of one of the block's calls,
    ``append`` those of a finished block [B, block_size]; ``fill_calls`` counts the network calls made
    for finished blocks alone."""

    model: Denoiser
    fill_calls: int

    def answer(self, call: DenoiserCall) -> Calls: ...

    def append(self, block: Tensor) -> Generator[DenoiserCall, Tensor, None]: ...


class CachedContext:
    """The finished blocks as the model's key/value cache (a DiT: ``new_cache``, ``cache=``)."""

    def __init__(self, model: Denoiser, block_size: int) -> None:
        self.model = unwrap(model)
        if not hasattr(self.model, "new_cache"):
            raise SamplingError("block-by-block sampling with a cache needs a model with a key/value cache (a DiT)")
        self.block_size = block_size
        self.cache = self.model.new_cache(block_size)
        self.pending: Tensor | None = None  # a finished block not in the cache yet
        self.fill_calls = 0

    def answer(self, call: DenoiserCall) -> Calls:
        if self.pending is not None and call.rows is None:  # fill the cache and answer in one pass
            x = torch.cat([self.pending, call.x], dim=1)
            where = torch.cat([torch.zeros_like(self.pending, dtype=torch.bool), call.where], dim=1)
            logits = yield DenoiserCall(x, call.t, where, cache=self.cache, block_size=self.block_size)
            self.cache.commit(self.pending.shape[1])
            self.pending = None
            return logits
        yield from self._fill()
        return (yield DenoiserCall(call.x, call.t, call.where, rows=call.rows, cache=self.cache.rows(call.rows)))

    def append(self, block: Tensor) -> Generator[DenoiserCall, Tensor, None]:
        yield from self._fill()
        self.pending = block

    def _fill(self) -> Generator[DenoiserCall, Tensor, None]:
        """Put the pending block in the cache with a call of its own (when no full-batch call can carry it)."""
        if self.pending is not None:
            rows = self.pending.shape[0]
            yield DenoiserCall(self.pending, torch.zeros(rows, device=self.pending.device),
                               torch.zeros_like(self.pending, dtype=torch.bool), cache=self.cache)
            self.cache.commit()
            self.pending, self.fill_calls = None, self.fill_calls + 1


class RecomputedContext:
    """The finished blocks kept as tokens and run again at every call (the last ``window - block_size``)."""

    fill_calls = 0

    def __init__(self, model: Denoiser, block_size: int, window: int, mask_id: int) -> None:
        self.model, self.block_size, self.window, self.mask_id = model, block_size, window, mask_id
        self.tokens: Tensor | None = None

    def answer(self, call: DenoiserCall) -> Calls:
        rows = call.x.shape[0]
        if self.tokens is None:
            prefix = call.x.new_empty(rows, 0)
        else:
            prefix = self.tokens if call.rows is None else self.tokens[call.rows]
        prefix = prefix[:, max(0, prefix.shape[1] - (self.window - self.block_size)):]
        x = torch.cat([prefix, call.x], dim=1)
        where = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), call.where], dim=1)
        if capabilities(self.model).block_diffusion:
            return (yield DenoiserCall(x, call.t, where, block_size=self.block_size))
        pad = self.window - x.shape[1]  # a fixed-length denoiser: later blocks are all MASK
        x = torch.cat([x, x.new_full((rows, pad), self.mask_id)], dim=1)
        where = torch.cat([where, where.new_zeros(rows, pad)], dim=1)
        return (yield DenoiserCall(x, call.t, where))

    def append(self, block: Tensor) -> Generator[DenoiserCall, Tensor, None]:
        self.tokens = block.clone() if self.tokens is None else torch.cat([self.tokens, block], dim=1)
        yield from ()


class BlockRun:
    """Sample ``x`` [B, n * block_size] (MASK where to generate) block by block after ``context``.

    Each block is an ordinary :class:`SamplingRun` as ``config`` says; ``generated`` marks what the
    model writes (not the prompt), where ``stop_id`` counts: the run ends after the first block in
    which every row has produced it. ``length`` cuts the tokens returned. Steps report the sequence so far.
    """

    def __init__(self, context: BlockContext, config: SamplerConfig, x: Tensor, *, block_size: int, length: int,
                 process: Process, stop_id: int | None = None, generator: torch.Generator | None = None) -> None:
        self.context, self.config, self.x, self.block_size = context, config, x, block_size
        self.length, self.process, self.stop_id, self.generator = length, process, stop_id, generator
        self.generated = x == process.mask_id
        self.end = length
        self.calls = self.steps = 0

    def output(self) -> SampleOutput:
        return SampleOutput(tokens=self.x[:, : self.end], num_calls=self.calls + self.context.fill_calls,
                            num_steps=self.steps)

    def events(self) -> Events:
        x, size, mask_id = self.x, self.block_size, self.process.mask_id
        num_blocks = x.shape[1] // size
        for k in range(num_blocks):
            done, span = x[:, : k * size], slice(k * size, (k + 1) * size)
            if bool((x[:, span] == mask_id).any()):
                run = SamplingRun(self.config, x[:, span].clone(), process=self.process, generator=self.generator)
                yield from self._block(run, done)
                x[:, span] = run.x
                self.calls, self.steps = self.calls + run.num_calls, self.steps + run.num_steps
            finished = (k + 1) * size
            if self.stop_id is not None and bool(((x[:, :finished] == self.stop_id)
                                                  & self.generated[:, :finished]).any(1).all()):
                self.end = min(self.length, finished)
                return
            if k + 1 < num_blocks:
                yield from self.context.append(x[:, span])

    def _block(self, run: SamplingRun, done: Tensor) -> Events:
        """The events of one block's run: its calls answered through the context, its steps shown after ``done``."""
        events = run.events()
        reply = None
        while True:
            try:
                event: Event = events.send(reply)
            except StopIteration:
                return
            if isinstance(event, DenoiserCall):
                reply = yield from self.context.answer(event)
            else:
                reply = yield StepDone(self.steps + event.step, torch.cat([done, event.x], 1))


def generate_blocks(
    context: BlockContext,
    config: SamplerConfig | None = None,
    *,
    batch_size: int,
    length: int,
    block_size: int,
    mask_id: int,
    schedule: str = "loglinear",
    template: Tensor | None = None,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[Tensor], None] | None = None,
) -> SampleOutput:
    """Generate [batch_size, length] tokens block by block (see the module docstring).

    ``template`` [length] holds fixed tokens (every non-MASK entry); the last block is sampled
    whole and cut at ``length``. With ``stop_id`` generation ends after the first block in which
    every row has produced it (the tokens end with that block). ``on_step`` sees the sequence so
    far after every step. ``num_calls`` counts the network calls (those for the blocks' steps and any
    made only to fill the context).
    """
    device = model_device(context.model) if device is None else device
    x = block_template(initial_state(batch_size=batch_size, length=length, mask_id=mask_id, template=template,
                                     device=device), block_size, mask_id)
    run = BlockRun(context, config or SamplerConfig(), x, block_size=block_size, length=length,
                   process=Process(mask_id=mask_id, schedule=schedule), stop_id=stop_id, generator=generator)
    return run_to_end(context.model, run, on_step=on_step)


def block_template(x: Tensor, block_size: int, mask_id: int) -> Tensor:
    """``x`` [B, L] followed by MASK up to a whole number of blocks."""
    if block_size < 1:
        raise SamplingError(f"the block size must be at least 1, got {block_size}")
    pad = -x.shape[1] % block_size
    return torch.cat([x, x.new_full((x.shape[0], pad), mask_id)], dim=1)
