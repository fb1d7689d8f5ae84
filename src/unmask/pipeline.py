"""A trained model ready to use: weights, tokenizer and configuration from one checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.checkpoint import (
    CheckpointError,
    is_sharded,
    load_config,
    load_weights,
    read_tensors,
    resolve_checkpoint,
    sharded,
)
from unmask.config import Config
from unmask.data import Tokenizer, load_tokenizer
from unmask.models import DiT
from unmask.runtime import resolve_device


@dataclass
class Pipeline:
    """What ``unmask.load`` returns: use ``model`` with :func:`unmask.generate` or :func:`unmask.nelbo`."""

    model: DiT
    tokenizer: Tokenizer
    config: Config
    checkpoint: Path

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_id

    @property
    def is_autoregressive(self) -> bool:
        return self.config.objective.name == "ar"

    @property
    def block_size(self) -> int | None:
        """Tokens per block of a block diffusion (bd3lm) model, None for the others."""
        return self.config.objective.block_size if self.config.objective.name == "bd3lm" else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load(path: str | Path, *, weights: str = "ema", device: str = "auto", step: int | None = None) -> Pipeline:
    """Load a run directory (its latest checkpoint, or ``step``) or a checkpoint folder for inference.

    ``weights="ema"`` (default, as the paper evaluates) uses the EMA weights when saved,
    ``"model"`` the raw trained weights. The model is returned in eval mode.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    target = resolve_device(device)
    checkpoint = resolve_checkpoint(path, step=step)
    config = load_config(checkpoint)
    if not (checkpoint / "tokenizer").is_dir():
        raise CheckpointError(f"{checkpoint} has no tokenizer folder; the checkpoint is incomplete")
    tokenizer = load_tokenizer(checkpoint / "tokenizer")
    model = DiT(config.model_config(tokenizer.vocab_size))
    if is_sharded(checkpoint):  # of a multi-process run: consolidated here, in memory
        saved = sharded.saved_tensors(checkpoint)
        kind = "ema" if weights == "ema" and any(name.startswith("ema.") for name in saved) else "model"
        names = [f"{kind}.{name}" for name in model.state_dict()]
        tensors = {name.removeprefix(f"{kind}."): value for name, value in sharded.read_full(checkpoint, names).items()}
        load_weights(model, tensors, checkpoint)
    else:
        file = checkpoint / ("ema.safetensors" if weights == "ema" else "model.safetensors")
        if not file.is_file():
            file = checkpoint / "model.safetensors"
        load_weights(model, read_tensors(file), file)
    model.to(target).eval()
    return Pipeline(model=model, tokenizer=tokenizer, config=config, checkpoint=checkpoint)
