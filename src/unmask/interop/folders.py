"""What a model folder is (an unmask run or checkpoint, a released MDLM, a Hugging Face masked LM),
where a hub name's files are, and reading a Hugging Face folder's config and safetensors weights.

A name that is not a local path (``kuleshov-group/mdlm-owt``, ``bert-base-uncased``) is fetched
from the Hugging Face hub into its cache (``huggingface_hub.snapshot_download``: the config, the
safetensors weights and the tokenizer files; never pickled weights). Offline (``HF_HUB_OFFLINE``)
a model already in the cache is used from there; anything else needs network access, and the
error says so. The folder a name resolves to is then read exactly as a local folder is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from unmask.checkpoint import CheckpointError, read_tensors
from unmask.data.env import offline
from unmask.errors import require
from unmask.fileio import within

CONFIG_JSON = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")
# What a hub download fetches: configuration, safetensors weights, tokenizer files.
HUB_FILES = [CONFIG_JSON, "*.safetensors", SAFETENSORS_INDEX, "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "*.model", "unmask_tokenizer.json",
             "ranks.tiktoken"]
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".yaml", ".yml", ".json", ".txt")

UNMASK, RELEASED_MDLM, RELEASED_DUO, MASKED_LM = "unmask", "mdlm", "duo", "masked_lm"
DUO_MODEL_TYPES = ("duo", "DUO")  # config.json's model_type of a released Duo in the transformers form
RELEASED_TYPES = ("mdlm", "bd3lm")  # config.json model types of the released layout (MDLM's backbone)


def is_hub_name(text: str) -> bool:
    """``name`` or ``org/name`` that does not look like a file."""
    return bool(_HUB_NAME.fullmatch(text)) and not text.endswith(_FILE_SUFFIXES)


def locate(path: str | Path) -> Path:
    """The local folder of ``path``: itself when it exists, else the hub cache's copy of a hub name."""
    local = Path(path).expanduser()
    if local.exists() or not is_hub_name(str(path)):
        return local
    return hub_folder(str(path))


def hub_folder(name: str) -> Path:
    """The files of the hub model ``name`` (downloaded into the hub cache, or found there offline)."""
    require("huggingface_hub", f"loading {name} from the Hugging Face hub")
    import huggingface_hub  # optional; only a hub name needs it

    try:
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as err:  # noqa: BLE001 - network, authentication and missing-repository errors
        if offline():
            raise CheckpointError(f"{name} is not a local folder nor in the Hugging Face cache, and offline mode is "
                                  "set: loading it by name needs network access, or pass a local folder") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"could not fetch {name} from the Hugging Face hub ({reason}); it needs network "
                              "access and an existing model name, or pass a local folder") from None


def read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_JSON
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is unreadable ({err}); download or export the model again") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} is not a JSON object; download or export the model again")
    return values


def folder_format(folder: Path) -> str:
    """``UNMASK`` (a run or checkpoint folder, or anything else: its reader names what is missing),
    ``RELEASED_MDLM`` (config.json of model_type "mdlm", or "bd3lm": released block diffusion models
    share the layout), ``RELEASED_DUO`` (a Duo config: the PyTorchModelHubMixin's constructor arguments, or
    model_type "duo") or ``MASKED_LM`` (any other config.json)."""
    if not (folder / CONFIG_JSON).is_file() or (folder / "config.yaml").is_file():
        return UNMASK
    values = read_config_json(folder)
    nested = values.get("config")
    if values.get("model_type") in DUO_MODEL_TYPES or (isinstance(nested, dict) and "model" in nested
                                                       and "algo" in nested and "vocab_size" in values):
        return RELEASED_DUO
    model_type = values.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise CheckpointError(f"{folder / CONFIG_JSON} has no model_type; it is not a model folder unmask can load")
    return RELEASED_MDLM if model_type in RELEASED_TYPES else MASKED_LM


def has_safetensors(folder: Path) -> bool:
    return (folder / SAFETENSORS).is_file() or (folder / SAFETENSORS_INDEX).is_file()


def refuse_pickled_weights(folder: Path) -> None:
    """A folder without safetensors weights is refused: its other formats are pickles."""
    if has_safetensors(folder):
        return
    pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file()]
    if pickled:
        raise CheckpointError(f"{folder} holds its weights only as {pickled[0]}, a pickle, which unmask never loads "
                              "(it could run code); convert them to model.safetensors first")
    raise CheckpointError(f"{folder} has no {SAFETENSORS}; the model folder is incomplete")


def safetensors_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards its index names: files inside ``folder`` only, each with a readable
    safetensors header (checked without reading the tensors)."""
    refuse_pickled_weights(folder)
    if (folder / SAFETENSORS).is_file():
        files = [folder / SAFETENSORS]
    else:
        index = folder / SAFETENSORS_INDEX
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{index} is unreadable ({err}); download the model again") from None
        files = []
        for name in names:
            path = within(folder, name)
            if path is None:
                raise CheckpointError(f"{index} names the shard {name!r}, outside {folder}; unmask reads no file "
                                      "outside a model folder: download the model again")
            files.append(path)
    for file in files:
        try:
            with safe_open(file, "pt") as opened:
                opened.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{file} is not a readable safetensors file ({err}); download the model "
                                  "again") from None
    return files


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, or of the shards its index names."""
    tensors: dict[str, torch.Tensor] = {}
    for file in safetensors_files(folder):
        tensors.update(read_tensors(file))
    return tensors
