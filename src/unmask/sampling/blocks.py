"""Block-by-block sampling for block diffusion (BD3-LM): any length, with an exact key/value cache.

The sequence is generated one block of ``block_size`` tokens at a time. A new block starts all
MASK (or holds the template's fixed tokens: a prompt fills the first blocks) after the finished
ones and is sampled by an ordinary :class:`unmask.sampling.loop.SamplingRun`, so every sampler
and strategy (cached, first-hitting, ordered, threshold, remasking, temperature / top-k / top-p)
works unchanged within a block; ``steps`` are per block. The run's denoiser calls are answered by
a *context*, which lets the block see the finished blocks:

- :class:`CachedContext`: the model's per-layer key/value cache (:class:`unmask.models.block_attention.KVCache`).
  A finished block's keys and values are computed once and appended; a denoiser call then runs
  the current block alone. The finished block rides along with the next block's first call (one
  block-causal pass over both), so filling the cache costs no call of its own.
- :class:`RecomputedContext`: no cache; every call runs the finished blocks again with the
  current one (block-causal attention, or for a fixed-length denoiser without it the later
  blocks as MASK). It is what the cache must match, and it samples block by block from any denoiser.

Past the model's length the context slides: it keeps the last ``length - block_size`` positions,
so generation goes on as long as asked, and stops early at ``stop_id`` (EOS) once every row has it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, capabilities, denoise, unwrap
from unmask.sampling.config import SamplerConfig, SamplingError
from unmask.sampling.loop import DenoiserCall, SampleOutput, SamplingRun, drive, initial_state, model_device
from unmask.schedules import Schedule


class BlockContext(Protocol):
    """What a block is sampled after: ``logits`` answers the block's denoiser calls, ``append`` adds a
    finished block [B, block_size]; ``fill_calls`` counts the network calls made for finished blocks alone."""

    model: Denoiser
    fill_calls: int

    def logits(self, call: DenoiserCall) -> Tensor: ...

    def append(self, block: Tensor) -> None: ...


class CachedContext:
    """The finished blocks as the model's key/value cache (a DiT: ``new_cache``, ``extend_cache``, ``cache=``)."""

    def __init__(self, model: Denoiser, block_size: int) -> None:
        self.model = unwrap(model)
        if not hasattr(self.model, "extend_cache"):
            raise SamplingError("block-by-block sampling with a cache needs a model with a key/value cache (a DiT)")
        self.block_size = block_size
        self.cache = self.model.new_cache(block_size)
        self.pending: Tensor | None = None  # a finished block not in the cache yet
        self.fill_calls = 0

    def logits(self, call: DenoiserCall) -> Tensor:
        if self.pending is not None and call.rows is None:  # fill the cache and answer in one pass
            x = torch.cat([self.pending, call.x], dim=1)
            where = torch.cat([torch.zeros_like(self.pending, dtype=torch.bool), call.where], dim=1)
            logits = self.model(x, call.t, where=where, cache=self.cache, block_size=self.block_size)
            self.cache.commit(self.pending.shape[1])
            self.pending = None
            return logits
        self._fill()
        return self.model(call.x, call.t, where=call.where, cache=self.cache.rows(call.rows))

    def append(self, block: Tensor) -> None:
        self._fill()
        self.pending = block

    def _fill(self) -> None:
        """Put the pending block in the cache with a call of its own (when no full-batch call can carry it)."""
        if self.pending is not None:
            self.model.extend_cache(self.cache, self.pending)
            self.pending, self.fill_calls = None, self.fill_calls + 1


class RecomputedContext:
    """The finished blocks kept as tokens and run again at every call (the last ``window - block_size``)."""

    fill_calls = 0

    def __init__(self, model: Denoiser, block_size: int, window: int, mask_id: int) -> None:
        self.model, self.block_size, self.window, self.mask_id = model, block_size, window, mask_id
        self.tokens: Tensor | None = None

    def logits(self, call: DenoiserCall) -> Tensor:
        rows = call.x.shape[0]
        if self.tokens is None:
            prefix = call.x.new_empty(rows, 0)
        else:
            prefix = self.tokens if call.rows is None else self.tokens[call.rows]
        prefix = prefix[:, max(0, prefix.shape[1] - (self.window - self.block_size)):]
        x = torch.cat([prefix, call.x], dim=1)
        where = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), call.where], dim=1)
        if capabilities(self.model).block_diffusion:
            return denoise(self.model, x, call.t, where=where, block_size=self.block_size)
        pad = self.window - x.shape[1]  # a fixed-length denoiser: later blocks are all MASK
        x = torch.cat([x, x.new_full((rows, pad), self.mask_id)], dim=1)
        where = torch.cat([where, where.new_zeros(rows, pad)], dim=1)
        return denoise(self.model, x, call.t, where=where)

    def append(self, block: Tensor) -> None:
        self.tokens = block.clone() if self.tokens is None else torch.cat([self.tokens, block], dim=1)


def generate_blocks(
    context: BlockContext,
    config: SamplerConfig | None = None,
    *,
    batch_size: int,
    length: int,
    block_size: int,
    mask_id: int,
    schedule: Schedule | str = "loglinear",
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
    if block_size < 1:
        raise SamplingError(f"the block size must be at least 1, got {block_size}")
    num_blocks = -(-length // block_size)
    device = model_device(context.model) if device is None else device
    x = initial_state(batch_size=batch_size, length=length, mask_id=mask_id, template=template, device=device)
    x = torch.cat([x, x.new_full((batch_size, num_blocks * block_size - length), mask_id)], dim=1)
    generated = x == mask_id  # what the model writes (not the prompt): where stop_id counts
    calls = steps = 0
    for k in range(num_blocks):
        done, span = x[:, : k * block_size], slice(k * block_size, (k + 1) * block_size)
        if bool((x[:, span] == mask_id).any()):
            run = SamplingRun(config or SamplerConfig(), x[:, span].clone(), mask_id=mask_id, schedule=schedule,
                              generator=generator)
            block_on_step = None if on_step is None else (lambda block, done=done: on_step(torch.cat([done, block], 1)))
            drive(run, context.logits, block_on_step)
            x[:, span] = run.x
            calls, steps = calls + run.num_calls, steps + run.num_steps
        finished = (k + 1) * block_size
        if stop_id is not None and bool(((x[:, :finished] == stop_id) & generated[:, :finished]).any(1).all()):
            tokens = x[:, : min(length, finished)]
            return SampleOutput(tokens=tokens, num_calls=calls + context.fill_calls, num_steps=steps)
        if k + 1 < num_blocks:
            context.append(x[:, span])
    return SampleOutput(tokens=x[:, :length], num_calls=calls + context.fill_calls, num_steps=steps)
