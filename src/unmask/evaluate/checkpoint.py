"""Evaluate a checkpoint on its own validation data or, zero-shot, on any other corpus."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from unmask.data import TokenBlocks, eval_batches
from unmask.evaluate.likelihood import evaluate_likelihood
from unmask.pipeline import load


def evaluate_checkpoint(
    path: str | Path,
    *,
    data: str | None = None,
    split: str | None = None,
    num_t: int = 1,
    discrete_steps: Sequence[int] = (),
    batch_size: int = 32,
    max_batches: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """NELBO per token (or the AR NLL), its standard error and perplexity / bits per character.

    ``data`` defaults to the checkpoint's own corpus (``split`` "validation"); any other file, folder
    or dataset name is re-tokenized with the checkpoint's tokenizer and wrapped into blocks as the
    paper does for zero-shot evaluation (a local file or folder is used whole: ``split`` "all").
    ``discrete_steps`` adds the discrete-time bound for each T given.
    """
    pipeline = load(path, device=device)
    config = pipeline.config
    source = data or config.data.source
    if split is None:
        split = "validation" if data is None or not Path(data).exists() else "all"
    layout = config.data.layout if data is None else "wrapped"
    blocks = TokenBlocks(source, pipeline.tokenizer, split=split, length=config.data.length, layout=layout,
                         cache_dir=config.data.cache_dir)

    def batches():  # a fresh pass over the same blocks for every bound
        return islice(eval_batches(blocks, batch_size), max_batches)

    common = dict(num_t=num_t, seed=seed, device=pipeline.device, precision=precision)
    main = evaluate_likelihood(pipeline.model, batches(), config.objective, pipeline.mask_id, **common)
    report: dict[str, Any] = {
        "checkpoint": str(pipeline.checkpoint),
        "objective": config.objective.name,
        "data": source,
        "split": split,
        "tokenizer": pipeline.tokenizer.name,
        "character_level": pipeline.tokenizer.name == "char",
        **main.to_dict(),
        "discrete": {},
    }
    if config.objective.name == "mdlm":
        for steps in discrete_steps:
            result = evaluate_likelihood(
                pipeline.model, batches(), config.objective, pipeline.mask_id, discrete_steps=steps, **common
            )
            report["discrete"][str(steps)] = result.to_dict()
    return report
