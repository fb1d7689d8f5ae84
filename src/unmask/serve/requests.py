"""What a client may ask for: JSON bodies checked into a :class:`GenerationRequest`, or a :class:`RequestError`.

Every check that ``unmask sample`` makes is made here by the same code (:class:`SamplerConfig` and
:func:`unmask.generation.prepare`), and its message is passed on naming the options as the
request's fields (:class:`unmask.errors.OptionError`: ``top_k`` here, ``--top-k`` on the command
line). On top come the server's :class:`Limits`, which protect its memory, and the JSON itself:
malformed bodies, unknown fields and values of the wrong type are refused with a message that names
the fix.
"""

from __future__ import annotations

import difflib
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from unmask.errors import OptionError, UserError
from unmask.generation import chat_prefix, prepare
from unmask.pipeline import Pipeline
from unmask.runtime import SEED_RANGE
from unmask.sampling import SamplerConfig

MAX_BODY_BYTES = 1 << 20

# The sampling fields every generating endpoint takes, with their JSON types.
SAMPLING_FIELDS: dict[str, tuple[type, ...]] = {
    "steps": (int,), "sampler": (str,), "order": (str,), "threshold": (float, int), "temperature": (float, int),
    "top_p": (float, int), "top_k": (int,), "remasking": (str,), "eta": (float, int), "final_step": (str,),
    "seed": (int,),
}
GENERATE_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": (str,), "template": (str,), "length": (int,), "num_samples": (int,), "stream": (bool,),
    "chat": (str, list), "max_tokens": (int,), **SAMPLING_FIELDS,
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}


class RequestError(UserError):
    """A request the server refuses; ``status`` is the HTTP status (400 unless the server is busy, ...)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may wait: the server's memory stays bounded.

    ``max_length`` defaults to four windows of the model's length (longer texts of an MDLM are
    generated semi-autoregressively, as ``unmask sample --length`` does).
    """

    max_num_samples: int = 16
    max_steps: int = 1024
    max_length: int | None = None
    max_waiting: int = 256

    def length_limit(self, pipeline: Pipeline) -> int:
        """The longest text (BOS included) one request may ask of an MDLM."""
        return self.max_length if self.max_length is not None else 4 * pipeline.config.data.length


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request: what :func:`unmask.generation.generate_text` takes, and the fixed tokens
    :func:`unmask.generation.prepare` made of it (the template, or the prefix of a longer text).
    ``answer_from`` is where a chat's answer starts (None for other requests): it ends at its first EOS."""

    sampling: SamplerConfig
    num_samples: int
    length: int | None
    prompt: str | None
    template: str | None
    seed: int
    fixed: Tensor
    answer_from: int | None = None


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
JSON_TYPE = "application/json"


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port: ``[::1]:8000`` is ``::1``, ``Example:80`` is ``example``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def check_origin(method: str, host: str | None, content_type: str | None, allowed: Sequence[str]) -> None:
    """Refuse a request that a web page could have sent on a visitor's behalf.

    A page elsewhere reaches a local server by DNS rebinding (its own name made to point at 127.0.0.1):
    its requests name that other host, so only the hosts in ``allowed`` are answered ("*": any). And a
    page may post a form to any address without the browser asking the server first: a POST is
    taken only when it says its body is JSON, which a form cannot.
    """
    if "*" not in allowed:
        if not host:
            raise RequestError("the request has no Host header; send one naming this server")
        if host_name(host) not in allowed:
            raise RequestError(f"this server answers to {', '.join(allowed)}, not to Host {host_name(host)!r}; "
                               "start it with --allowed-hosts naming that host to allow it", status=403)
    if method == "POST" and (content_type or "").split(";")[0].strip().lower() != JSON_TYPE:
        raise RequestError(f'send the body as JSON with the header "Content-Type: {JSON_TYPE}" (got '
                           f"{content_type or 'none'}); curl: -H 'Content-Type: {JSON_TYPE}'", status=415)


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"the request body is over {MAX_BODY_BYTES >> 20} MiB; send a shorter prompt", status=413)
    try:
        value = json.loads(body)
    except RecursionError:
        raise RequestError("the request body nests arrays or objects too deeply to read; send a flat object such as "
                           '{"prompt": "The", "length": 64}') from None
    except ValueError as err:  # malformed JSON, bytes that are not UTF-8, an integer of thousands of digits
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise RequestError(f"the request body is not valid JSON ({reason}); send an object such as "
                           '{"prompt": "The", "length": 64}') from None
    if not isinstance(value, dict):
        raise RequestError('the request body must be a JSON object such as {"prompt": "The", "length": 64}')
    return value


def checked_fields(body: Mapping[str, Any], fields: Mapping[str, tuple[type, ...]]) -> dict[str, Any]:
    """The fields of ``body`` that are set (null counts as absent), each checked to be of its type."""
    values = {}
    for name, value in body.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the fields are {', '.join(sorted(fields))}"
            raise RequestError(f"unknown field {name!r}; {hint}")
        if value is None:
            continue
        types = fields[name]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise RequestError(f"{name} must be {_TYPE_NAMES[types[0]]}, got {json.dumps(value)}")
        if isinstance(value, float) and not math.isfinite(value):  # JSON as Python reads it allows NaN, Infinity
            raise RequestError(f"{name} must be a finite number, got {value}")
        values[name] = value
    return values


def in_field_names(err: UserError, renamed: Mapping[str, str] | None = None) -> str:
    """The message of ``err`` with its options named as the request's fields (``renamed`` where a field's
    name differs from the option's)."""
    renamed = {"remask": "remasking", **(renamed or {})}
    return err.naming(lambda option: renamed.get(option, option)) if isinstance(err, OptionError) else str(err)


def sampler_config(values: Mapping[str, Any], renamed: Mapping[str, str] | None = None) -> SamplerConfig:
    """The SamplerConfig of the sampling fields, checked as ``unmask sample`` checks its options."""
    options = {name: values.get(name) for name in ("sampler", "steps", "order", "threshold", "eta", "temperature",
                                                   "top_k", "top_p", "final_step")}
    try:
        return SamplerConfig.from_options(remask=values.get("remasking"), **options)
    except UserError as err:
        raise RequestError(in_field_names(err, renamed)) from None


def build_request(
    pipeline: Pipeline,
    limits: Limits,
    sampling: SamplerConfig,
    *,
    num_samples: int,
    length: int | None,
    prompt: str | None = None,
    template: str | None = None,
    chat: str | list | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    renamed: Mapping[str, str] | None = None,
) -> GenerationRequest:
    """Check a request against the server's limits and as ``unmask sample`` would; ``seed`` None draws one.
    A ``chat`` (a question or messages) is answered in ``max_tokens`` tokens."""
    names = {"num_samples": "num_samples", "length": "length", **(renamed or {})}
    prefix = None
    try:
        if chat is not None:
            prefix, length = chat_prefix(pipeline, chat, max_tokens=max_tokens, prompt=prompt, template=template,
                                         length=length)
        elif max_tokens is not None:
            raise OptionError("{0} is the length of a chat's answer: give {1} with it, or {2}", "max_tokens", "chat",
                              "length")
    except UserError as err:
        raise RequestError(in_field_names(err, renamed)) from None
    if num_samples > limits.max_num_samples:
        raise RequestError(f"{names['num_samples']} is at most {limits.max_num_samples} on this server (its memory "
                           f"limit), got {num_samples}; send several requests instead")
    if sampling.steps > limits.max_steps and sampling.sampler != "first_hitting":  # it calls once per token
        raise RequestError(f"steps is at most {limits.max_steps} on this server, got {sampling.steps}; ask for fewer")
    most = limits.length_limit(pipeline)
    if length is not None and length > most and not pipeline.is_autoregressive:  # an AR model: prepare says why
        raise RequestError(f"{length} tokens (BOS included) are over this server's limit of {most}; ask for a "
                           f"smaller {names['length']}")
    if seed is None:
        seed = secrets.randbelow(1 << 31)
    elif not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise RequestError(f"seed must be a 64-bit integer, got {seed}")
    try:
        fixed = prepare(pipeline, sampling, num_samples=num_samples, length=length, prompt=prompt, template=template,
                        prefix=prefix)
    except UserError as err:
        raise RequestError(in_field_names(err, renamed)) from None
    return GenerationRequest(sampling=sampling, num_samples=num_samples, length=length, prompt=prompt,
                             template=template, seed=seed, fixed=fixed,
                             answer_from=None if prefix is None else len(prefix))


def generate_request(body: Mapping[str, Any], pipeline: Pipeline, limits: Limits) -> tuple[GenerationRequest, bool]:
    """The request of a ``POST /v1/generate`` body, and whether it asks for a stream."""
    values = checked_fields(body, GENERATE_FIELDS)
    request = build_request(pipeline, limits, sampler_config(values), num_samples=values.get("num_samples", 1),
                            length=values.get("length"), prompt=values.get("prompt"),
                            template=values.get("template"), chat=values.get("chat"),
                            max_tokens=values.get("max_tokens"), seed=values.get("seed"))
    return request, values.get("stream", False)
