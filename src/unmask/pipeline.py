"""A trained model ready to use: weights, tokenizer and configuration from one folder.

:func:`load` reads whatever the folder is: an unmask run or checkpoint, a released MDLM checkpoint
in its Hugging Face layout, or a Hugging Face masked LM (each format's reading lives in
:mod:`unmask.interop`); a hub name is fetched into the hub cache first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.checkpoint import WEIGHTS, CheckpointError, load_config, load_weights, model_weights, resolve_checkpoint
from unmask.config import Config
from unmask.data import Tokenizer, load_tokenizer
from unmask.interop import MASKED_LM, RELEASED_MDLM, folder_format, load_masked_lm, load_released, locate
from unmask.models import DiT
from unmask.runtime import resolve_device

READERS = {RELEASED_MDLM: load_released, MASKED_LM: load_masked_lm}


@dataclass
class Pipeline:
    """What ``unmask.load`` returns: use ``model`` with :func:`unmask.generate` or :func:`unmask.nelbo`.

    ``model`` is unmask's DiT, or a Hugging Face masked LM wrapped as a denoiser; ``config`` describes
    the run (for a model from outside: its length, tokenizer and MDLM objective); ``checkpoint`` is the
    folder it was read from.
    """

    model: torch.nn.Module
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
    def parameterization(self) -> str:
        """How the model's logits read (:mod:`unmask.score`): "sedd" (a log-score) or "subs" (an x0 prediction)."""
        return "sedd" if self.config.objective.name == "sedd" else "subs"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load(path: str | Path, *, weights: str = "ema", device: str = "auto", step: int | None = None) -> Pipeline:
    """Load a model for inference: an unmask run directory (its latest checkpoint, or ``step``) or
    checkpoint folder, a released MDLM folder, a Hugging Face masked-LM folder, or a hub name of either.

    ``weights="ema"`` (default, as the paper evaluates) uses the EMA weights of an unmask
    checkpoint when saved, ``"model"`` the raw trained weights. The model is returned in eval mode.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    target = resolve_device(device)
    folder = locate(path)
    kind = folder_format(folder)
    if kind in READERS:
        if step is not None:
            raise CheckpointError(f"--step picks a checkpoint of an unmask run; {path} is a single model")
        model, tokenizer, config = READERS[kind](folder)
        checkpoint = folder
    else:
        checkpoint = resolve_checkpoint(folder, step=step)
        config = load_config(checkpoint)
        if not (checkpoint / "tokenizer").is_dir():
            raise CheckpointError(f"{checkpoint} has no tokenizer folder; the checkpoint is incomplete")
        tokenizer = load_tokenizer(checkpoint / "tokenizer")
        model = DiT(config.model_config(tokenizer.vocab_size))
        load_weights(model, model_weights(checkpoint, weights), checkpoint)
    model.to(target).eval()
    return Pipeline(model=model, tokenizer=tokenizer, config=config, checkpoint=checkpoint)
