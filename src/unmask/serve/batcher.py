"""Continuous batching: one thread answers the denoiser calls of every running request.

Each request is the sampling run that ``unmask sample`` drives (:func:`unmask.generation.start_run`:
the same fixed tokens, seed and kind's sampler: within the model's length, in windows past it, block
by block or left to right), so the same seed gives the same text however requests are batched. The
batcher is itself a run (:meth:`Batcher.events`), driven by :func:`unmask.sampling.run.drive` on its
thread: a tick advances every running request to its next :class:`DenoiserCall`, merges the calls of
each sequence length into ONE call (rows from many requests, each at its own step and time), and
hands each request its rows of the logits. A block diffusion call carries its own key/value cache and
is answered on its own, in the same tick. So every kind is served concurrently: a short request
finishes while a long one is still streaming. A waiting request joins at the next tick, as long as
the rows of the running ones and its own fit in ``max_batch``; a request whose client went away is
dropped at the next tick.

Rows of different lengths get separate calls rather than being padded into one: with an attention
mask the rows' logits round differently (up to 0.25 in bf16 on a 4-layer model), which would
change the texts. Rows of equal length are computed alike alone or among others.

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

from torch import Tensor

from unmask.generation import TextSamples, start_run, text_samples
from unmask.pipeline import Pipeline
from unmask.runtime import autocast
from unmask.sampling.run import DenoiserCall, Events, answer_with, drive, merge_calls, merge_key, split_answer
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
        self.events: Events | None = None
        self.answer: Tensor | None = None

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
        self._call = answer_with(pipeline.model)
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
        with autocast(self.precision, self.pipeline.device):
            drive(self, self._answer)

    def events(self) -> Events:
        """Every running request's calls, merged tick by tick (see the module docstring); ends once the
        batcher is closing and nothing is left to run."""
        while True:
            with self._lock:
                self._admit()
                if not self._running:
                    if self._closing and not self._waiting:
                        return
                    self._lock.wait()
                    continue
            for group in self._tick():
                calls = [call for _, call in group]
                try:
                    logits = yield merge_calls(calls)
                except Exception as err:  # e.g. out of memory: these requests fail, the server goes on
                    for job, _ in group:
                        self._end(job, "failed", Failed(err))
                    continue
                for (job, _), part in zip(group, split_answer(logits, calls)):
                    job.answer = part

    def _answer(self, call: DenoiserCall) -> Tensor:
        self.counts["denoiser_calls"] += 1
        return self._call(call)

    def _admit(self) -> None:
        """Start waiting requests in their order while their rows fit (with the lock held)."""
        rows = sum(job.request.num_samples for job in self._running)
        while self._waiting:
            job = self._waiting[0]
            if rows + job.request.num_samples > self.max_batch:
                return
            self._waiting.popleft()
            request = job.request
            self._start(job)
            try:
                job.run = start_run(self.pipeline, request.sampling, request.fixed, num_samples=request.num_samples,
                                    seed=request.seed, length=request.length,
                                    stop_at_eos=request.answer_from is not None)
            except Exception as err:
                self._settle(job, "failed", Failed(err))
                continue
            job.events = job.run.events()
            self._running.append(job)
            rows += request.num_samples

    def _start(self, job: Job) -> None:
        """A request starts: a stream sees its starting state (the template) as step 0."""
        job.started = time.perf_counter()
        if job.stream:
            request = job.request
            job.emit(Progress(0, request.fixed.expand(request.num_samples, -1).to("cpu", copy=True)))

    def _tick(self) -> list[list[tuple[Job, DenoiserCall]]]:
        """Advance every running request to its next denoiser call: the calls to make, merged where they can
        be (plain calls of one length); a call with its own key/value cache stays alone."""
        groups: dict[object, list[tuple[Job, DenoiserCall]]] = {}
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
                samples = text_samples(self.pipeline.tokenizer, job.run.output(), time.perf_counter() - job.started,
                                       answer_from=job.request.answer_from)
                self._end(job, "served", Finished(samples, job.started - job.submitted))
            else:
                groups.setdefault(merge_key(call, job), []).append((job, call))
        return list(groups.values())

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
