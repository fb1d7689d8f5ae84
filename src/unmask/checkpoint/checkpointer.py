"""One object that saves and restores a run's state, whatever the number of processes.

:class:`Checkpointer` writes checkpoint ``step`` of a run (model, EMA, AdamW state, every
process's RNG state, and the trainer's ``extra``: data position and metrics) and restores one into
a model, optimizer and EMA of any layout. One process writes safetensors files, the layout a
user can share and :func:`unmask.load` reads; several processes write DCP shards
(:mod:`unmask.checkpoint.sharded`). Either restores with any number of processes and either
parallel strategy: a checkpoint of 8 FSDP processes resumes in one, and the other way round.
With as many processes as saved it, the RNG states come back too and the resume is exact.

A save is atomic as a whole: every process writes into one hidden staging folder; only when all
parts are on disk does rank 0 add the small files, rename the folder into place and point
``checkpoints/latest`` at it. A crash, a kill or a full disk at any moment leaves the earlier
checkpoints intact; the staging folder is removed on the way out, or by the next run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor

from unmask.checkpoint import sharded
from unmask.checkpoint.layout import (
    CONFIG_FILE,
    LATEST,
    STATE_FILE,
    TOKENIZER_DIR,
    CheckpointError,
    checkpoint_name,
    is_sharded,
    read_state,
    read_tensors,
    rng_file,
    step_folders,
)
from unmask.config import Config
from unmask.distributed.process import Parallel
from unmask.fileio import discard_folder, publish_folder, remove_leftovers, staging_folder, write_atomic, write_tensors
from unmask.runtime import derive_seed


class EMAState(Protocol):
    """What the checkpointer needs of an EMA of the weights: its tensors and its update count."""

    shadow: dict[str, torch.Tensor]
    updates: int


def optimizer_tensors(optimizer_state: dict[str, Any], names: list[str]) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state under the single-process names ``state.{index}.{key}``.

    ``optimizer_state["state"]`` is keyed by parameter name (as DCP's state dicts are); the
    index is the parameter's place among the trainable ones, as ``torch.optim`` numbers them.
    """
    index = {name: i for i, name in enumerate(names)}
    return {f"state.{index[name]}.{key}": value for name, entries in optimizer_state["state"].items()
            for key, value in entries.items()}


def _trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


class Checkpointer:
    """Saves checkpoints of the run in ``run_dir`` and restores them, for this process's part of the job."""

    def __init__(self, run_dir: str | Path, parallel: Parallel, *, config: Config, tokenizer_dir: Path,
                 keep: int = 2) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.parallel = parallel
        self.config = config
        self.tokenizer_dir = tokenizer_dir
        self.keep = keep
        if parallel.is_main:
            remove_leftovers(self.root)  # staging folders of a killed save, folders set aside mid-prune

    def _state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMAState | None) -> dict:
        """Model and optimizer keyed by parameter name, and the EMA: this process's (maybe sharded) tensors."""
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
        if ema is not None:
            state["ema"] = ema.shadow
        return state

    def save(self, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMAState | None,
             extra: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step``, point ``latest`` at it and prune all but the newest ``keep``."""
        final = self.root / checkpoint_name(step)
        try:
            return self._save(final, step, model, optimizer, ema, extra or {})
        except (OSError, SafetensorError) as err:
            earlier = "the earlier checkpoints are intact" if step_folders(self.root.parent) else "nothing was saved"
            raise CheckpointError(f"could not write checkpoint {final} ({err}); {earlier}; "
                                  "free space or fix the folder, then --resume") from None

    def _save(self, final: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              ema: EMAState | None, extra: dict[str, Any]) -> Path:
        parallel = self.parallel
        state = self._state(model, optimizer, ema)
        with contextlib.ExitStack() as stack:  # rank 0 makes the staging folder, every rank writes into it
            made = stack.enter_context(staging_folder(final)) if parallel.is_main else None
            tmp = Path(parallel.broadcast(str(made) if made is not None else None))
            if parallel.is_distributed:
                sharded.save(state, tmp)
            else:
                write_tensors(state["model"], tmp / "model.safetensors")
                if ema is not None:
                    write_tensors(ema.shadow, tmp / "ema.safetensors")
                names = _trainable_names(model)
                write_tensors(optimizer_tensors(state["optimizer"], names), tmp / "optimizer.safetensors")
            parallel.main_only(lambda: rng_file(tmp, 0).parent.mkdir(exist_ok=True))
            write_tensors(_rng_state(parallel.device), rng_file(tmp, parallel.rank))
            parallel.barrier()  # every part is written

            def publish() -> None:
                record = {"step": step, "ema_updates": ema.updates if ema is not None else 0,
                          "world_size": parallel.world_size, "strategy": self.config.parallel.strategy, **extra}
                (tmp / STATE_FILE).write_text(json.dumps(record, indent=2))
                self.config.save(tmp / CONFIG_FILE)
                shutil.copytree(self.tokenizer_dir, tmp / TOKENIZER_DIR)
                publish_folder(tmp, final, replace=True)
                write_atomic(self.root / LATEST, final.name)
                for old in step_folders(self.root.parent)[: -self.keep]:
                    discard_folder(old)

            parallel.main_only(publish)
        return final

    def restore(self, checkpoint: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                ema: EMAState | None) -> dict[str, Any]:
        """Load ``checkpoint`` into this process's model, optimizer and EMA; returns its ``state.json``.

        The RNG states come back exactly when the checkpoint was written by as many processes;
        otherwise each process's RNG (dropout only) is reseeded from (seed, step, rank).
        """
        record = read_state(checkpoint)
        template = self._state(model, optimizer, ema)
        if is_sharded(checkpoint):
            sharded.load(template, checkpoint, distributed=self.parallel.is_distributed)
        else:
            _fill(template, _single_process_tensors(checkpoint, _trainable_names(model), ema is not None), "")
        set_state_dict(model, optimizer, model_state_dict=template["model"], optim_state_dict=template["optimizer"])
        if ema is not None:
            ema.updates = int(record.get("ema_updates", 0))  # the shadow tensors were filled in place
        rng = rng_file(checkpoint, self.parallel.rank)
        if record.get("world_size", 1) == self.parallel.world_size and rng.is_file():
            _restore_rng(read_tensors(rng), self.parallel.device)
        else:
            torch.manual_seed(derive_seed(self.config.train.seed, "dropout", record["step"], self.parallel.rank))
        return record


def _single_process_tensors(checkpoint: Path, names: list[str], with_ema: bool) -> dict[str, Any]:
    """The tensors of a single-process checkpoint in the layout of :meth:`Checkpointer._state`."""
    optimizer: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in read_tensors(checkpoint / "optimizer.safetensors").items():
        _, index, entry = key.split(".", 2)
        optimizer.setdefault(names[int(index)], {})[entry] = value
    ema_file = checkpoint / "ema.safetensors"
    if with_ema and not ema_file.is_file():
        raise CheckpointError(f"{checkpoint} has no ema.safetensors but the run keeps an EMA (optim.ema > 0)")
    return {"model": read_tensors(checkpoint / "model.safetensors"), "optimizer": {"state": optimizer},
            "ema": read_tensors(ema_file) if with_ema else {}}


def _fill(template: dict[str, Any], source: dict[str, Any], where: str) -> None:
    """Copy full tensors into the (possibly sharded) tensors of ``template``, key by key."""
    for key, value in template.items():
        if key == "param_groups":
            continue  # hyper-parameters come from the configuration
        if key not in source:
            raise CheckpointError(f"the checkpoint has no {where}{key}; it is from another model or was edited")
        if isinstance(value, dict):
            _fill(value, source[key], f"{where}{key}.")
        elif isinstance(value, torch.Tensor):
            _copy_full(value, source[key], f"{where}{key}")


def _copy_full(target: torch.Tensor, full: torch.Tensor, name: str) -> None:
    if tuple(target.shape) != tuple(full.shape):
        raise CheckpointError(f"{name} has shape {tuple(full.shape)} in the checkpoint, {tuple(target.shape)} "
                              "in the model; the checkpoint is from another model size")
    if isinstance(target, DTensor):
        # Every rank holds the full tensor: cut out this rank's shard without communication.
        local = target.to_local()
        shard = distribute_tensor(full.to(local.device, local.dtype), target.device_mesh, target.placements,
                                  src_data_rank=None).to_local()
        local.copy_(shard)
    else:
        target.copy_(full)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's RNG states: the CPU's and its own GPU's (never every GPU's)."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
