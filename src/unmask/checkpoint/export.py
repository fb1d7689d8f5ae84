"""``unmask export``: any checkpoint as a single-process one (safetensors), checked before it is written.

A sharded checkpoint is consolidated: model, EMA and AdamW state become whole tensors, the RNG
state is rank 0's. A single-process checkpoint is read whole first (every tensor file, the state
and the config), so a damaged one is refused instead of copied. The result loads with
:func:`unmask.load`, ``unmask sample`` and ``unmask eval``, and resumes training in one process.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from unmask.checkpoint import sharded
from unmask.checkpoint.checkpointer import optimizer_tensors
from unmask.checkpoint.layout import (
    CONFIG_FILE,
    RNG_DIR,
    STATE_FILE,
    TOKENIZER_DIR,
    CheckpointError,
    is_sharded,
    load_config,
    read_state,
    read_tensors,
    resolve_checkpoint,
    rng_file,
)
from unmask.fileio import publish_folder, staging_folder, write_tensors
from unmask.models import DiT


def write_new_folder(out: str | Path, build: Callable[[Path], None]) -> Path:
    """Build the new folder ``out`` atomically: ``build(tmp)`` fills a staging folder that is then
    renamed into place; an existing non-empty ``out`` is refused, a failed build leaves nothing."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists; choose a new folder for --out")
    try:
        with staging_folder(out) as tmp:
            build(tmp)
            publish_folder(tmp, out, replace=False)  # an empty folder given as --out is replaced
    except OSError as err:
        raise CheckpointError(f"could not write {out} ({err}); choose a writable folder for --out") from None
    return out


def export_checkpoint(source: str | Path, out: str | Path, *, step: int | None = None) -> Path:
    """Write the single-process checkpoint folder of a run or checkpoint (or its ``step``) to ``out``."""
    checkpoint = resolve_checkpoint(source, step=step)

    def build(tmp: Path) -> None:
        if is_sharded(checkpoint):
            _consolidate(checkpoint, tmp)
        else:
            _verify(checkpoint)
            shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)

    return write_new_folder(out, build)


def _verify(checkpoint: Path) -> None:
    """Read every part of a single-process checkpoint: a truncated or garbled file raises CheckpointError."""
    read_state(checkpoint)
    load_config(checkpoint)
    for file in sorted(checkpoint.rglob("*.safetensors")):
        read_tensors(file)
    if not (checkpoint / TOKENIZER_DIR).is_dir():
        raise CheckpointError(f"{checkpoint} has no tokenizer folder; the checkpoint is incomplete")


def _consolidate(checkpoint: Path, out: Path) -> None:
    config = load_config(checkpoint)
    state = read_state(checkpoint)
    tensors = sharded.read_full(checkpoint)
    if "model.embed.weight" not in tensors:
        raise CheckpointError(f"{checkpoint} holds no model weights; it is incomplete")
    with torch.device("meta"):  # only the parameter order: AdamW numbers its state by it
        model = DiT(config.model_config(tensors["model.embed.weight"].shape[0]))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optimizer": {}}
    for key, value in tensors.items():
        kind, _, name = key.partition(".")
        parts[kind][name] = value
    write_tensors(parts["model"], out / "model.safetensors")
    if parts["ema"]:
        write_tensors(parts["ema"], out / "ema.safetensors")
    by_parameter: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in parts["optimizer"].items():
        name, _, entry = key.removeprefix("state.").rpartition(".")
        by_parameter.setdefault(name, {})[entry] = value
    write_tensors(optimizer_tensors({"state": by_parameter}, names), out / "optimizer.safetensors")
    if rng_file(checkpoint, 0).is_file():
        (out / RNG_DIR).mkdir()
        shutil.copyfile(rng_file(checkpoint, 0), rng_file(out, 0))
    (out / STATE_FILE).write_text(json.dumps({**state, "world_size": 1}, indent=2))
    shutil.copyfile(checkpoint / CONFIG_FILE, out / CONFIG_FILE)
    shutil.copytree(checkpoint / TOKENIZER_DIR, out / TOKENIZER_DIR)
