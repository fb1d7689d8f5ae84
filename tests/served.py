"""Helpers of the server tests: what a request should give (generate_text, as ``unmask sample``), and SSE parsing."""

from __future__ import annotations

import json
from collections.abc import Iterable

from unmask.generation import TextSamples, generate_text
from unmask.pipeline import Pipeline
from unmask.sampling import SamplerConfig


def sampling_of(body: dict) -> SamplerConfig:
    """The SamplerConfig of a /v1/generate body's sampling fields."""
    return SamplerConfig.from_options(
        sampler=body.get("sampler"), steps=body.get("steps"), order=body.get("order"),
        threshold=body.get("threshold"), remask=body.get("remasking"), eta=body.get("eta"),
        temperature=body.get("temperature"), top_k=body.get("top_k"), top_p=body.get("top_p"))


def alone(pipeline: Pipeline, body: dict) -> TextSamples:
    """What generate_text (the function ``unmask sample`` runs) gives for the options of ``body``."""
    return generate_text(pipeline, sampling_of(body), num_samples=body.get("num_samples", 1),
                         length=body.get("length"), prompt=body.get("prompt"), template=body.get("template"),
                         seed=body["seed"])


def sse_events(lines: Iterable[str]) -> list[tuple[str | None, dict | str]]:
    """(event name or None, JSON data or "[DONE]") of each Server-Sent Event in ``lines``."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            events.append((name, data if data == "[DONE]" else json.loads(data)))
            name = None
    return events
