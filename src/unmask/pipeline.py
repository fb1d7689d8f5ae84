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
)
from unmask.config import Config
from unmask.data import Tokenizer, load_tokenizer
from unmask.models import DiT, DiTConfig


def build_model(config: Config, vocab_size: int) -> DiT:
    """The DiT a configuration describes (causal for the AR objective)."""
    m = config.model
    return DiT(
        DiTConfig(
            vocab_size=vocab_size,
            length=config.data.length,
            n_layers=m.n_layers,
            hidden=m.hidden,
            n_heads=m.n_heads,
            cond_dim=m.cond_dim,
            dropout=m.dropout,
            time_conditioning=m.time_conditioning,
            causal=config.objective.name == "ar",
        )
    )


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load(path: str | Path, *, weights: str = "ema", device: str = "auto") -> Pipeline:
    """Load a run directory (its latest checkpoint) or a checkpoint folder for inference.

    ``weights="ema"`` (default, as the paper evaluates) uses the EMA weights when saved,
    ``"model"`` the raw trained weights. The model is returned in eval mode.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    checkpoint = resolve_checkpoint(path)
    config = load_config(checkpoint)
    if not (checkpoint / "tokenizer").is_dir():
        raise CheckpointError(f"{checkpoint} has no tokenizer folder; the checkpoint is incomplete")
    tokenizer = load_tokenizer(checkpoint / "tokenizer")
    model = build_model(config, tokenizer.vocab_size)
    if is_sharded(checkpoint):  # of a multi-process run: consolidated here, in memory
        from unmask.checkpoint_dist import consolidated_weights

        load_weights(model, consolidated_weights(checkpoint, model, weights), checkpoint)
    else:
        file = checkpoint / ("ema.safetensors" if weights == "ema" else "model.safetensors")
        if not file.is_file():
            file = checkpoint / "model.safetensors"
        load_weights(model, read_tensors(file), file)
    model.to(resolve_device(device)).eval()
    return Pipeline(model=model, tokenizer=tokenizer, config=config, checkpoint=checkpoint)
