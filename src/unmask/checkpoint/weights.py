"""The model weights of a checkpoint, whichever way it was saved (safetensors or DCP shards)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from unmask.checkpoint import sharded
from unmask.checkpoint.layout import TENSOR_FILES, is_sharded, read_tensors

WEIGHTS = ("ema", "model")


def model_weights(checkpoint: Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The model's tensors by parameter name: the EMA of the weights when ``weights="ema"`` and
    the checkpoint has one, else the trained weights. The EMA covers the trained weights only: frozen
    ones (a LoRA run's base model) come from the model's tensors. A sharded checkpoint is consolidated
    in memory."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if is_sharded(checkpoint):  # of a multi-process run
        saved = sharded.saved_tensors(checkpoint)
        names = {part: {name.removeprefix(f"{part}.") for name in saved if name.startswith(f"{part}.")}
                 for part in WEIGHTS}
        averaged = _part(checkpoint, "ema", names["ema"]) if weights == "ema" else {}
        missing = names["model"] - set(averaged)
        return {**_part(checkpoint, "model", missing), **averaged} if missing else averaged
    ema = checkpoint / TENSOR_FILES["ema"]
    if weights == "model" or not ema.is_file():
        return read_tensors(checkpoint / TENSOR_FILES["model"])
    averaged = read_tensors(ema)
    model = checkpoint / TENSOR_FILES["model"]
    try:
        with safe_open(model, "pt") as file:
            if set(file.keys()) <= set(averaged):
                return averaged
    except (SafetensorError, OSError):
        pass  # read_tensors says what is wrong with the file
    return {**read_tensors(model), **averaged}


def _part(checkpoint: Path, part: str, names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of one part (model or EMA) of a sharded checkpoint."""
    tensors = sharded.read_full(checkpoint, [f"{part}.{name}" for name in names])
    return {name.removeprefix(f"{part}."): value for name, value in tensors.items()}
