"""Evaluate a checkpoint on its own validation data or, zero-shot, on any other corpus."""

from __future__ import annotations

from pathlib import Path

from unmask.bounds.blocks import CANDIDATE_RANGES
from unmask.data import ZERO_SHOT_DETOKENIZER, ChatExamples, DataError, TokenBlocks, is_chat_source
from unmask.distributed.process import setup
from unmask.evaluate.conditional import evaluate_prompts
from unmask.evaluate.config import EvalConfig, EvalError, EvalReport
from unmask.evaluate.likelihood import block_loss_variance, evaluate_dataset
from unmask.models import DiTConfig
from unmask.pipeline import Pipeline, load
from unmask.runtime import resolve_precision
from unmask.sizes import activation_bytes, check_fits


def _check_size(pipeline: Pipeline, config: EvalConfig) -> None:
    """Refuse a pass of batch_size x num_t sequences (every one scored at every position, at worst) that the
    device cannot hold, before any data is read."""
    model = getattr(pipeline.model, "config", None)
    if not isinstance(model, DiTConfig):
        return
    rows, length = config.batch_size * config.num_t, pipeline.config.data.length
    element = 2 if resolve_precision(config.precision, pipeline.device) == "bf16" else 4
    check_fits(activation_bytes(model, rows, length, element=element), pipeline.device,
               f"evaluating {config.batch_size:,} sequences x {config.num_t:,} time samples of {length} tokens in "
               "one pass", "lower {0} or {1}", options=("num_t", "batch_size"))


def evaluate_checkpoint(path: str | Path, config: EvalConfig | None = None, *, step: int | None = None,
                        device: str = "auto", trust_remote_code: bool = False) -> EvalReport:
    """NELBO per token (or the exact NLL of a kind whose figure is exact), its standard error and
    perplexity / bits per character, as ``config`` (default: ``EvalConfig()``) says.

    ``config.data`` defaults to the run's validation data (its ``data.valid_source``, else the split
    "validation" of its corpus); any other file, folder or dataset name is re-tokenized with the
    checkpoint's tokenizer and wrapped into blocks as the paper does for zero-shot evaluation (a local
    file or folder is used whole: split "all"). The paper's zero-shot datasets (``ptb``, ``wikitext-2``,
    ``lambada``, ...) are read as the reference reads them, with their detokenizer
    (:mod:`unmask.data.detokenizers`); ``config.detokenizer`` applies one of those rules to any data (a
    local copy of such a corpus), or overrides the dataset's own. ``config.discrete_steps`` adds the
    discrete-time bound for each T given (kinds with a discrete-time bound); ``step`` picks a checkpoint of
    a run. Under torchrun every process evaluates a share of the batches and all get the single-process
    result. ``config.mask_rate_ranges`` (of a block diffusion checkpoint; empty: a few candidates) adds
    the variance of the per-block loss under each range (:func:`block_loss_variance`). ``config.prompt_file``
    evaluates its (context, continuation) pairs instead: each continuation's conditional bound, per
    continuation token (:func:`unmask.evaluate.conditional.evaluate_prompts`; every process computes it whole).
    """
    config = config or EvalConfig()
    parallel = setup(device)  # under torchrun: join the job; each process evaluates its share of the batches
    pipeline = load(path, step=step, device=str(parallel.device), trust_remote_code=trust_remote_code)
    run, kind = pipeline.config, pipeline.kind
    if config.prompt_file is not None:
        likelihood, continuations = evaluate_prompts(pipeline, config)
        return EvalReport(checkpoint=str(pipeline.checkpoint), objective=kind.name, exact=kind.exact,
                          data=config.prompt_file, split="pairs", detokenizer=None, length=run.data.length,
                          tokenizer=pipeline.tokenizer.name, likelihood=likelihood, continuations=continuations)
    if config.discrete_steps and not kind.discrete_time:
        raise EvalError(f"--discrete-steps applies to kinds with a discrete-time bound; this is a {kind.label} "
                        f"run, whose bound has no time steps: drop --discrete-steps")
    if config.mask_rate_ranges is not None and pipeline.block_size is None:
        raise EvalError(f"--mask-rate-ranges compares clipped schedules of block diffusion; {path} is a "
                        f"{kind.label} checkpoint, not block diffusion")
    if config.data is None and config.detokenizer is not None:
        raise DataError("a detokenizer applies to zero-shot data: give --data with --detokenizer")
    _check_size(pipeline, config)
    # A file or folder, and the run's valid_source, are used whole; a corpus gives its validation split.
    if config.data is not None:
        source, whole = config.data, Path(config.data).exists()
    elif run.data.valid_source:
        source, whole = run.data.valid_source, True
    else:
        source, whole = run.data.source, False
    split = config.split or ("all" if whole else "validation")
    layout = run.data.layout if config.data is None else "wrapped"
    detokenizer = config.detokenizer
    if config.data is not None and detokenizer is None:
        detokenizer = ZERO_SHOT_DETOKENIZER.get(config.data)
    field = config.text_field or run.data.text_field
    if is_chat_source(source, run.data.format if config.data is None else "auto"):
        # Conversations: the bound of the answers given their prompts (supervised fine-tuning's loss).
        blocks = ChatExamples(source, pipeline.tokenizer, split=split, length=run.data.length)
        detokenizer = None
    else:
        blocks = parallel.main_first(lambda: TokenBlocks(
            source, pipeline.tokenizer, split=split, length=run.data.length, layout=layout,
            cache_dir=run.data.cache_dir, text_field=field, detokenizer=detokenizer))
    common = dict(batch_size=config.batch_size, max_batches=config.max_batches, num_t=config.num_t,
                  seed=config.seed, device=pipeline.device, precision=config.precision, parallel=parallel)
    report = EvalReport(
        checkpoint=str(pipeline.checkpoint), objective=kind.name, exact=kind.exact, data=source, split=split,
        detokenizer=detokenizer, length=run.data.length, tokenizer=pipeline.tokenizer.name,
        likelihood=evaluate_dataset(pipeline.model, blocks, run.objective, pipeline.mask_id, **common),
    )
    for steps in config.discrete_steps:
        report.discrete[steps] = evaluate_dataset(pipeline.model, blocks, run.objective, pipeline.mask_id,
                                                  discrete_steps=steps, **common)
    if config.mask_rate_ranges is not None:
        report.block_variance = parallel.main_only(lambda: block_loss_variance(
            pipeline.model, blocks, run.objective, pipeline.mask_id,
            ranges=config.mask_rate_ranges or CANDIDATE_RANGES, batch_size=config.batch_size,
            max_batches=config.max_batches, seed=config.seed, device=pipeline.device, precision=config.precision))
    return report
