"""A trained model ready to use: weights, tokenizer and configuration from one folder, and back into one.

:func:`load` reads whatever the folder is: an unmask run or checkpoint, a released MDLM checkpoint
in its Hugging Face layout, or a Hugging Face masked LM (each format's reading lives in
:mod:`unmask.interop`); a hub name is fetched into the hub cache first. :meth:`Pipeline.save` writes
a checkpoint folder that every command takes, so a model changed in Python is one call from the CLI.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.adapt_config import AdaptConfig
from unmask.checkpoint import (
    WEIGHTS,
    CheckpointError,
    load_config,
    load_weights,
    model_weights,
    read_state,
    resolve_checkpoint,
    write_new_folder,
)
from unmask.checkpoint.layout import TOKENIZER_DIR, load_model_description, write_checkpoint
from unmask.config import Config
from unmask.data import Tokenizer, load_tokenizer
from unmask.interop import (
    MASKED_LM,
    RELEASED_DUO,
    RELEASED_MDLM,
    folder_format,
    load_masked_lm,
    load_released,
    load_released_duo,
    locate,
)
from unmask.kinds import ModelKind, get_kind
from unmask.models import DiTConfig, build_model, describe
from unmask.models import model_config as model_config_of
from unmask.runtime import resolve_device
from unmask.sampling import Process
from unmask.sizes import check_fits, model_bytes, summary
from unmask.validation import validate

READERS = {RELEASED_MDLM: load_released, RELEASED_DUO: load_released_duo, MASKED_LM: load_masked_lm}


@dataclass
class Pipeline:
    """What ``unmask.load`` returns: use ``model`` with :func:`unmask.generate_text`, :func:`unmask.generate`
    or :func:`unmask.nelbo`, and :meth:`save` it back into a folder.

    ``model`` is unmask's DiT or an adapted causal LM, or a Hugging Face masked LM wrapped as a denoiser;
    ``config`` describes the run (for a model from outside: its length, tokenizer and MDLM objective);
    ``checkpoint`` is the folder it was read from and ``step`` the training step of its weights.
    """

    model: torch.nn.Module
    tokenizer: Tokenizer
    config: Config
    checkpoint: Path
    step: int = 0

    @property
    def kind(self) -> ModelKind:
        """The model kind (:mod:`unmask.kinds`): its loss, its bounds, how it samples."""
        return get_kind(self.config.objective.name)

    @property
    def process(self) -> Process:
        """What its samplers reverse: MASK id, schedule, how its logits read, block size."""
        return self.kind.process(self.config.objective, self.mask_id, self.tokenizer.vocab_size)

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_id

    @property
    def is_autoregressive(self) -> bool:
        return self.kind.autoregressive

    @property
    def block_size(self) -> int | None:
        """Tokens per block of a block diffusion (bd3lm) model, None for the others."""
        return self.kind.block_size(self.config.objective)

    @property
    def parameterization(self) -> str:
        """How the model's logits read (:mod:`unmask.score`): "sedd" (a log-score) or "subs" (an x0 prediction)."""
        return self.kind.parameterization

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save(self, folder: str | Path) -> Path:
        """Write the model as an unmask checkpoint folder (a new one): its weights, its whole configuration,
        the run's config and the tokenizer. ``unmask.load`` and every command take the folder."""
        try:
            description = describe(self.model)
        except TypeError:
            raise CheckpointError(f"Pipeline.save writes unmask's models (DiT, adapted causal LM); this pipeline's "
                                  f"model is a {type(self.model).__name__}: save it with its own library") from None
        model_config = self.model.config
        if model_config.vocab_size != self.tokenizer.vocab_size:
            raise CheckpointError(f"the model has {model_config.vocab_size} token ids but the tokenizer "
                                  f"{self.tokenizer.vocab_size}; they do not belong together")
        # The run's config follows the model it describes.
        config = copy.deepcopy(self.config)
        config.data.length = model_config.length
        if isinstance(model_config, DiTConfig):
            if model_config.causal != self.kind.autoregressive:
                raise CheckpointError(f"a {self.kind.name} model is {'' if self.kind.autoregressive else 'not '}"
                                      f"causal, this one is{'' if model_config.causal else ' not'}: set "
                                      "config.objective.name to the model's kind")
            config.model = dataclasses.replace(model_config)
        validate(config)
        weights = {name: value.detach().to("cpu", copy=True) for name, value in self.model.state_dict().items()}
        record = {"step": self.step, "saved_from": str(self.checkpoint)}

        def build(tmp: Path) -> None:
            write_checkpoint(tmp, tensors={"model": weights}, record=record, config=config, model=description,
                             tokenizer=self.tokenizer)

        return write_new_folder(folder, build)

    def merged(self) -> Pipeline:
        """The pipeline with its model's LoRA adapters folded into the weights (the same logits) and its config
        without them: :meth:`save` it for a model without peft (``unmask export --merge-lora``)."""
        lora = getattr(self.model.config, "lora_rank", 0)
        if not lora:
            raise CheckpointError(f"{self.checkpoint} has no LoRA adapters to merge (adapt.lora_rank is 0 or it is "
                                  "not an adapted model): drop --merge-lora")
        config = copy.deepcopy(self.config)
        config.adapt = dataclasses.replace(AdaptConfig(), init=config.adapt.init, shift=config.adapt.shift,
                                           anneal_steps=config.adapt.anneal_steps)
        return dataclasses.replace(self, model=self.model.merged(), config=config)


def load(path: str | Path, *, weights: str = "ema", device: str = "auto", step: int | None = None,
         trust_remote_code: bool = False) -> Pipeline:
    """Load a model for inference: an unmask run directory (its latest checkpoint, or ``step``) or
    checkpoint folder, a released MDLM or Duo folder, a Hugging Face masked-LM folder, or a hub name of any.

    ``weights="ema"`` (default, as the paper evaluates) uses the EMA weights of an unmask
    checkpoint when saved, ``"model"`` the raw trained weights. The model is returned in eval mode.
    A Hugging Face folder that needs Python code of its own is refused unless ``trust_remote_code``
    (nothing else unmask reads runs code).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    target = resolve_device(device)
    folder = locate(path)
    kind = folder_format(folder)
    trained_step = 0
    if kind in READERS:
        if step is not None:
            raise CheckpointError(f"--step picks a checkpoint of an unmask run; {path} is a single model")
        options = {"trust_remote_code": trust_remote_code} if kind == MASKED_LM else {}
        model, tokenizer, config = READERS[kind](folder, **options)
        checkpoint = folder
    else:
        checkpoint = resolve_checkpoint(folder, step=step)
        config = load_config(checkpoint)
        if not (checkpoint / TOKENIZER_DIR).is_dir():
            raise CheckpointError(f"{checkpoint} has no tokenizer folder; the checkpoint is incomplete")
        tokenizer = load_tokenizer(checkpoint / TOKENIZER_DIR)
        description = load_model_description(checkpoint, config, tokenizer.vocab_size)
        model_config = model_config_of(description)
        if isinstance(model_config, DiTConfig):  # an adapted causal LM's size is its source's
            for place in {torch.device("cpu"), target}:  # built on the CPU, then moved
                check_fits(model_bytes(model_config), place, f"loading {summary(model_config)}",
                           "load it where more memory is free ({0}), or check the checkpoint's model.json",
                           options=("device",))
        model = build_model(description)
        load_weights(model, model_weights(checkpoint, weights), checkpoint)
        trained_step = read_state(checkpoint)["step"]
    model.to(target).eval()
    return Pipeline(model=model, tokenizer=tokenizer, config=config, checkpoint=checkpoint, step=trained_step)
