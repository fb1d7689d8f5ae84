"""Text in, text out: prompts, infilling templates and decoding around the samplers.

A template is text in which ``[MASK]`` marks one token to generate; ``[MASK:N]`` marks N in a
row (writing ``[MASK]`` N times does the same). Everything else in the template is fixed and is
never changed by the sampler.

:func:`generate_text` is what ``unmask sample`` runs: :func:`prepare` checks a request and makes
its fixed tokens, :func:`start_run` the sampling run of an MDLM within the model's length (which
the server drives among others, so that a seed gives the same text there), :func:`sample_tokens`
every other model's sampler (block by block for block diffusion, left to right for AR),
:func:`text_samples` the texts.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unmask.data import Tokenizer
from unmask.errors import UserError
from unmask.pipeline import Pipeline
from unmask.runtime import autocast
from unmask.sampling import SampleOutput, SamplerConfig, generate, generate_long
from unmask.sampling.autoregressive import generate_autoregressive
from unmask.sampling.blocks import CachedContext, generate_blocks
from unmask.sampling.loop import SamplingRun, initial_state, run_to_end

PLACEHOLDER = re.compile(r"\[MASK(?::(\d+))?\]")
MASK_MARK = "[MASK]"  # one masked position, in templates and in texts being generated


class PromptError(UserError):
    """A prompt or template that cannot be used; the message names the fix."""


def parse_template(text: str, tokenizer: Tokenizer) -> list[int]:
    """Token ids of a template, with ``tokenizer.mask_id`` wherever a placeholder stands."""
    ids: list[int] = []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        # A piece before a placeholder drops its trailing spaces: the generated token carries its
        # own leading space in byte-level BPE, as in ordinary text.
        ids += tokenizer.encode(text[position : match.start()].rstrip(" "))
        count = int(match.group(1) or 1)
        if count < 1:
            raise PromptError(f"placeholder {match.group(0)} must ask for at least one token")
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
    prompt: str | None = None,
    template: str | None = None,
) -> Tensor:
    """The sampler's template [L]: BOS, then the prompt or the parsed template, then MASK up to ``length``.

    Without a template the length defaults to the model's; with one, to the template's own.
    """
    if prompt is not None and template is not None:
        raise PromptError("give either --prompt or --template, not both (a template can start with the prompt text)")
    fixed = [tokenizer.bos_id]
    if template is not None:
        fixed += parse_template(template, tokenizer)
    elif prompt:
        fixed += tokenizer.encode(prompt)
    target = length or (len(fixed) if template is not None else model_length)
    if target > model_length:
        raise PromptError(f"length {target} exceeds the model's length {model_length}; shorten the prompt or --length")
    if len(fixed) > target:
        what = "template" if template is not None else "prompt"
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


def in_windows(pipeline: Pipeline, length: int | None) -> bool:
    """True when ``length`` is beyond the model's and an MDLM generates it semi-autoregressively."""
    return (length is not None and length > pipeline.config.data.length and not pipeline.is_autoregressive
            and pipeline.block_size is None)


def in_one_run(pipeline: Pipeline, length: int | None) -> bool:
    """True when :func:`generate_text` samples with one run over the whole template (:func:`start_run`):
    an MDLM within the model's length. AR and block diffusion models sample token or block by block."""
    return not pipeline.is_autoregressive and pipeline.block_size is None and not in_windows(pipeline, length)


def prepare(
    pipeline: Pipeline,
    sampling: SamplerConfig,
    *,
    num_samples: int,
    length: int | None = None,
    prompt: str | None = None,
    template: str | None = None,
) -> Tensor:
    """Check a request as :func:`generate_text` runs it (PromptError naming the fix) and return its
    fixed tokens: the template [L] within the model's length (of any length for block diffusion), or the
    prefix (BOS and the prompt) of a length generated in windows (:func:`in_windows`)."""
    if num_samples < 1:
        raise PromptError(f"--num-samples must be at least 1, got {num_samples}")
    if length is not None and length < 2:
        raise PromptError(f"--length counts every token, BOS included: at least 2, got {length}")
    if pipeline.is_autoregressive and (sampling.uses_strategy or sampling.sampler in ("first_hitting", "analytic")):
        raise PromptError("an AR model decodes left to right, one token per step: --order, --threshold, --remask, "
                          "--sampler first_hitting and --sampler analytic apply to diffusion models only")
    tokenizer, window = pipeline.tokenizer, pipeline.config.data.length
    if in_windows(pipeline, length):
        if template is not None:
            raise PromptError(f"a template must fit the model's length {window}; --length extends only prompts")
        prefix = build_template(tokenizer, model_length=window, length=window, prompt=prompt)
        return prefix[prefix != tokenizer.mask_id]
    if pipeline.block_size is not None:  # any length: --length or the template decides
        window = length or (window if template is None else sys.maxsize)
    return build_template(tokenizer, model_length=window, length=length, prompt=prompt, template=template)


def start_run(pipeline: Pipeline, sampling: SamplerConfig, fixed: Tensor, *, num_samples: int,
              seed: int) -> SamplingRun:
    """The sampling run of ``num_samples`` rows on the template ``fixed`` that :func:`generate_text` drives
    for an MDLM within the model's length (a server drives the same run among others: same seed, same text)."""
    device = pipeline.device
    x = initial_state(batch_size=num_samples, length=len(fixed), mask_id=pipeline.mask_id, template=fixed,
                      device=device)
    return SamplingRun(sampling, x, mask_id=pipeline.mask_id, schedule=pipeline.config.objective.schedule,
                       generator=torch.Generator(device).manual_seed(seed), parameterization=pipeline.parameterization)


def generate_text(
    pipeline: Pipeline,
    sampling: SamplerConfig | None = None,
    *,
    num_samples: int = 4,
    length: int | None = None,
    prompt: str | None = None,
    template: str | None = None,
    seed: int = 0,
    overlap: int | None = None,
    stop_at_eos: bool = False,
    precision: str = "auto",
    on_step: Callable[[Tensor], None] | None = None,
    static_shapes: bool = False,
) -> TextSamples:
    """Sample ``num_samples`` texts from a loaded model (MDLM, block diffusion or the AR baseline) as
    ``sampling`` says.

    For MDLM a ``length`` beyond the model's runs semi-autoregressively: windows of the model's
    length, each starting with the last ``overlap`` tokens of the previous one (default: half a
    window), ``sampling.steps`` steps per window. A block diffusion model generates block by block
    (``sampling.steps`` per block) to any length, sliding its cache past the model's length.
    ``stop_at_eos`` stops at the first EOS of every sample. ``on_step`` sees the token ids of every
    sample after every step. ``static_shapes`` runs every denoiser call of an MDLM at one shape
    (:func:`unmask.sampling.loop.run_to_end`: CUDA graphs on a GPU), for the same texts.
    """
    sampling = sampling or SamplerConfig()
    if static_shapes and (pipeline.is_autoregressive or pipeline.block_size is not None):
        raise PromptError("--static-shapes runs every call over the whole sequence at one shape; the AR baseline "
                          "and block diffusion sample token or block by block: drop --static-shapes")
    fixed = prepare(pipeline, sampling, num_samples=num_samples, length=length, prompt=prompt, template=template)
    if pipeline.block_size is not None and overlap is not None:
        raise PromptError("--overlap sets MDLM's semi-autoregressive windows; a bd3lm model slides its cache block "
                          "by block: drop --overlap")
    tokenizer, model, device = pipeline.tokenizer, pipeline.model, pipeline.device
    stop_id = tokenizer.eos_id if stop_at_eos else None
    started = time.perf_counter()
    with autocast(precision, device):
        if in_one_run(pipeline, length):
            out = run_to_end(model, start_run(pipeline, sampling, fixed, num_samples=num_samples, seed=seed),
                             on_step=on_step, static_shapes=static_shapes)
        else:
            generator = torch.Generator(device).manual_seed(seed)
            if in_windows(pipeline, length):
                out = generate_long(model, sampling, batch_size=num_samples, total_length=length,
                                    window=pipeline.config.data.length, mask_id=tokenizer.mask_id,
                                    schedule=pipeline.config.objective.schedule, overlap=overlap, prefix=fixed,
                                    stop_id=stop_id, generator=generator, on_step=on_step,
                                    parameterization=pipeline.parameterization, static_shapes=static_shapes)
            else:
                out = sample_tokens(pipeline, sampling, batch_size=num_samples, template=fixed, generator=generator,
                                    stop_id=stop_id, on_step=on_step)
    return text_samples(tokenizer, out, time.perf_counter() - started, stop_at_eos=stop_at_eos)


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
    sampler: block by block with the key/value cache (bd3lm; ``stop_id`` may end it early), left to
    right (AR), or the sampling loop over the whole template (MDLM, SEDD, D3PM)."""
    model, mask_id, schedule = pipeline.model, pipeline.mask_id, pipeline.config.objective.schedule
    if pipeline.block_size is not None:
        return generate_blocks(CachedContext(model, pipeline.block_size), sampling, batch_size=batch_size,
                               length=len(template), block_size=pipeline.block_size, mask_id=mask_id,
                               schedule=schedule, template=template, stop_id=stop_id, generator=generator,
                               on_step=on_step)
    if pipeline.is_autoregressive:
        return generate_autoregressive(model, batch_size=batch_size, length=len(template), mask_id=mask_id,
                                       template=template, generator=generator, draw=sampling.draw, on_step=on_step)
    return generate(model, sampling, batch_size=batch_size, length=len(template), mask_id=mask_id, schedule=schedule,
                    template=template, generator=generator, on_step=on_step,
                    parameterization=pipeline.parameterization)


def text_samples(tokenizer: Tokenizer, out: SampleOutput, seconds: float, *, stop_at_eos: bool = False) -> TextSamples:
    """The texts of sampled tokens, with what they cost."""
    texts = [decode_sample(tokenizer, row.tolist(), stop_at_eos) for row in out.tokens]
    return TextSamples(texts=texts, tokens=out.tokens, num_calls=out.num_calls, seconds=seconds)


def decode_sample(tokenizer: Tokenizer, ids: list[int], stop_at_eos: bool = False) -> str:
    """Text of a sample; with ``stop_at_eos`` only what comes before its first EOS after the start."""
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
