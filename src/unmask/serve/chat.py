"""OpenAI-compatible chat: ``POST /v1/chat/completions`` as the openai client and chat tools send it.

The messages are rendered with the tokenizer's chat template (:mod:`unmask.data.chat`) and answered in
``max_tokens`` (or ``max_completion_tokens``) masked positions after them; an answer ends at its first EOS
(the end of the assistant's turn: ``finish_reason`` "stop"), or runs out of positions ("length"). The
sampling fields of ``/v1/generate`` are accepted as extensions; OpenAI's fields a diffusion model cannot
honour are accepted at their neutral values only, as for ``/v1/completions``.

Streaming (``chat.completion.chunk``): each choice's role first, then its content as it settles (under the
absorbing process an unmasked token never changes, so the answer up to its first masked position is final),
then an empty delta with the finish reason, the usage when ``stream_options.include_usage`` asks, and
``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from unmask.generation import TextSamples
from unmask.pipeline import Pipeline
from unmask.serve.completions import settled_text
from unmask.serve.requests import (
    SAMPLING_FIELDS,
    GenerationRequest,
    Limits,
    RequestError,
    build_request,
    checked_fields,
    sampler_config,
)

NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (False,), "top_logprobs": (), "frequency_penalty": (0,), "presence_penalty": (0,),
    "stop": ("", []), "logit_bias": ({},),
}
CHAT_FIELDS: dict[str, tuple[type, ...]] = {
    "messages": (list,), "max_tokens": (int,), "max_completion_tokens": (int,), "n": (int,), "stream": (bool,),
    "model": (str,), "stream_options": (dict,), "user": (str,), "logprobs": (bool,), "top_logprobs": (int,),
    "frequency_penalty": (float, int), "presence_penalty": (float, int), "stop": (str, list), "logit_bias": (dict,),
    **SAMPLING_FIELDS,
}
RENAMED = {"num_samples": "n", "chat": "messages"}


class ChatCompletion:
    """One checked chat request: the generation it runs and how its answer is written."""

    def __init__(self, body: Mapping[str, Any], pipeline: Pipeline, limits: Limits, model: str) -> None:
        values = checked_fields(body, CHAT_FIELDS)
        for name, neutral in NEUTRAL.items():
            if name in values and values[name] not in neutral:
                raise RequestError(f"{name} is not supported by a masked diffusion model; leave it out")
        if "messages" not in values:
            raise RequestError('messages is required: a list such as [{"role": "user", "content": "Hi"}]')
        max_tokens = values.get("max_completion_tokens", values.get("max_tokens"))
        self.request: GenerationRequest = build_request(
            pipeline, limits, sampler_config(values, RENAMED), num_samples=values.get("n", 1), length=None,
            chat=values["messages"], max_tokens=max_tokens, seed=values.get("seed"), renamed=RENAMED)
        self.tokenizer = pipeline.tokenizer
        self.prefix = self.request.answer_from
        self.stream = values.get("stream", False)
        self.include_usage = bool(values.get("stream_options", {}).get("include_usage", False))
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sent = [""] * self.request.num_samples

    def _envelope(self, kind: str, choices: list[dict], **extra: Any) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def _answer(self, tokens: list[int]) -> tuple[list[int], str]:
        """The answer's ids (up to its EOS, included) and why it ended."""
        answer = tokens[self.prefix:]
        if self.tokenizer.eos_id in answer:
            return answer[: answer.index(self.tokenizer.eos_id) + 1], "stop"
        return answer, "length"

    def _text(self, answer: list[int]) -> str:
        return self.tokenizer.decode([token for token in answer if token != self.tokenizer.eos_id])

    def _usage(self, samples: TextSamples) -> dict[str, int]:
        completion = sum(len(self._answer(row.tolist())[0]) for row in samples.tokens)
        return {"prompt_tokens": self.prefix, "completion_tokens": completion, "total_tokens": self.prefix + completion}

    def answer(self, samples: TextSamples) -> dict:
        """The non-streamed answer (``chat.completion``)."""
        choices = []
        for index, row in enumerate(samples.tokens):
            answer, reason = self._answer(row.tolist())
            choices.append({"index": index, "message": {"role": "assistant", "content": self._text(answer)},
                            "logprobs": None, "finish_reason": reason})
        return self._envelope("chat.completion", choices, usage=self._usage(samples))

    def start(self) -> list[dict]:
        """The first chunk of each choice: its role."""
        return [self._chunk(index, {"role": "assistant", "content": ""}) for index in range(len(self.sent))]

    def progress(self, tokens: Tensor) -> list[dict]:
        """Chunks with the answer newly settled in each choice (none where nothing settled)."""
        chunks = []
        for index, row in enumerate(tokens.tolist()):
            answer = row[self.prefix:]
            if self.tokenizer.mask_id in answer:
                answer = answer[: answer.index(self.tokenizer.mask_id)]
            if self.tokenizer.eos_id in answer:
                answer = answer[: answer.index(self.tokenizer.eos_id)]
            text = settled_text(self.tokenizer, answer)
            if len(text) > len(self.sent[index]) and text.startswith(self.sent[index]):
                chunks.append(self._content(index, text))
        return chunks

    def finish(self, samples: TextSamples) -> list[dict]:
        """The rest of each answer, each choice's finish reason, and the usage when asked for."""
        chunks = []
        for index, row in enumerate(samples.tokens):
            answer, reason = self._answer(row.tolist())
            text = self._text(answer)
            if text != self.sent[index]:
                chunks.append(self._content(index, text))
            chunks.append(self._chunk(index, {}, reason))
        if self.include_usage:
            chunks.append(self._envelope("chat.completion.chunk", [], usage=self._usage(samples)))
        return chunks

    def _content(self, index: int, text: str) -> dict:
        delta = text[len(self.sent[index]):]  # settled text only grows: every chunk extends the last
        self.sent[index] = text
        return self._chunk(index, {"content": delta})

    def _chunk(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return self._envelope("chat.completion.chunk",
                              [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])
