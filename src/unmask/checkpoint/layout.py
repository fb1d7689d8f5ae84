"""The checkpoint format, owned here: every file name, how to find a checkpoint, reading its parts, and
writing its small files.

A run directory holds ``config.yaml``, ``tokenizer/`` and ``checkpoints/step_XXXXXXXX/`` folders,
each complete in itself:

    model.safetensors      the trained weights              } a single-process checkpoint; a
    ema.safetensors        their EMA (sampling's default)   } multi-process one holds dcp/ (the
    optimizer.safetensors  the AdamW moments                } same tensors, sharded) instead
    teacher.safetensors    a distillation run's teacher of the current round (unmask distill)
    rng/                   each process's RNG state (safetensors), for an exact resume
    model.json             the model's whole configuration (what to build before loading the weights)
    state.json             step, the other parts' state (EMA updates, training time, data position), metrics
    config.yaml            the run's configuration
    tokenizer/             the tokenizer, so sampling never needs the training setup

``checkpoints/latest`` names the newest one. Nothing here unpickles: weights are safetensors and
the small files JSON and YAML (sharded checkpoints: see :mod:`unmask.checkpoint.sharded`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from unmask.config import Config, ConfigError
from unmask.data import Tokenizer
from unmask.errors import UserError
from unmask.fileio import within, write_tensors
from unmask.models import DiTConfig, model_config
from unmask.validation import check_model_description, validate

LATEST = "latest"
CHECKPOINTS_DIR = "checkpoints"
SHARDED_DIR = "dcp"  # torch.distributed.checkpoint files of a multi-process run
RNG_DIR = "rng"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
MODEL_CONFIG_FILE = "model.json"
TOKENIZER_DIR = "tokenizer"
# The tensor file of each part of a run's state that holds tensors (one process; DCP shards otherwise).
TENSOR_FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "optimizer": "optimizer.safetensors",
                "teacher": "teacher.safetensors"}
MODEL_FILE, EMA_FILE, OPTIMIZER_FILE = TENSOR_FILES["model"], TENSOR_FILES["ema"], TENSOR_FILES["optimizer"]


class CheckpointError(UserError):
    """A missing, corrupt or mismatched checkpoint; the message names the fix."""


class CheckpointNotice(UserWarning):
    """Something a user should know about the checkpoint chosen (e.g. a fallback)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_file(folder: Path, rank: int) -> Path:
    return folder / RNG_DIR / f"rank_{rank:05d}.safetensors"


def is_sharded(checkpoint: Path) -> bool:
    """True for the sharded checkpoint of a multi-process run."""
    return (checkpoint / SHARDED_DIR / ".metadata").is_file()


def is_checkpoint(path: Path) -> bool:
    """A folder with weights and the small files a checkpoint needs beside them."""
    has_weights = (path / MODEL_FILE).is_file() or is_sharded(path)
    return has_weights and (path / CONFIG_FILE).is_file() and (path / TOKENIZER_DIR).is_dir()


def step_folders(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (complete or not)."""
    root = run_dir / CHECKPOINTS_DIR
    return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def resolve_checkpoint(path: str | Path, *, step: int | None = None) -> Path:
    """A checkpoint folder from a run directory (its latest checkpoint, or ``step``) or a checkpoint folder.

    When ``checkpoints/latest`` is missing or names a folder that is gone or incomplete (a crash
    between the two renames of a save), the newest complete step is used and a
    :class:`CheckpointNotice` says so.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory or a checkpoint folder")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; pass a run directory or a checkpoint folder (the folder that "
                              f"holds {CONFIG_FILE} and the weights)")
    if step is None and is_checkpoint(path):
        return path
    folders = step_folders(path)
    if step is not None:
        chosen = path / CHECKPOINTS_DIR / checkpoint_name(step)
        if not is_checkpoint(chosen):
            have = ", ".join(str(int(f.name.removeprefix("step_"))) for f in folders if is_checkpoint(f)) or "none"
            raise CheckpointError(f"{path} has no complete checkpoint of step {step}; steps saved: {have}")
        return chosen
    latest = path / CHECKPOINTS_DIR / LATEST
    name = latest.read_text(errors="replace").strip() if latest.is_file() else None
    # The pointer names a folder beside it: one that leads elsewhere (../another-run) is not followed.
    named = within(path / CHECKPOINTS_DIR, name) if name and name == Path(name).name else None
    if named is not None and is_checkpoint(named):
        return named
    complete = [f for f in folders if is_checkpoint(f)]
    if complete:
        if name is None:
            pointer = "checkpoints/latest is missing"
        elif named is None:
            pointer = f"checkpoints/latest names {name!r}, outside the run's checkpoints folder"
        else:
            pointer = f"checkpoints/latest names {named.name}, which is incomplete"
        warnings.warn(f"{pointer}; using {complete[-1].name}, the newest complete checkpoint", CheckpointNotice,
                      stacklevel=2)
        return complete[-1]
    raise CheckpointError(f"{path} holds no checkpoint; train first (unmask train --out {path}) or pass a checkpoint")


def load_config(checkpoint: Path) -> Config:
    """The run's configuration saved with ``checkpoint``, checked as the command line's is (a file edited by hand
    is trusted no more than an override); the kind's training rules are checked when it is trained again."""
    try:
        config = Config.load(checkpoint / CONFIG_FILE)
        validate(config, training=False)
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {checkpoint} has an unusable config: {err}") from None
    return config


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{checkpoint}/{STATE_FILE} is unreadable ({err}); "
                              "pick an earlier checkpoint with --step") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{checkpoint}/{STATE_FILE} has no step; pick an earlier checkpoint with --step")
    return state


def train_seconds(state: dict[str, Any]) -> float:
    """The training time up to a checkpoint's step, over every session, from its state.json."""
    part = state.get("train")
    return float(part.get("train_seconds", 0.0)) if isinstance(part, dict) else 0.0


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or incomplete ({err}); "
                              "pick an earlier checkpoint with --step") from None


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError:
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in tensors.items()}
        diff = next((k for k in own if own[k] != theirs.get(k)), next(iter(set(theirs) - set(own)), "?"))
        raise CheckpointError(
            f"weights in {source} do not fit the model its config describes (first mismatch: {diff}); "
            "the checkpoint is from another model size or was edited"
        ) from None


def load_model_description(checkpoint: Path, config: Config, vocab_size: int) -> dict[str, Any]:
    """The model's architecture and whole configuration as saved with its weights (``model.json``,
    :func:`unmask.models.describe`), checked to describe a model unmask builds; a checkpoint written before
    unmask saved it describes a DiT through the run's config and the tokenizer."""
    path = checkpoint / MODEL_CONFIG_FILE
    if not path.is_file():
        return {"architecture": "dit", **config.model_config(vocab_size).to_dict()}
    try:
        values = check_model_description(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, ConfigError) as err:
        raise CheckpointError(f"{path} is unreadable or not a model description ({err}); "
                              "pick an earlier checkpoint with --step") from None
    return values


def load_model_config(checkpoint: Path, config: Config, vocab_size: int) -> DiTConfig:
    """The configuration dataclass of the checkpoint's model (:func:`load_model_description`)."""
    return model_config(load_model_description(checkpoint, config, vocab_size))


def write_small_files(folder: Path, *, record: dict[str, Any], config: Config, model: dict[str, Any],
                      tokenizer: Tokenizer) -> None:
    """Everything of a checkpoint but its tensors: state.json (``record``, with its ``step``), the run's
    config, the model's description (``model``: :func:`unmask.models.describe`) and the tokenizer."""
    (folder / STATE_FILE).write_text(json.dumps(record, indent=2))
    config.save(folder / CONFIG_FILE)
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(model, indent=2) + "\n")
    tokenizer.save(folder / TOKENIZER_DIR)


def write_checkpoint(folder: Path, *, tensors: dict[str, dict[str, torch.Tensor]], record: dict[str, Any],
                     config: Config, model: dict[str, Any], tokenizer: Tokenizer) -> None:
    """A single-process checkpoint in ``folder`` (a staging folder): each part's tensors in its file
    (``TENSOR_FILES``), then the small files (:func:`write_small_files`)."""
    for part, values in tensors.items():
        write_tensors(values, folder / TENSOR_FILES[part])
    write_small_files(folder, record=record, config=config, model=model, tokenizer=tokenizer)
