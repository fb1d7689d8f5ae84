"""OpenAI-compatible completions: ``POST /v1/completions`` as the openai client and tools send it.

A completion is the prompt's continuation by ``max_tokens`` tokens: an MDLM request of length
1 + prompt + max_tokens (BOS included), semi-autoregressive beyond the model's length. The
sampling fields of ``/v1/generate`` (steps, sampler, ...) are accepted too, as extensions.
OpenAI's fields that a diffusion model cannot honour (stop, logprobs, penalties, ...) are accepted
at their neutral values and refused otherwise, so a client never silently gets less than it
asked for.

Streaming sends what is settled: under the absorbing process an unmasked token never changes, so
the text up to each sample's first masked position is final, and it grows as positions unmask.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from unmask.data import Tokenizer
from unmask.errors import UserError
from unmask.generation import TextSamples, check_text, decode_sample
from unmask.pipeline import Pipeline
from unmask.serve.requests import (
    SAMPLING_FIELDS,
    GenerationRequest,
    Limits,
    RequestError,
    build_request,
    checked_fields,
    sampler_config,
)

DEFAULT_MAX_TOKENS = 16  # OpenAI's default
# OpenAI's fields that are accepted only at these neutral values.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (False,), "logprobs": (), "best_of": (1,), "frequency_penalty": (0,), "presence_penalty": (0,),
    "stop": ("", []), "suffix": (), "logit_bias": ({},),
}
COMPLETION_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": (str, list), "max_tokens": (int,), "n": (int,), "stream": (bool,), "model": (str,),
    "stream_options": (dict,), "user": (str,), "echo": (bool,), "logprobs": (int,), "best_of": (int,),
    "frequency_penalty": (float, int), "presence_penalty": (float, int), "stop": (str, list), "suffix": (str,),
    "logit_bias": (dict,), **SAMPLING_FIELDS,
}
RENAMED = {"num_samples": "n", "length": "max_tokens"}
REPLACEMENT_CHARACTER = "\ufffd"  # what a token that ends inside a UTF-8 character decodes to


class Completion:
    """One checked completion request: the generation it runs and how its answer is written."""

    def __init__(self, body: Mapping[str, Any], pipeline: Pipeline, limits: Limits, model: str) -> None:
        values = checked_fields(body, COMPLETION_FIELDS)
        for name, neutral in NEUTRAL.items():
            if name in values and values[name] not in neutral:
                raise RequestError(f"{name} is not supported by a masked diffusion model; leave it out")
        prompt = values.get("prompt", "")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise RequestError("prompt must be one string (lists of prompts or of token ids are not supported); "
                                   "send one request per prompt")
            prompt = prompt[0]
        max_tokens = values.get("max_tokens", DEFAULT_MAX_TOKENS)
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
        self.tokenizer = pipeline.tokenizer
        try:
            prompt = check_text(prompt, "prompt")
        except UserError as err:
            raise RequestError(str(err)) from None
        self.prefix = 1 + len(self.tokenizer.encode(prompt))  # BOS and the prompt
        self.request: GenerationRequest = build_request(
            pipeline, limits, sampler_config(values, RENAMED), num_samples=values.get("n", 1),
            length=self.prefix + max_tokens, prompt=prompt, seed=values.get("seed"), renamed=RENAMED)
        self.stream = values.get("stream", False)
        self.include_usage = bool(values.get("stream_options", {}).get("include_usage", False))
        self.model = model
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.sent = [""] * self.request.num_samples

    def _envelope(self, choices: list[dict], **extra: Any) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def _completion(self, tokens: list[int]) -> str:
        return decode_sample(self.tokenizer, tokens[self.prefix:])

    def _usage(self, samples: TextSamples) -> dict[str, int]:
        completion = sum(len(row) - self.prefix for row in samples.tokens)
        return {"prompt_tokens": self.prefix, "completion_tokens": completion,
                "total_tokens": self.prefix + completion}

    def answer(self, samples: TextSamples) -> dict:
        """The non-streamed answer."""
        choices = [{"text": self._completion(row.tolist()), "index": i, "logprobs": None, "finish_reason": "length"}
                   for i, row in enumerate(samples.tokens)]
        return self._envelope(choices, usage=self._usage(samples))

    def progress(self, tokens: Tensor) -> list[dict]:
        """Chunks with the text newly settled in each sample (none where nothing settled)."""
        chunks = []
        for i, row in enumerate(tokens.tolist()):
            generated = row[self.prefix:]
            settled = generated.index(self.tokenizer.mask_id) if self.tokenizer.mask_id in generated else len(generated)
            text = settled_text(self.tokenizer, generated[:settled])
            if len(text) > len(self.sent[i]) and text.startswith(self.sent[i]):
                chunks.append(self._chunk(i, text))
        return chunks

    def finish(self, samples: TextSamples) -> list[dict]:
        """The last chunk of each sample (the rest of its text), and the usage when asked for."""
        chunks = [self._chunk(i, self._completion(row.tolist()), "length") for i, row in enumerate(samples.tokens)]
        if self.include_usage:
            chunks.append(self._envelope([], usage=self._usage(samples)))
        return chunks

    def _chunk(self, index: int, text: str, finish_reason: str | None = None) -> dict:
        delta = text[len(self.sent[index]):]  # settled text only grows: every chunk extends the last
        self.sent[index] = text
        return self._envelope([{"text": delta, "index": index, "logprobs": None, "finish_reason": finish_reason}])


def settled_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of ``ids`` without a trailing piece of an unfinished UTF-8 character."""
    return tokenizer.decode(ids).rstrip(REPLACEMENT_CHARACTER)


def models_list(model: str, created: int) -> dict:
    """The answer of ``GET /v1/models``: the one model this server serves."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "unmask"}]}
