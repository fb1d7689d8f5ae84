"""What each endpoint answers, without the web framework: request bytes in, JSON data or an SSE stream out.

:class:`Endpoints` owns the :class:`Batcher`. A generating endpoint checks the request (a 4xx
:class:`RequestError` before anything is queued), submits it, and follows its events on the event
loop: the batcher's thread hands them over with ``call_soon_threadsafe``. While a request waits or
runs, a watcher listens for the client's disconnect and cancels it at once, streamed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from unmask.errors import UserError
from unmask.generation import masked_text
from unmask.pipeline import Pipeline
from unmask.serve.batcher import Batcher, Event, Failed, Finished, Job, Progress
from unmask.serve.chat import ChatCompletion
from unmask.serve.completions import Completion, models_list
from unmask.serve.requests import GenerationRequest, Limits, RequestError, generate_request, parse_body

Receive = Callable[[], Awaitable[dict[str, Any]]]  # the ASGI receive channel of a request
Answer = dict | AsyncIterator[str]  # JSON data, or the lines of an SSE stream


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_data(err: Exception) -> tuple[int, dict]:
    """HTTP status and OpenAI-style JSON body of an error."""
    if isinstance(err, RequestError):
        status, kind = err.status, "invalid_request_error" if err.status < 500 else "server_busy"
    elif isinstance(err, UserError):
        status, kind = 400, "invalid_request_error"
    else:
        status, kind = 500, "server_error"
    message = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
    if status == 500:
        message = f"the server failed on this request ({type(err).__name__}: {message}); see its log"
    return status, {"error": {"message": message, "type": kind}}


def sse(data: dict | str, event: str | None = None) -> str:
    """One Server-Sent Event."""
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


class Endpoints:
    """The server's endpoints for ``pipeline``, served under the name ``model``."""

    def __init__(self, pipeline: Pipeline, *, model: str = "unmask", max_batch: int = 64,
                 limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.pipeline = pipeline
        self.model = model
        # A request's rows all go into one denoiser call, so it may not have more than max_batch.
        self.limits = replace(limits, max_num_samples=min(limits.max_num_samples, max_batch))
        self.batcher = Batcher(pipeline, max_batch=max_batch, max_waiting=limits.max_waiting)
        self.created = int(time.time())
        self._pieces: dict[int, str | None] = {}

    def health(self) -> dict:
        return {"status": "ok", "model": self.model, "max_batch": self.batcher.max_batch, **self.batcher.stats()}

    def models(self) -> dict:
        return models_list(self.model, self.created)

    async def generate(self, body: bytes, receive: Receive) -> Answer:
        """``POST /v1/generate``: the samples, or with ``"stream": true`` an event per step, then ``done``."""
        request, stream = generate_request(parse_body(body), self.pipeline, self.limits)
        events = self._submit(request, receive, stream=stream)
        if not stream:
            return self._answer(request, await _outcome(events))
        return self._generate_stream(request, events)

    async def chat(self, body: bytes, receive: Receive) -> Answer:
        """``POST /v1/chat/completions`` (OpenAI): the answers, or with ``"stream": true`` their chunks."""
        chat = ChatCompletion(parse_body(body), self.pipeline, self.limits, self.model)
        events = self._submit(chat.request, receive, stream=chat.stream)
        if not chat.stream:
            return chat.answer((await _outcome(events)).samples)
        return self._chat_stream(chat, events)

    async def complete(self, body: bytes, receive: Receive) -> Answer:
        """``POST /v1/completions`` (OpenAI): the completions, or with ``"stream": true`` text chunks."""
        completion = Completion(parse_body(body), self.pipeline, self.limits, self.model)
        events = self._submit(completion.request, receive, stream=completion.stream)
        if not completion.stream:
            return completion.answer((await _outcome(events)).samples)
        return self._completion_stream(completion, events)

    def _answer(self, request: GenerationRequest, finished: Finished) -> dict:
        return {**finished.samples.to_dict(), "seed": request.seed, "queued_seconds": finished.queued_seconds}

    def _step(self, progress: Progress) -> dict:
        """A state being generated: per sample its token ids, its text with [MASK] where masked, and the
        text of each position (null where masked) for displays."""
        samples = []
        for ids in progress.tokens.tolist():
            samples.append({"tokens": ids, "text": masked_text(self.pipeline.tokenizer, ids),
                            "pieces": [self._piece(token) for token in ids]})
        return {"step": progress.step, "samples": samples}

    def _piece(self, token: int) -> str | None:
        if token not in self._pieces:
            tokenizer = self.pipeline.tokenizer
            self._pieces[token] = None if token == tokenizer.mask_id else tokenizer.decode([token])
        return self._pieces[token]

    async def _generate_stream(self, request: GenerationRequest, events: AsyncIterator[Event]) -> AsyncIterator[str]:
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Progress):
                    yield sse(self._step(event), "step")
                elif isinstance(event, Finished):
                    yield sse(self._answer(request, event), "done")
                else:
                    yield sse(error_data(event.error)[1], "error")

    async def _completion_stream(self, completion: Completion, events: AsyncIterator[Event]) -> AsyncIterator[str]:
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Progress):
                    chunks = completion.progress(event.tokens)
                elif isinstance(event, Finished):
                    chunks = completion.finish(event.samples)
                else:
                    chunks = [error_data(event.error)[1]]
                for chunk in chunks:
                    yield sse(chunk)
        yield sse("[DONE]")

    async def _chat_stream(self, chat: ChatCompletion, events: AsyncIterator[Event]) -> AsyncIterator[str]:
        for chunk in chat.start():
            yield sse(chunk)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Progress):
                    chunks = chat.progress(event.tokens)
                elif isinstance(event, Finished):
                    chunks = chat.finish(event.samples)
                else:
                    chunks = [error_data(event.error)[1]]
                for chunk in chunks:
                    yield sse(chunk)
        yield sse("[DONE]")

    def _submit(self, request: GenerationRequest, receive: Receive, *, stream: bool) -> AsyncIterator[Event]:
        """Queue ``request`` now (a busy server refuses it here) and return its events."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        job = self.batcher.submit(request, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event),
                                  stream=stream)
        watcher = asyncio.ensure_future(self._watch(job, queue, receive))
        return self._follow(job, queue, watcher)

    async def _watch(self, job: Job, queue: asyncio.Queue, receive: Receive) -> None:
        """Cancel ``job`` as soon as its client disconnects."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.batcher.cancel(job)
        queue.put_nowait(None)

    async def _follow(self, job: Job, queue: asyncio.Queue, watcher: asyncio.Future) -> AsyncIterator[Event]:
        """The events of ``job`` up to its last; it is cancelled if the reader stops early."""
        try:
            while (event := await queue.get()) is not None:
                yield event
                if isinstance(event, (Finished, Failed)):
                    return
            raise ClientGone
        finally:
            self.batcher.cancel(job)
            watcher.cancel()


async def _outcome(events: AsyncIterator[Event]) -> Finished:
    """The last event of a request that is not streamed; its failure raised."""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):
                return event
    raise ClientGone
