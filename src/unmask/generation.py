"""Text in, text out: prompts, infilling templates and decoding around the samplers.

A template is text in which ``[MASK]`` marks one token to generate; ``[MASK:N]`` marks N in a
row (writing ``[MASK]`` N times does the same). Everything else in the template is fixed and is
never changed by the sampler. A chat (a question, or a list of messages) is rendered with the
tokenizer's chat template and answered in ``max_tokens`` masked positions after it; the answer ends at
its first EOS (the end of the assistant's turn).

:func:`generate_text` is what ``unmask sample`` runs: :func:`prepare` checks a request and makes
its fixed tokens, :func:`start_run` the sampling run the model's kind makes of them (within the
model's length, in windows past it, block by block or left to right: the server drives the same
runs among others, so that a seed gives the same text there), :func:`text_samples` the texts.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unmask.data import Tokenizer
from unmask.data.chat import Messages, checked_messages, prompt_ids
from unmask.errors import OptionError
from unmask.kinds.base import SLIDING, WINDOWS
from unmask.models import DiTConfig
from unmask.pipeline import Pipeline
from unmask.runtime import SEED_RANGE, autocast, resolve_precision
from unmask.sampling import SampleOutput, SamplerConfig
from unmask.sampling.run import Run, run_to_end
from unmask.sizes import SAMPLER_STATE_BYTES, activation_bytes, available_bytes, check_fits

PLACEHOLDER = re.compile(r"\[MASK(?::(\d+))?\]")
MASK_MARK = "[MASK]"  # one masked position, in templates and in texts being generated
CHAT_TOKENS = 64  # tokens of a chat answer unless max_tokens says otherwise


class PromptError(OptionError):
    """A prompt or template that cannot be used; the message names the fix."""


def check_text(text: str, option: str) -> str:
    """``text`` if it is valid Unicode (a lone surrogate is what undecodable bytes of a command line, or a
    JSON escape such as \\udcff, leave in a str; no tokenizer can encode it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PromptError(f"{{0}} is not valid UTF-8 text (character {err.start} is {text[err.start]!r}, a lone "
                          "surrogate or an undecodable byte); pass UTF-8 text", option) from None
    return text


def parse_template(text: str, tokenizer: Tokenizer, max_tokens: int | None = None) -> list[int]:
    """Token ids of a template, with ``tokenizer.mask_id`` wherever a placeholder stands; more than
    ``max_tokens`` ids are refused before they are made."""
    ids: list[int] = []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        # A piece before a placeholder drops its trailing spaces: the generated token carries its
        # own leading space in byte-level BPE, as in ordinary text.
        ids += tokenizer.encode(text[position : match.start()].rstrip(" "))
        digits = match.group(1) or "1"
        # Compared as digits first: int() of thousands of digits is refused by Python itself.
        count = int(digits) if len(digits) <= 18 else None
        if count is not None and count < 1:
            raise PromptError(f"placeholder {match.group(0)} must ask for at least one token")
        if max_tokens is not None and (count is None or len(ids) + count > max_tokens):
            room = max(max_tokens - len(ids), 0)
            shown = match.group(0) if len(digits) <= 18 else "[MASK:" + digits[:18] + "...]"
            raise PromptError(f"placeholder {shown} asks for more tokens than fit (at most {room} here, "
                              f"{max_tokens} in the whole template); ask for fewer")
        ids += [tokenizer.mask_id] * count
        position = match.end()
    ids += tokenizer.encode(text[position:])
    if tokenizer.mask_id not in ids:
        raise PromptError("the template has no [MASK] placeholder; mark the spans to generate with [MASK] or [MASK:N]")
    return ids


def build_template(
    tokenizer: Tokenizer,
    *,
    model_length: int,
    length: int | None = None,
    prompt: str | Sequence[int] | None = None,
    template: str | None = None,
    prefix: list[int] | None = None,
) -> Tensor:
    """The sampler's template [L]: BOS, then the prompt (text, or its token ids) or the parsed template, then
    MASK up to ``length``; or the token ids ``prefix`` (BOS included: a rendered chat), then MASK.

    Without a template the length defaults to the model's; with one, to the template's own.
    """
    if prompt is not None and template is not None:
        raise PromptError("give either {0} or {1}, not both (a template can start with the prompt text)", "prompt",
                          "template")
    fixed = [tokenizer.bos_id] if prefix is None else list(prefix)
    if template is not None:
        fixed += parse_template(check_text(template, "template"), tokenizer, max_tokens=model_length - 1)
    elif prompt:
        fixed += tokenizer.encode(check_text(prompt, "prompt")) if isinstance(prompt, str) else list(prompt)
    target = length or (len(fixed) if template is not None else model_length)
    if target > model_length:
        raise PromptError(f"length {target} exceeds the model's length {model_length}; shorten the prompt or {{0}}",
                          "length")
    if len(fixed) > target:
        what = "template" if template is not None else "prompt" if prefix is None else "chat"
        raise PromptError(
            f"the {what} is {len(fixed) - 1} tokens but only {target - 1} fit (length {target}); shorten it"
        )
    return torch.tensor(fixed + [tokenizer.mask_id] * (target - len(fixed)))


@dataclass
class TextSamples:
    texts: list[str]
    tokens: Tensor
    num_calls: int
    seconds: float

    def to_dict(self) -> dict:
        """The samples as JSON data (``unmask sample --json`` and the server answer with it)."""
        samples = [{"text": text, "tokens": ids.tolist()} for text, ids in zip(self.texts, self.tokens)]
        return {"samples": samples, "num_calls": self.num_calls, "seconds": self.seconds}


def chat_prefix(pipeline: Pipeline, chat: str | Messages, *, max_tokens: int | None = None, prompt: str | None = None,
                template: str | None = None, length: int | None = None) -> tuple[list[int], int]:
    """The token ids of a chat to answer (a question, or messages: rendered with the tokenizer's chat template,
    BOS first) and the length of the request: those and ``max_tokens`` for the answer (default CHAT_TOKENS)."""
    if prompt is not None or template is not None or length is not None:
        raise PromptError("{0} is the whole prompt: drop {1}, {2} and {3} ({4} sets the answer's length)", "chat",
                          "prompt", "template", "length", "max_tokens")
    if max_tokens is not None and max_tokens < 1:
        raise PromptError(f"{{0}} must be at least 1, got {max_tokens}", "max_tokens")
    ids = prompt_ids(pipeline.tokenizer, [{"role": "user", "content": chat}] if isinstance(chat, str)
                     else checked_messages(chat))
    return ids, len(ids) + (CHAT_TOKENS if max_tokens is None else max_tokens)


def in_windows(pipeline: Pipeline, length: int | None) -> bool:
    """True when ``length`` is beyond the model's and its kind generates it in windows (semi-autoregressively)."""
    return length is not None and length > pipeline.config.data.length and pipeline.kind.beyond_window == WINDOWS


def prepare(
    pipeline: Pipeline,
    sampling: SamplerConfig,
    *,
    num_samples: int,
    length: int | None = None,
    prompt: str | Sequence[int] | None = None,
    template: str | None = None,
    prefix: list[int] | None = None,
) -> Tensor:
    """Check a request as :func:`generate_text` runs it (PromptError naming the fix) and return its
    fixed tokens: the template [L] within the model's length (of any length for a kind that slides its
    context block by block), or the prefix (BOS and the prompt, or a chat's ``prefix``) of a length
    generated in windows (:func:`in_windows`)."""
    if num_samples < 1:
        raise PromptError(f"{{0}} must be at least 1, got {num_samples}", "num_samples")
    if length is not None and length < 2:
        raise PromptError(f"{{0}} counts every token, BOS included: at least 2, got {length}", "length")
    pipeline.kind.check_sampling(sampling)
    tokenizer, window = pipeline.tokenizer, pipeline.config.data.length
    check_sampling_size(pipeline, num_samples, length or window)
    if in_windows(pipeline, length):
        if template is not None:
            raise PromptError(f"a template must fit the model's length {window}; {{0}} extends only prompts", "length")
        fixed = build_template(tokenizer, model_length=window, length=window, prompt=prompt, prefix=prefix)
        return fixed[fixed != tokenizer.mask_id]
    if pipeline.kind.beyond_window == SLIDING:  # any length: --length or the template decides, within memory
        window = length or (window if template is None else longest_sample(pipeline, num_samples))
    fixed = build_template(tokenizer, model_length=window, length=length, prompt=prompt, template=template,
                           prefix=prefix)
    pipeline.kind.check_template(fixed, tokenizer.mask_id)
    return fixed


def check_sampling_size(pipeline: Pipeline, num_samples: int, length: int) -> None:
    """Refuse ``num_samples`` texts of ``length`` tokens when the sampler's state and one denoiser call over them
    (at most the model's length at a time) need more memory than the device has free (:mod:`unmask.sizes`)."""
    device, window = pipeline.device, pipeline.config.data.length
    needed = num_samples * length * SAMPLER_STATE_BYTES
    model = getattr(pipeline.model, "config", None)
    if isinstance(model, DiTConfig):
        element = 2 if resolve_precision("auto", device) == "bf16" else 4
        call = min(length, window)
        needed += activation_bytes(model, num_samples, call, element=element, outputs=num_samples * call)
    check_fits(needed, device, f"sampling {num_samples:,} texts of {length:,} tokens",
               "ask for fewer samples ({0}) or a shorter {1}", options=("num_samples", "length"))


def longest_sample(pipeline: Pipeline, num_samples: int) -> int:
    """The most tokens per text whose sampler state fits in the memory free (any length where it cannot be told)."""
    free = available_bytes(pipeline.device)
    return sys.maxsize if free is None else max(free // (num_samples * SAMPLER_STATE_BYTES), 2)


def start_run(pipeline: Pipeline, sampling: SamplerConfig, fixed: Tensor, *, num_samples: int, seed: int,
              length: int | None = None, overlap: int | None = None, stop_at_eos: bool = False) -> Run:
    """The sampling run of ``num_samples`` rows on ``fixed`` (from :func:`prepare`) that :func:`generate_text`
    drives, made by the model's kind (a server drives the same run among others: same seed, same text)."""
    if overlap is not None and pipeline.kind.beyond_window != WINDOWS:
        raise PromptError(f"{{0}} sets the semi-autoregressive windows of a masked diffusion model; a "
                          f"{pipeline.kind.name} model does not generate in windows: drop {{0}}", "overlap")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise PromptError(f"{{0}} must be a 64-bit integer ({SEED_RANGE[0]} to {SEED_RANGE[1]}), got {seed}", "seed")
    device = pipeline.device
    return pipeline.kind.sampling_run(
        pipeline.model, sampling, fixed.to(device), process=pipeline.process, num_samples=num_samples,
        window=pipeline.config.data.length, length=length, overlap=overlap,
        stop_id=pipeline.tokenizer.eos_id if stop_at_eos else None, generator=torch.Generator(device).manual_seed(seed))


def generate_text(
    pipeline: Pipeline,
    sampling: SamplerConfig | None = None,
    *,
    num_samples: int = 4,
    length: int | None = None,
    prompt: str | None = None,
    template: str | None = None,
    chat: str | Messages | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    overlap: int | None = None,
    stop_at_eos: bool = False,
    precision: str = "auto",
    on_step: Callable[[Tensor], None] | None = None,
    static_shapes: bool = False,
) -> TextSamples:
    """Sample ``num_samples`` texts from a loaded model of any kind as ``sampling`` says.

    A masked diffusion model generates a ``length`` beyond the model's semi-autoregressively: windows
    of the model's length, each starting with the last ``overlap`` tokens of the previous one (default:
    half a window), ``sampling.steps`` steps per window. A block diffusion model generates block by
    block (``sampling.steps`` per block) to any length, sliding its cache past the model's length. The
    AR baseline decodes left to right. ``stop_at_eos`` stops at the first EOS of every sample. ``chat`` (a
    question, or messages) is answered in ``max_tokens`` tokens (default CHAT_TOKENS) after its rendering with
    the tokenizer's chat template; the texts are the answers, each up to its first EOS.
    ``on_step`` sees the token ids of every sample after every step. ``static_shapes`` runs every
    denoiser call at one shape per length (:func:`unmask.sampling.run.answer_with`: CUDA graphs on a
    GPU), for the same texts.
    """
    sampling = sampling or SamplerConfig()
    if static_shapes and not pipeline.kind.static_shapes:
        raise PromptError(f"{{0}} runs every call over the whole sequence at one shape; a "
                          f"{pipeline.kind.name} model samples token or block by block: drop {{0}}", "static_shapes")
    prefix = None
    if chat is not None:
        prefix, length = chat_prefix(pipeline, chat, max_tokens=max_tokens, prompt=prompt, template=template,
                                     length=length)
    elif max_tokens is not None:
        raise PromptError("{0} is the length of a chat's answer: give {1} with it, or {2} for a prompt",
                          "max_tokens", "chat", "length")
    fixed = prepare(pipeline, sampling, num_samples=num_samples, length=length, prompt=prompt, template=template,
                    prefix=prefix)
    run = start_run(pipeline, sampling, fixed, num_samples=num_samples, seed=seed, length=length, overlap=overlap,
                    stop_at_eos=stop_at_eos or chat is not None)
    started = time.perf_counter()
    with autocast(precision, pipeline.device):
        out = run_to_end(pipeline.model, run, on_step=on_step, static_shapes=static_shapes)
    return text_samples(pipeline.tokenizer, out, time.perf_counter() - started, stop_at_eos=stop_at_eos,
                        answer_from=None if prefix is None else len(prefix))


def sample_tokens(
    pipeline: Pipeline,
    sampling: SamplerConfig,
    *,
    batch_size: int,
    template: Tensor,
    generator: torch.Generator | None = None,
    stop_id: int | None = None,
    on_step: Callable[[Tensor], None] | None = None,
) -> SampleOutput:
    """Fill the MASK positions of ``template`` [L] for ``batch_size`` samples with the pipeline's own
    sampler (its kind's run; ``stop_id`` may end a block-wise one early)."""
    run = pipeline.kind.sampling_run(pipeline.model, sampling, template.to(pipeline.device), process=pipeline.process,
                                     num_samples=batch_size, window=pipeline.config.data.length, stop_id=stop_id,
                                     generator=generator)
    return run_to_end(pipeline.model, run, on_step=on_step)


def text_samples(tokenizer: Tokenizer, out: SampleOutput, seconds: float, *, stop_at_eos: bool = False,
                 answer_from: int | None = None) -> TextSamples:
    """The texts of sampled tokens, with what they cost; with ``answer_from`` the chat answers that start there."""
    texts = [decode_sample(tokenizer, row.tolist(), stop_at_eos, answer_from=answer_from) for row in out.tokens]
    return TextSamples(texts=texts, tokens=out.tokens, num_calls=out.num_calls, seconds=seconds)


def decode_sample(tokenizer: Tokenizer, ids: list[int], stop_at_eos: bool = False, *,
                  answer_from: int | None = None) -> str:
    """Text of a sample; with ``stop_at_eos`` only what comes before its first EOS after the start. With
    ``answer_from`` the chat answer from that position up to its first EOS (the end of its turn)."""
    if answer_from is not None:
        ids = ids[answer_from:]
        return tokenizer.decode(ids[: ids.index(tokenizer.eos_id)] if tokenizer.eos_id in ids else ids)
    if stop_at_eos and tokenizer.eos_id in ids[1:]:
        ids = ids[: ids.index(tokenizer.eos_id, 1)]
    return tokenizer.decode(ids)


def masked_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Text of a sample being generated, each masked position written as ``[MASK]`` (a template again)."""
    pieces, run = [], []
    for token in ids:
        if token == tokenizer.mask_id:
            pieces += [tokenizer.decode(run), MASK_MARK]
            run = []
        else:
            run.append(token)
    return "".join([*pieces, tokenizer.decode(run)])
