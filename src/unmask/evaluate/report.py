"""Evaluate a checkpoint on its own validation data or, zero-shot, on any other corpus."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unmask.data import ZERO_SHOT_DETOKENIZER, DataError, TokenBlocks
from unmask.distributed.process import setup
from unmask.errors import UserError
from unmask.evaluate.likelihood import block_loss_variance, evaluate_dataset
from unmask.objectives import DISCRETE_TIME_OBJECTIVES
from unmask.objectives.bd3lm import CANDIDATE_RANGES
from unmask.pipeline import load


def evaluate_checkpoint(
    path: str | Path,
    *,
    step: int | None = None,
    data: str | None = None,
    split: str | None = None,
    num_t: int = 1,
    discrete_steps: Sequence[int] = (),
    batch_size: int = 32,
    max_batches: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    text_field: str | None = None,
    detokenizer: str | None = None,
    mask_rate_ranges: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """NELBO per token (or the AR NLL), its standard error and perplexity / bits per character.

    ``data`` defaults to the run's validation data (its ``data.valid_source``, else ``split``
    "validation" of its corpus); any other file, folder or dataset name is re-tokenized with the
    checkpoint's tokenizer and wrapped into blocks as the paper does for zero-shot evaluation (a
    local file or folder is used whole: ``split`` "all"). The paper's zero-shot datasets (``ptb``,
    ``wikitext-2``, ``lambada``, ...) are read as the reference reads them, with their detokenizer
    (:mod:`unmask.data.detokenizers`); ``detokenizer`` applies one of those rules to any ``data``
    (a local copy of such a corpus), or overrides the dataset's own.
    ``text_field`` names the field of .jsonl / .parquet files that holds the text (default: the
    run's data.text_field). ``discrete_steps`` adds the discrete-time bound for each T given (mdlm
    and d3pm runs); ``step`` picks a checkpoint of a run. Under torchrun every process evaluates a
    share of the batches and all get the single-process result. ``mask_rate_ranges`` (of a bd3lm
    checkpoint; empty: a few candidates) adds the variance of the per-block loss under each range
    (:func:`block_loss_variance`).
    """
    parallel = setup(device)  # under torchrun: join the job; each process evaluates its share of the batches
    pipeline = load(path, step=step, device=str(parallel.device))
    config = pipeline.config
    if discrete_steps and config.objective.name not in DISCRETE_TIME_OBJECTIVES:
        raise UserError(f"--discrete-steps applies to {' and '.join(DISCRETE_TIME_OBJECTIVES)} runs; this is a "
                        f"{config.objective.name} run, whose bound has no time steps: drop --discrete-steps")
    if mask_rate_ranges is not None and pipeline.block_size is None:
        raise UserError(f"--mask-rate-ranges compares clipped schedules of block diffusion; {path} is a "
                        f"{config.objective.name} checkpoint, not bd3lm")
    # A file or folder, and the run's valid_source, are used whole; a corpus gives its validation split.
    if data is not None:
        source, whole = data, Path(data).exists()
    elif config.data.valid_source:
        source, whole = config.data.valid_source, True
    else:
        source, whole = config.data.source, False
    if split is None:
        split = "all" if whole else "validation"
    layout = config.data.layout if data is None else "wrapped"
    if data is None and detokenizer is not None:
        raise DataError("a detokenizer applies to zero-shot data: give --data with --detokenizer")
    if data is not None and detokenizer is None:
        detokenizer = ZERO_SHOT_DETOKENIZER.get(data)
    field = text_field or config.data.text_field
    blocks = parallel.main_first(lambda: TokenBlocks(source, pipeline.tokenizer, split=split,
                                                     length=config.data.length, layout=layout,
                                                     cache_dir=config.data.cache_dir, text_field=field,
                                                     detokenizer=detokenizer))
    common = dict(batch_size=batch_size, max_batches=max_batches, num_t=num_t, seed=seed, device=pipeline.device,
                  precision=precision, parallel=parallel)
    main = evaluate_dataset(pipeline.model, blocks, config.objective, pipeline.mask_id, **common)
    report: dict[str, Any] = {
        "checkpoint": str(pipeline.checkpoint),
        "objective": config.objective.name,
        "data": source,
        "split": split,
        "detokenizer": detokenizer,
        "length": config.data.length,
        "tokenizer": pipeline.tokenizer.name,
        "character_level": pipeline.tokenizer.name == "char",
        **main.to_dict(),
        "discrete": {},
    }
    if config.objective.name in DISCRETE_TIME_OBJECTIVES:
        for steps in discrete_steps:
            result = evaluate_dataset(
                pipeline.model, blocks, config.objective, pipeline.mask_id, discrete_steps=steps, **common
            )
            report["discrete"][str(steps)] = result.to_dict()
    if mask_rate_ranges is not None:
        report["block_variance"] = parallel.main_only(lambda: block_loss_variance(
            pipeline.model, blocks, config.objective, pipeline.mask_id, ranges=mask_rate_ranges or CANDIDATE_RANGES,
            batch_size=batch_size, max_batches=max_batches, seed=seed, device=pipeline.device, precision=precision))
    return report
