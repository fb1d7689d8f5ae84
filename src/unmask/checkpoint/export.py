"""``unmask export``: any checkpoint as a single-process one (safetensors), checked before it is written.

A sharded checkpoint is consolidated: model, EMA and AdamW state become whole tensors, the RNG
state is rank 0's. A single-process checkpoint is read whole first (every tensor file, the state
and the config), so a damaged one is refused instead of copied. The result loads with
:func:`unmask.load`, ``unmask sample`` and ``unmask eval``, and resumes training in one process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from unmask.checkpoint import sharded
from unmask.checkpoint.layout import (
    RNG_DIR,
    TENSOR_FILES,
    TOKENIZER_DIR,
    CheckpointError,
    is_sharded,
    load_config,
    load_model_description,
    read_state,
    read_tensors,
    resolve_checkpoint,
    rng_file,
    write_checkpoint,
)
from unmask.data import load_tokenizer
from unmask.fileio import publish_folder, staging_folder


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
    """The sharded checkpoint's parts as whole tensors in their files, beside its own small files: the shards
    hold each part under its name ("model.", "optimizer.", "ema."), in the single-process keys."""
    config, state = load_config(checkpoint), read_state(checkpoint)
    tensors: dict[str, dict] = {}
    for key, value in sharded.read_full(checkpoint).items():
        part, _, name = key.partition(".")
        if part in TENSOR_FILES:
            tensors.setdefault(part, {})[name] = value
    if not tensors.get("model"):
        raise CheckpointError(f"{checkpoint} holds no model weights; it is incomplete")
    if not (checkpoint / TOKENIZER_DIR).is_dir():
        raise CheckpointError(f"{checkpoint} has no tokenizer folder; the checkpoint is incomplete")
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_DIR)
    write_checkpoint(out, tensors=tensors, record={**state, "world_size": 1}, config=config,
                     model=load_model_description(checkpoint, config, tokenizer.vocab_size), tokenizer=tokenizer)
    if rng_file(checkpoint, 0).is_file():
        (out / RNG_DIR).mkdir()
        shutil.copyfile(rng_file(checkpoint, 0), rng_file(out, 0))
