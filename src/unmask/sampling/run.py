"""Every sampler is a run: the sampler without the network, and :func:`drive`, the one loop that answers it.

A run (:class:`Run`) is a generator of events. It yields a :class:`DenoiserCall` whenever it needs
logits and is sent them back, and a :class:`StepDone` after every step. The samplers are runs over
one sequence window (:class:`unmask.sampling.loop.SamplingRun`: ancestral, cached, first-hitting,
analytic, ordered and remasking), left to right (:mod:`.autoregressive`), block by block with a
key/value cache (:mod:`.blocks`) and window by window (:mod:`.semi_ar`): the last three are made of
the first, or of calls of their own, and none of them calls a network.

:func:`drive` is the one loop that answers calls during sampling: :func:`run_to_end` answers them
with one denoiser (:func:`answer_with`), and the server (:mod:`unmask.serve.batcher`) drives a run
that merges the calls of every request it serves into batched calls (their rows are independent).
A call that cannot be answered (out of memory, say) is thrown back into the run, which may give up
on the rows it concerns and go on.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, denoise
from unmask.static_shapes import StaticShapeDenoiser

if TYPE_CHECKING:
    from unmask.models.block_attention import KVCache


@dataclass
class SampleOutput:
    """Samples and what they cost: ``tokens`` [B, L]; ``num_calls`` network calls; ``num_steps`` steps."""

    tokens: Tensor
    num_calls: int
    num_steps: int


@dataclass
class DenoiserCall:
    """Logits a sampling run needs: at the ``where`` [R, L] positions of rows ``x`` [R, L] at times ``t`` [R].

    The answer is the denoiser's logits there, [N, V] in row-major order (N = where.sum()).
    Rows with nothing to unmask may be left out: every row's output depends on that row alone.
    ``rows`` (bool [B]) says which of the run's rows were kept, None when all were.

    A block diffusion run asks with its finished blocks as the model's key/value ``cache`` (the call's
    positions come after them and are written into it) and ``block_size`` for block-causal attention
    among the call's positions; such a call is answered alone, never merged with another's rows.
    """

    x: Tensor
    t: Tensor
    where: Tensor
    rows: Tensor | None = None
    cache: KVCache | None = None
    block_size: int | None = None


@dataclass
class StepDone:
    """A step of a sampling run is complete; ``x`` is the run's state after it (what a viewer shows)."""

    step: int
    x: Tensor


Event = DenoiserCall | StepDone
Events = Generator[Event, Tensor | None, None]
Answer = Callable[[DenoiserCall], Tensor]


class Drivable(Protocol):
    """Anything :func:`drive` can drive: a generator of events."""

    def events(self) -> Events: ...


class Run(Drivable, Protocol):
    """A sampler without the network: :meth:`events` to drive, :meth:`output` once it is exhausted."""

    def output(self) -> SampleOutput: ...


def initial_state(
    *, batch_size: int, length: int, mask_id: int, template: Tensor | None, device: torch.device | str | None
) -> Tensor:
    """All MASK, or the template (every non-MASK entry is a fixed token) broadcast to the batch."""
    if template is None:
        return torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    template = torch.as_tensor(template, device=device).long()
    if template.dim() == 1:
        template = template.unsqueeze(0)
    if template.shape[-1] != length or template.shape[0] not in (1, batch_size):
        raise ValueError(f"template of shape {tuple(template.shape)} does not fit batch {batch_size} x length {length}")
    return template.expand(batch_size, length).clone()


def model_device(denoiser: Denoiser) -> torch.device:
    """Where ``denoiser``'s parameters live (CPU for a plain callable)."""
    if isinstance(denoiser, torch.nn.Module):
        parameter = next(denoiser.parameters(), None)
        if parameter is not None:
            return parameter.device
    return torch.device("cpu")


def call_denoiser(denoiser: Denoiser, call: DenoiserCall) -> Tensor:
    """The logits ``call`` asks for, from ``denoiser``."""
    return denoise(denoiser, call.x, call.t, where=call.where, cache=call.cache, block_size=call.block_size)


def answer_with(denoiser: Denoiser, *, static_batch: int | None = None) -> Answer:
    """The answer to every call from ``denoiser``.

    ``static_batch`` runs every call at ``[static_batch, its length]``, rows padded and the full head
    computed (:class:`unmask.static_shapes.StaticShapeDenoiser`, one per length: a CUDA graph on GPUs,
    where launch overhead sets the time of small batches), for the same samples. It is an option of the
    driver, not of :class:`unmask.sampling.SamplerConfig`: it changes how the denoiser runs, not one
    token drawn, so a SamplerConfig (what the frontier sweeps and a server takes from its clients)
    stays a description of the sampler alone.
    """
    if static_batch is None:
        return lambda call: call_denoiser(denoiser, call)
    static: dict[int, StaticShapeDenoiser] = {}

    def answer(call: DenoiserCall) -> Tensor:
        if call.cache is not None or call.block_size is not None:
            raise ValueError("a block diffusion call (key/value cache) cannot run at a static shape")
        length = call.x.shape[1]
        if length not in static:
            static[length] = StaticShapeDenoiser(denoiser, batch_size=static_batch, length=length)
        return static[length](call.x, call.t, where=call.where)

    return answer


def merge_calls(calls: list[DenoiserCall]) -> DenoiserCall:
    """One call of the rows of ``calls`` (plain calls of one sequence length, or a single call)."""
    if len(calls) == 1:
        return calls[0]
    return DenoiserCall(torch.cat([c.x for c in calls]), torch.cat([c.t for c in calls]),
                        torch.cat([c.where for c in calls]))


def split_answer(logits: Tensor, calls: list[DenoiserCall]) -> list[Tensor]:
    """Each call's part of the logits of their :func:`merge_calls` (row-major over ``where``)."""
    return list(logits.split([int(call.where.sum()) for call in calls]))


def merge_key(call: DenoiserCall, owner: object) -> object:
    """Calls with equal keys can be merged: plain calls by their sequence length (rows of one length are
    computed alike alone or among others, padded rows are not); a block diffusion call, which carries its
    own key/value cache, only with itself (keyed by its ``owner``)."""
    return owner if call.cache is not None or call.block_size is not None else call.x.shape[1]


class RunGroup:
    """Several runs driven as one run (:func:`drive`): in every round each unfinished run advances to its
    next call, and the calls are merged by :func:`merge_key` into as few calls as can be, of at most
    ``max_rows`` rows each. A row's logits depend on that row alone, so every run gives the tokens it gives
    driven alone (its randomness is its own generator)."""

    def __init__(self, runs: list[Run], *, max_rows: int | None = None) -> None:
        self.runs = runs
        self.max_rows = max_rows

    def events(self) -> Events:
        streams = [run.events() for run in self.runs]
        answers: list[Tensor | None] = [None] * len(streams)
        live = list(range(len(streams)))
        while live:
            calls: dict[int, DenoiserCall] = {}
            for i in live:
                call = _next_call(streams[i], answers[i])
                answers[i] = None
                if call is not None:
                    calls[i] = call
            live = list(calls)
            groups: dict[object, list[int]] = {}
            for i, call in calls.items():
                groups.setdefault(merge_key(call, i), []).append(i)
            for members in groups.values():
                for chunk in _chunks(members, [calls[i].x.shape[0] for i in members], self.max_rows):
                    parts = [calls[i] for i in chunk]
                    logits = yield merge_calls(parts)
                    for i, part in zip(chunk, split_answer(logits, parts)):
                        answers[i] = part


def _next_call(events: Events, answer: Tensor | None) -> DenoiserCall | None:
    """Send a run its logits and run it to its next call (None once it is complete)."""
    while True:
        try:
            event = events.send(answer)
        except StopIteration:
            return None
        answer = None
        if isinstance(event, DenoiserCall):
            return event


def _chunks(members: list[int], rows: list[int], max_rows: int | None) -> list[list[int]]:
    """``members`` in order, cut where the next one's rows would pass ``max_rows`` (a call is never split)."""
    chunks, current, used = [], [], 0
    for member, count in zip(members, rows):
        if current and max_rows is not None and used + count > max_rows:
            chunks.append(current)
            current, used = [], 0
        current.append(member)
        used += count
    return [*chunks, current] if current else chunks


def drive(run: Drivable, answer: Answer, on_step: Callable[[Tensor], None] | None = None) -> None:
    """Run ``run`` to the end: ``answer`` gives the logits of every call, ``on_step`` sees every step.

    An exception from ``answer`` is thrown into the run at the call that asked: a run that cannot go on
    without those logits lets it propagate (it then leaves this function), one that can (the server's)
    catches it.
    """
    events = run.events()
    with torch.no_grad():
        try:
            event = next(events)
            while True:
                if isinstance(event, DenoiserCall):
                    try:
                        logits = answer(event)
                    except Exception as err:  # noqa: BLE001 - handed to the run, which decides
                        event = events.throw(err)
                        continue
                    event = events.send(logits)
                else:
                    if on_step is not None:
                        on_step(event.x)
                    event = events.send(None)
        except StopIteration:
            return


def run_to_end(denoiser: Denoiser, run: Run, *, on_step: Callable[[Tensor], None] | None = None,
               static_shapes: bool = False) -> SampleOutput:
    """Answer every call of ``run`` with ``denoiser`` (see :func:`answer_with` for ``static_shapes``, which
    runs the calls at the run's batch size); ``on_step`` sees the state after every step."""
    static_batch = run.output().tokens.shape[0] if static_shapes else None
    drive(run, answer_with(denoiser, static_batch=static_batch), on_step)
    return run.output()
