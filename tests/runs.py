"""Untrained one-layer models on the char tokenizer, saved as run directories (for tools that read runs)."""

from __future__ import annotations

from pathlib import Path

import torch

from unmask.checkpoint import Checkpointer
from unmask.checkpoint.checkpointer import ModelState, OptimizerState
from unmask.config import Config
from unmask.data import get_tokenizer
from unmask.distributed import Parallel
from unmask.models import DiT, describe


def untrained_run(root: Path, objective: str, *, length: int = 32, seed: int = 0,
                  scrambled: bool = False, block_size: int = 16) -> tuple[Path, DiT]:
    """A run directory ``root/run_OBJECTIVE`` with one checkpoint (step 1) of a random model, and the model
    (``block_size`` for bd3lm).

    As initialised the model's logits are all zero (its output layer starts at zero); ``scrambled``
    draws every weight at random instead, so that its distributions differ by position and time.
    """
    config = Config()
    config.objective.name, config.objective.block_size = objective, block_size
    config.model.n_layers, config.model.hidden, config.model.n_heads, config.model.cond_dim = 1, 32, 2, 16
    config.data.length, config.data.tokenizer = length, "char"
    tokenizer = get_tokenizer("char")
    torch.manual_seed(seed)
    model = DiT(config.model_config(tokenizer.vocab_size))
    if scrambled:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.3)
    run = root / f"run_{objective}"
    save_checkpoint(run, config, model, 1)
    return run, model


def save_checkpoint(run: Path, config: Config, model: DiT, step: int) -> Path:
    """Checkpoint ``step`` of ``model`` (with a fresh AdamW, no EMA) in the run directory ``run``."""
    checkpointer = Checkpointer(run, Parallel(device=torch.device("cpu")), config=config, model=describe(model),
                                tokenizer=get_tokenizer(config.data.tokenizer))
    parts = {"model": ModelState(model), "optimizer": OptimizerState(model, torch.optim.AdamW(model.parameters()))}
    return checkpointer.save(step, parts)
