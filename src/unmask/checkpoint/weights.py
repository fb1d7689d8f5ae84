"""The model weights of a checkpoint, whichever way it was saved (safetensors or DCP shards)."""

from __future__ import annotations

from pathlib import Path

import torch

from unmask.checkpoint import sharded
from unmask.checkpoint.layout import TENSOR_FILES, is_sharded, read_tensors

WEIGHTS = ("ema", "model")


def model_weights(checkpoint: Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The model's tensors by parameter name: the EMA of the weights when ``weights="ema"`` and
    the checkpoint has one, else the trained weights. A sharded checkpoint is consolidated in memory."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if is_sharded(checkpoint):  # of a multi-process run
        saved = sharded.saved_tensors(checkpoint)
        part = "ema" if weights == "ema" and any(name.startswith("ema.") for name in saved) else "model"
        names = [name for name in saved if name.startswith(f"{part}.")]
        return {name.removeprefix(f"{part}."): value for name, value in sharded.read_full(checkpoint, names).items()}
    file = checkpoint / TENSOR_FILES[weights]
    if not file.is_file():
        file = checkpoint / TENSOR_FILES["model"]
    return read_tensors(file)
