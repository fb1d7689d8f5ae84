"""Released MDLM checkpoints in their Hugging Face layout (``config.json`` of model_type "mdlm" and
``model.safetensors`` with ``backbone.*`` names), loaded into unmask's DiT exactly.

Released BD3-LM checkpoints (model_type "bd3lm") have the same backbone and add ``block_size`` to
the config (the config class defaults it to 1: always read the file) and, beside the backbone, the
scalars ``sampling_eps_min`` / ``sampling_eps_max`` (the clipped masking-rate range it trained
with); they load as bd3lm runs with that block size and range.

The tokenizer: a folder written by ``unmask export --format hf`` holds unmask's own tokenizer files;
a folder with Hugging Face tokenizer files uses those; the hub's folder has none, and then a
vocabulary of 50,258 ids is GPT-2's BPE with MASK = 50257 appended (BOS = EOS = 50256), which
unmask builds offline from the tokenizer files it already uses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unmask.checkpoint import CheckpointError
from unmask.config import Config
from unmask.data import Tokenizer, get_tokenizer
from unmask.data.tokenizer_base import CONFIG_FILE as UNMASK_TOKENIZER_FILE
from unmask.data.tokenizer_loading import HF_FOLDER_FILES
from unmask.interop.folders import CONFIG_JSON, SAFETENSORS, read_config_json, read_safetensors_folder
from unmask.interop.reference import PREFIX, config_from_json, run_config, to_unmask
from unmask.kinds.bd3lm import BD3LM
from unmask.models import DiT
from unmask.sizes import check_fits, model_bytes, summary

BLOCK_MODEL_TYPE = "bd3lm"  # config.json's model_type of a released BD3-LM
GPT2_VOCAB = 50258  # GPT-2's 50,257 ids and MASK
CLIPPED_RANGE = ("sampling_eps_min", "sampling_eps_max")  # BD3-LM's masking-rate range, beside the backbone


def released_tokenizer(folder: Path, vocab_size: int) -> tuple[Tokenizer, str]:
    """The tokenizer of a released folder and the spec it was built from (see the module docstring)."""
    if any((folder / name).is_file() for name in (UNMASK_TOKENIZER_FILE, *HF_FOLDER_FILES)):
        spec = str(folder)
    elif vocab_size == GPT2_VOCAB:
        spec = "gpt2"
    else:
        raise CheckpointError(f"{folder} has no tokenizer files and its vocab_size {vocab_size} is not GPT-2's "
                              f"{GPT2_VOCAB}; add the tokenizer files of the model to the folder")
    tokenizer = get_tokenizer(spec)
    if tokenizer.vocab_size != vocab_size:
        raise CheckpointError(f"the tokenizer of {folder} ({tokenizer.name}) has {tokenizer.vocab_size} ids but "
                              f"{CONFIG_JSON} says vocab_size {vocab_size}; they contradict each other")
    return tokenizer, spec


def load_released(folder: Path) -> tuple[DiT, Tokenizer, Config]:
    """The DiT, tokenizer and run configuration of a released MDLM (or BD3-LM) folder, every field and
    tensor checked."""
    values = read_config_json(folder)
    model_config, schedule = config_from_json(values, folder / CONFIG_JSON)
    check_fits(model_bytes(model_config), torch.device("cpu"), f"loading {summary(model_config)}",
               f"check {folder / CONFIG_JSON}, or free memory")
    block_size = _block_size(values, model_config.length, folder / CONFIG_JSON)
    tokenizer, spec = released_tokenizer(folder, model_config.vocab_size)
    tensors = read_safetensors_folder(folder)
    beside = CLIPPED_RANGE if block_size is not None else ()
    stray = next((name for name in tensors if not name.startswith(PREFIX) and name not in beside), None)
    if stray is not None:
        raise CheckpointError(f"{folder} holds the tensor {stray}, outside the MDLM layout's {PREFIX}*; "
                              "the weights are of another model")
    state = to_unmask({name.removeprefix(PREFIX): value for name, value in tensors.items() if name not in beside},
                      model_config, folder / SAFETENSORS)
    model = DiT(model_config)
    model.load_state_dict(state)
    source = "openwebtext" if spec == "gpt2" else "default"
    config = run_config(model_config, tokenizer=spec, schedule=schedule, source=source)
    if block_size is not None:
        config.objective.name, config.objective.block_size = BD3LM.name, block_size
        if all(name in tensors for name in CLIPPED_RANGE):
            low, high = (min(max(float(tensors[name]), 0.0), 1.0) for name in CLIPPED_RANGE)
            if low < high:
                config.objective.mask_rate_range = [low, high]
    return model, tokenizer, config



def _block_size(values: dict, length: int, source: Path) -> int | None:
    """The block size of a released BD3-LM config (None for MDLM), checked against the model's length."""
    if values.get("model_type") != BLOCK_MODEL_TYPE:
        return None
    size = values.get("block_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or length % size:
        raise CheckpointError(f"{source}: a bd3lm config needs block_size, a divisor of model_length {length}; "
                              f"got {size!r}")
    if values.get("adaln", True) is not True:
        raise CheckpointError(f"{source} is a BD3-LM without adaLN conditioning; unmask's DiT always has it")
    return size
