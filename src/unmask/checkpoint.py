"""Checkpoints: safetensors only (no pickle), self-contained, written atomically.

A run directory holds ``config.yaml`` and ``checkpoints/step_XXXXXXXX/`` folders, each with

    model.safetensors      the trained weights
    ema.safetensors        the EMA of the weights (what evaluation and sampling use by default)
    optimizer.safetensors  AdamW moments, plus the RNG states (for an exact resume)
    state.json             step, data position, optimizer hyper-parameters, metrics
    config.yaml            the run's configuration
    tokenizer/             the tokenizer, so sampling never needs the training setup

A checkpoint is written to a hidden temporary folder and renamed into place, and the file
``checkpoints/latest`` is replaced atomically afterwards, so a crash at any moment leaves the
previous checkpoint intact and never a half-written one under a real name.

A multi-process run writes sharded checkpoints instead (``dcp/`` in place of the safetensors
files; see :mod:`unmask.checkpoint_dist`); ``unmask export`` turns one into the layout above.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unmask.config import Config, ConfigError


class CheckpointError(ValueError):
    """A missing, corrupt or mismatched checkpoint; the message names the fix."""


LATEST = "latest"
SHARDED_DIR = "dcp"  # torch.distributed.checkpoint files of a multi-process run


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {
        f"state.{index}.{key}": value.detach().contiguous()
        for index, entries in state["state"].items()
        for key, value in entries.items()
    }
    return tensors, state["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": param_groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = value
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class TrainingState:
    """Everything a resume needs besides the configuration."""

    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    ema_updates: int
    extra: dict[str, Any]


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: torch.nn.Module,
    ema: dict[str, torch.Tensor] | None,
    ema_updates: int,
    optimizer: torch.optim.Optimizer,
    config: Config,
    tokenizer_dir: Path,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune all but ``keep``."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_checkpoint_files(tmp, step=step, model=model, ema=ema, ema_updates=ema_updates, optimizer=optimizer,
                           config=config, tokenizer_dir=tokenizer_dir, extra=extra)
    publish(tmp, final, keep)
    return final


def write_checkpoint_files(
    folder: Path,
    *,
    step: int,
    model: torch.nn.Module,
    ema: dict[str, torch.Tensor] | None,
    ema_updates: int,
    optimizer: torch.optim.Optimizer,
    config: Config,
    tokenizer_dir: Path,
    extra: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """The files of a single-process checkpoint, in ``folder`` (``rng``: default this process's state)."""
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    if ema is not None:
        save_file(ema, folder / "ema.safetensors")
    tensors, param_groups = _optimizer_tensors(optimizer)
    save_file({**tensors, **(_rng_tensors() if rng is None else rng)}, folder / "optimizer.safetensors")
    state = {"step": step, "ema_updates": ema_updates, "param_groups": param_groups, **(extra or {})}
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    config.save(folder / "config.yaml")
    shutil.copytree(tokenizer_dir, folder / "tokenizer")
    fsync_tree(folder)


def fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def publish(tmp: Path, final: Path, keep: int) -> None:
    """Rename a complete checkpoint folder into place, point ``latest`` at it, prune old ones."""
    root = final.parent
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_atomic(root / LATEST, final.name)
    _prune(root, keep)


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder so that no crash leaves it half-deleted under its real name."""
    aside = folder.with_name(f".{folder.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        _discard(old)


def is_sharded(checkpoint: Path) -> bool:
    """True for the sharded checkpoint of a multi-process run (``unmask.checkpoint_dist``)."""
    return (checkpoint / SHARDED_DIR / ".metadata").is_file()


def is_checkpoint(path: Path) -> bool:
    return (path / "model.safetensors").is_file() or is_sharded(path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run directory (its latest checkpoint) or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory or a checkpoint folder")
    if is_checkpoint(path):
        return path
    root = path / "checkpoints"
    latest = root / LATEST
    if latest.is_file():
        candidate = root / latest.read_text().strip()
        if is_checkpoint(candidate):
            return candidate
    raise CheckpointError(f"{path} holds no checkpoint; train first (unmask train --out {path}) or pass a checkpoint")


def load_config(checkpoint: Path) -> Config:
    try:
        return Config.load(checkpoint / "config.yaml")
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {checkpoint} has an unreadable config: {err}") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or incomplete ({err}); use an earlier checkpoint") from None


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


def load_training_state(checkpoint: Path) -> TrainingState:
    """Read everything for a resume (and restore the global RNG state)."""
    try:
        state = json.loads((checkpoint / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{checkpoint}/state.json is unreadable ({err}); use an earlier checkpoint") from None
    tensors = read_tensors(checkpoint / "optimizer.safetensors")
    _restore_rng(tensors)
    optimizer_tensors = {k: v for k, v in tensors.items() if k.startswith("state.")}
    ema_path = checkpoint / "ema.safetensors"
    return TrainingState(
        step=state.pop("step"),
        model=read_tensors(checkpoint / "model.safetensors"),
        ema=read_tensors(ema_path) if ema_path.is_file() else None,
        optimizer=_optimizer_state(optimizer_tensors, state.pop("param_groups")),
        ema_updates=state.pop("ema_updates"),
        extra=state,
    )
