"""Continuous batching: one thread answers the denoiser calls of every running request.

Each request of an MDLM within the model's length is the :class:`SamplingRun` that ``unmask
sample`` drives (:func:`unmask.generation.start_run`: the same template, seed and schedule), so
the same seed gives the same text however requests are batched. A tick advances every running
run to its next :class:`DenoiserCall`, answers the calls of each sequence length with ONE denoiser
call (rows from many requests, each at its own step and time), and hands each run its rows of the
logits. A waiting request joins at the next tick, as long as the rows of the running ones and its
own fit in ``max_batch``; a request whose client went away is dropped at the next tick.

Rows of different lengths get separate calls rather than being padded into one: with an attention
mask the rows' logits round differently (up to 0.25 in bf16 on a 4-layer model), which would
change the texts. Rows of equal length are computed alike alone or among others.

An AR model, a block diffusion model (block by block with its cache) and a text longer than an
MDLM's (generated in windows) are served by :func:`unmask.generation.generate_text` itself, one
request at a time, in their turn in the queue.

Events go to each request's listener, called on the batcher's thread: for streaming requests
:class:`Progress` with the starting state (step 0: the template) and after every step, then
:class:`Finished` or :class:`Failed`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unmask.denoiser import denoise
from unmask.generation import TextSamples, generate_text, in_one_run, start_run, text_samples
from unmask.pipeline import Pipeline
from unmask.runtime import autocast
from unmask.sampling.loop import DenoiserCall
from unmask.serve.requests import GenerationRequest, RequestError


@dataclass
class Progress:
    """The state after a step: ``tokens`` [num_samples, L] (a copy on the CPU)."""

    step: int
    tokens: Tensor


@dataclass
class Finished:
    samples: TextSamples
    queued_seconds: float


@dataclass
class Failed:
    error: Exception


Event = Progress | Finished | Failed
Listener = Callable[[Event], None]


class _Dropped(Exception):
    """Raised from a lone request's step callback once its client is gone."""


class Job:
    """A request in the batcher: where its events go, its sampling run, whether its client still waits."""

    def __init__(self, request: GenerationRequest, listener: Listener, stream: bool) -> None:
        self.request = request
        self.listener = listener
        self.stream = stream
        self.cancelled = False
        self.done = False
        self.submitted = time.perf_counter()
        self.started = self.submitted
        self.run = None
        self.events = None
        self.answer: Tensor | None = None
        self.steps = 0

    def emit(self, event: Event) -> None:
        try:
            self.listener(event)
        except RuntimeError:  # the listener's event loop has closed: nobody waits any more
            self.cancelled = True


class Batcher:
    """Runs requests on ``pipeline``'s model, at most ``max_batch`` rows per denoiser call.

    :meth:`submit` queues a request (at most ``max_waiting`` wait), :meth:`cancel` drops it,
    :meth:`close` finishes every queued and running request, then stops the thread.
    """

    def __init__(self, pipeline: Pipeline, *, max_batch: int = 64, max_waiting: int = 256,
                 precision: str = "auto") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.precision = precision
        # Requests by outcome, and the denoiser calls made for them all (shared calls count once).
        self.counts = {"served": 0, "dropped": 0, "failed": 0, "denoiser_calls": 0}
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="unmask-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Refuse new requests, finish the queued and running ones, stop."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, request: GenerationRequest, listener: Listener, *, stream: bool = False) -> Job:
        """Queue ``request``; ``listener`` gets its events (Progress only if ``stream``)."""
        with self._lock:
            if self._closing:
                raise RequestError("the server is shutting down; send the request again once it is back", status=503)
            if len(self._waiting) >= self.max_waiting:
                raise RequestError(f"the server is busy ({len(self._waiting)} requests wait); retry in a moment",
                                   status=503)
            job = Job(request, listener, stream)
            self._waiting.append(job)
            self._lock.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop ``job`` (its client went away): now if it waits, at the next tick if it runs."""
        with self._lock:
            if job.done:
                return
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                self._settle(job, "dropped")

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"running": len(self._running), "waiting": len(self._waiting), **self.counts}

    def _settle(self, job: Job, outcome: str, event: Event | None = None) -> None:
        """Record how ``job`` ended and tell its listener (with the lock held)."""
        job.done = True
        self.counts[outcome] += 1
        if event is not None:
            job.emit(event)

    def _end(self, job: Job, outcome: str, event: Event | None = None) -> None:
        with self._lock:
            if job in self._running:
                self._running.remove(job)
            if not job.done:
                self._settle(job, outcome, event)

    def _serve(self) -> None:
        with torch.no_grad(), autocast(self.precision, self.pipeline.device):
            while True:
                with self._lock:
                    alone = self._admit()
                    if alone is None and not self._running:
                        if self._closing and not self._waiting:
                            return
                        self._lock.wait()
                        continue
                if alone is not None:
                    self._run_alone(alone)
                else:
                    self._tick()

    def _batched(self, job: Job) -> bool:
        return in_one_run(self.pipeline, job.request.length)

    def _admit(self) -> Job | None:
        """Start waiting requests in their order while their rows fit; a lone one waits for an empty batch
        and is returned to run (with the lock held)."""
        rows = sum(job.request.num_samples for job in self._running)
        while self._waiting:
            job = self._waiting[0]
            if not self._batched(job):
                if self._running:
                    return None
                self._waiting.popleft()
                self._start(job)
                return job
            if rows + job.request.num_samples > self.max_batch:
                return None
            self._waiting.popleft()
            request = job.request
            self._start(job)
            try:
                job.run = start_run(self.pipeline, request.sampling, request.fixed, num_samples=request.num_samples,
                                    seed=request.seed)
            except Exception as err:
                self._settle(job, "failed", Failed(err))
                continue
            job.events = job.run.events()
            self._running.append(job)
            rows += request.num_samples
        return None

    def _start(self, job: Job) -> None:
        """A request starts: a stream sees its starting state (the template) as step 0."""
        job.started = time.perf_counter()
        if job.stream:
            request = job.request
            job.emit(Progress(0, request.fixed.expand(request.num_samples, -1).to("cpu", copy=True)))

    def _tick(self) -> None:
        """Advance every running request to its next denoiser call; one call per sequence length."""
        calls: dict[int, list[tuple[Job, DenoiserCall]]] = {}
        for job in list(self._running):
            if job.cancelled:
                self._end(job, "dropped")
                continue
            try:
                call = self._advance(job)
            except Exception as err:  # a bug in one run must not stop the others
                self._end(job, "failed", Failed(err))
                continue
            if call is None:
                samples = text_samples(self.pipeline.tokenizer, job.run.output(), time.perf_counter() - job.started)
                self._end(job, "served", Finished(samples, job.started - job.submitted))
            else:
                calls.setdefault(call.x.shape[1], []).append((job, call))
        for group in calls.values():
            try:
                self._answer(group)
            except Exception as err:  # e.g. out of memory: these requests fail, the server goes on
                for job, _ in group:
                    self._end(job, "failed", Failed(err))

    def _advance(self, job: Job) -> DenoiserCall | None:
        """Send ``job`` its logits and run it to its next denoiser call (None once it is complete)."""
        while True:
            try:
                event = job.events.send(job.answer)
            except StopIteration:
                return None
            job.answer = None
            if isinstance(event, DenoiserCall):
                return event
            if job.stream and not job.cancelled:
                job.emit(Progress(event.step, event.x.to("cpu", copy=True)))

    def _answer(self, group: list[tuple[Job, DenoiserCall]]) -> None:
        """One denoiser call for the rows of every call in ``group``; each job gets its logits [N, V]."""
        x = torch.cat([call.x for _, call in group])
        t = torch.cat([call.t for _, call in group])
        where = torch.cat([call.where for _, call in group])
        logits = denoise(self.pipeline.model, x, t, where=where)
        self.counts["denoiser_calls"] += 1
        sizes = [int(call.where.sum()) for _, call in group]
        for (job, _), part in zip(group, logits.split(sizes)):
            job.answer = part

    def _run_alone(self, job: Job) -> None:
        """Serve an AR, block diffusion or semi-autoregressive request with :func:`generate_text`, as ``unmask
        sample`` does."""
        request = job.request

        def on_step(x: Tensor) -> None:
            if job.cancelled:
                raise _Dropped
            job.steps += 1
            if job.stream:
                job.emit(Progress(job.steps, x.to("cpu", copy=True)))

        try:
            samples = generate_text(self.pipeline, request.sampling, num_samples=request.num_samples,
                                    length=request.length, prompt=request.prompt, template=request.template,
                                    seed=request.seed, precision=self.precision, on_step=on_step)
        except _Dropped:
            self._end(job, "dropped")
        except Exception as err:
            self._end(job, "failed", Failed(err))
        else:
            self.counts["denoiser_calls"] += samples.num_calls
            self._end(job, "served", Finished(samples, job.started - job.submitted))
