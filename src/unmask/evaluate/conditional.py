"""Continuations given contexts: :func:`conditional_nelbo` (``unmask.conditional_nelbo``), and the batched
:func:`score_continuations` behind lm-eval's ``loglikelihood`` (:mod:`.harness`) and ``unmask eval
--prompt-file`` (:func:`evaluate_prompts`).

A pair is scored in one row of the model's length: BOS, the context (its last tokens, when the pair is
longer than the model), the continuation, then MASK up to the model's length. The kind's conditional bound
(:meth:`unmask.kinds.ModelKind.conditional_losses`) noises and scores the continuation only; the MASK
positions after it stay unknown, so the figure is the probability of the continuation in the model's
window with the rest of the window unknown, as ``unmask sample --prompt`` sees a prompt (``docs/math.md`` §9).
Every row has the model's length, so a row is computed alike alone or in any batch, and each pair draws its
noise from a generator seeded by the run's seed and the pair's tokens: a pair gets the same figure alone,
in a batch of any size and in any order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from unmask.bounds.conditional import RowNoise
from unmask.data import Tokenizer
from unmask.evaluate.config import EvalConfig, EvalError
from unmask.evaluate.likelihood import LikelihoodResult, summarize
from unmask.pipeline import Pipeline
from unmask.runtime import autocast, derive_seed

# Monte Carlo samples per continuation unless told (the count LLaDA's and Dream's harness adapters use).
DEFAULT_SAMPLES = 128
# Rows (samples of every pair) per denoiser call unless told.
DEFAULT_ROWS = 16


@dataclass
class ContinuationScore:
    """``nelbo``: a bound on -log p(continuation | context) in nats (the exact NLL for an exact kind), from
    ``samples`` Monte Carlo samples; ``tokens``: the continuation's tokens; ``greedy``: whether greedy decoding
    gives the continuation (None when not asked)."""

    nelbo: float
    tokens: int
    samples: int
    greedy: bool | None = None


def content_seed(seed: int, purpose: str, *parts: str | Sequence[int]) -> int:
    """A seed for ``purpose`` from ``seed`` and a request's content: the same request draws the same noise
    wherever it comes (alone, in any batch, among any other requests)."""
    digest = hashlib.blake2b(json.dumps([list(p) if not isinstance(p, str) else p for p in parts]).encode(),
                             digest_size=8).digest()
    return derive_seed(seed, purpose, int.from_bytes(digest, "little"))


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval splits them: spaces at the end of the context move to
    the continuation, the pair is encoded whole, and the continuation is what follows the context's own ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context) if context else []
    whole = tokenizer.encode(context + continuation)
    return context_ids, whole[len(context_ids):]


def scoring_row(pipeline: Pipeline, context: Sequence[int], continuation: Sequence[int]
                ) -> tuple[list[int], list[int], Tensor, Tensor]:
    """(context kept, continuation, x0 [L], scored [L]) of a pair: BOS, the context's last tokens that fit,
    the continuation, MASK up to the model's length L; ``scored`` marks the continuation."""
    length, tokenizer = pipeline.config.data.length, pipeline.tokenizer
    room = length - 1 - len(continuation)
    if room < 0:
        raise EvalError(f"a continuation of {len(continuation)} tokens does not fit in the model's length "
                        f"{length} (BOS and {length - 1} tokens); score shorter continuations")
    kept = list(context)[max(0, len(context) - room):]
    ids = [tokenizer.bos_id, *kept, *continuation]
    x0 = torch.tensor(ids + [tokenizer.mask_id] * (length - len(ids)))
    scored = torch.zeros(length, dtype=torch.bool)
    scored[1 + len(kept):len(ids)] = True
    return kept, list(continuation), x0, scored


@torch.no_grad()
def score_continuations(pipeline: Pipeline, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                        num_t: int = DEFAULT_SAMPLES, seed: int = 0, batch_size: int = DEFAULT_ROWS,
                        precision: str = "auto", greedy: bool = False, progress: bool = False
                        ) -> list[ContinuationScore]:
    """Bound -log p(continuation | context) of every (context ids, continuation ids) pair with ``num_t``
    Monte Carlo samples (one where one is the bound itself, e.g. a single token; one for an exact kind),
    ``batch_size`` rows per denoiser call; with ``greedy`` also whether greedy decoding gives each continuation."""
    if num_t < 1 or batch_size < 1:
        raise EvalError(f"num_t and batch_size must be at least 1, got {num_t} and {batch_size}")
    kind, model, objective = pipeline.kind, pipeline.model, pipeline.config.objective
    device, mask_id = pipeline.device, pipeline.mask_id
    rows = [scoring_row(pipeline, context, continuation) for context, continuation in pairs]
    samples = [kind.conditional_samples(model, objective, len(cont), num_t) for _, cont, _, _ in rows]
    totals = torch.zeros(len(rows), dtype=torch.float64)
    bar = tqdm(total=sum(samples) + (len(rows) if greedy else 0), desc="loglikelihood", disable=not progress,
               leave=False)
    with autocast(precision, device):
        blocks = _sample_blocks(rows, samples, seed, device)
        for owners, x0, scored, noise in _batches(blocks, batch_size):
            losses = kind.conditional_losses(model, x0, scored, objective, mask_id, noise)
            totals.index_add_(0, owners, losses.double().cpu())
            bar.update(len(owners))
        matches: list[bool | None] = [None] * len(rows)
        if greedy:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                x0 = torch.stack([x for _, _, x, _ in chunk]).to(device)
                scored = torch.stack([s for _, _, _, s in chunk]).to(device)
                matches[start:start + len(chunk)] = kind.greedy_matches(model, x0, scored, objective,
                                                                        mask_id).tolist()
                bar.update(len(chunk))
    bar.close()
    return [ContinuationScore(float(total / count), len(cont), count, match)
            for total, count, (_, cont, _, _), match in zip(totals, samples, rows, matches)]


def _sample_blocks(rows: list, samples: list[int], seed: int, device: torch.device
                   ) -> Iterator[tuple[int, Tensor, Tensor, RowNoise]]:
    """Each pair's sample rows: (pair index, x0 [K, L], scored [K, L], noise), its noise from its own seed."""
    for index, ((context, continuation, x0, scored), count) in enumerate(zip(rows, samples)):
        generator = torch.Generator().manual_seed(content_seed(seed, "conditional", context, continuation))
        noise = RowNoise.draw(count, len(x0), generator, device)
        yield index, x0.to(device).expand(count, -1), scored.to(device).expand(count, -1), noise


def _batches(blocks: Iterator[tuple[int, Tensor, Tensor, RowNoise]], size: int
             ) -> Iterator[tuple[Tensor, Tensor, Tensor, RowNoise]]:
    """Rows of ``size`` (the last one shorter): (owning pair [R], x0 [R, L], scored [R, L], noise)."""
    pending: list[tuple[int, Tensor, Tensor, RowNoise]] = []
    waiting = 0
    for block in blocks:
        pending.append(block)
        waiting += len(block[1])
        while waiting >= size:
            yield _take(pending, size)
            waiting -= size
    if waiting:
        yield _take(pending, waiting)


def _take(pending: list[tuple[int, Tensor, Tensor, RowNoise]], count: int) -> tuple[Tensor, Tensor, Tensor, RowNoise]:
    """The first ``count`` rows of the ``pending`` blocks, removed from them."""
    owners, x0s, scoreds, noises = [], [], [], []
    while count:
        index, x0, scored, noise = pending[0]
        take = min(count, len(x0))
        owners.append(torch.full((take,), index))
        x0s.append(x0[:take])
        scoreds.append(scored[:take])
        noises.append(noise.rows(0, take))
        if take == len(x0):
            pending.pop(0)
        else:
            pending[0] = (index, x0[take:], scored[take:], noise.rows(take, len(x0)))
        count -= take
    return torch.cat(owners), torch.cat(x0s), torch.cat(scoreds), RowNoise.cat(noises)


def conditional_nelbo(pipeline: Pipeline, context: str | Sequence[int], continuation: str | Sequence[int], *,
                      num_t: int = DEFAULT_SAMPLES, seed: int = 0, batch_size: int = DEFAULT_ROWS,
                      precision: str = "auto") -> float:
    """A bound on -log p(continuation | context) in nats under a loaded model of any kind (the exact NLL for
    the AR baseline), from ``num_t`` Monte Carlo samples of its kind's conditional bound.

    ``context`` and ``continuation`` are text (split into tokens as lm-eval splits a pair) or token ids; the
    context may be empty. The figure is the one ``unmask lm-eval`` reports for this pair with the same
    ``num_t`` and ``seed`` (its log-likelihood is minus this)."""
    if isinstance(context, str) and isinstance(continuation, str):
        context, continuation = encode_pair(pipeline.tokenizer, context, continuation)
    else:
        context = pipeline.tokenizer.encode(context) if isinstance(context, str) else list(context)
        continuation = pipeline.tokenizer.encode(continuation) if isinstance(continuation, str) else list(continuation)
    score, = score_continuations(pipeline, [(context, continuation)], num_t=num_t, seed=seed, batch_size=batch_size,
                                 precision=precision)
    return score.nelbo


def read_prompt_file(path: str | Path) -> list[tuple[str, str]]:
    """The (context, continuation) pairs of a JSON-lines file: one object per line with the text fields
    "context" and "continuation" (blank lines skipped)."""
    pairs = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalError(f"{path}, line {number}: not JSON ({err.msg}); write one "
                                '{"context": ..., "continuation": ...} object per line') from None
            if not (isinstance(item, dict) and isinstance(item.get("context"), str)
                    and isinstance(item.get("continuation"), str)):
                raise EvalError(f'{path}, line {number}: needs the text fields "context" and "continuation"')
            pairs.append((item["context"], item["continuation"]))
    if not pairs:
        raise EvalError(f'{path} holds no pairs; write one {{"context": ..., "continuation": ...}} object per line')
    return pairs


def evaluate_prompts(pipeline: Pipeline, config: EvalConfig) -> tuple[LikelihoodResult, list[dict[str, float]]]:
    """``unmask eval --prompt-file``: the bound per continuation token over the file's pairs (sum of the
    bounds over the sum of continuation tokens, with its standard error over pairs), and each pair's figures."""
    tokenizer = pipeline.tokenizer
    pairs = [encode_pair(tokenizer, context, continuation) for context, continuation in
             read_prompt_file(config.prompt_file)]
    scores = score_continuations(pipeline, pairs, num_t=config.num_t, seed=config.seed,
                                 batch_size=config.batch_size, precision=config.precision)
    result = summarize(torch.tensor([s.nelbo for s in scores]), torch.tensor([s.tokens for s in scores]),
                       num_t=config.num_t, discrete_steps=0)
    return result, [{"nelbo": s.nelbo, "tokens": s.tokens, "samples": s.samples} for s in scores]
