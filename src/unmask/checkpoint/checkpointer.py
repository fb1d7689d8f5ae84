"""One object that saves and restores a run's state, whatever the number of processes.

The state is made of stateful parts, torchtitan's way: each part (the model, the optimizer, the EMA of
the weights, the training state, the data position) has ``state_dict()`` and ``load_state_dict()``.
:class:`Checkpointer` writes the tensors of every part (a part's top-level tensor entries) into that
part's file (:data:`unmask.checkpoint.layout.TENSOR_FILES`) when one process saves, or into DCP
shards (:mod:`unmask.checkpoint.sharded`) when several do, and the other entries into ``state.json``
under the part's name; every process's RNG state goes beside them. Either restores with any number
of processes and either parallel strategy: a checkpoint of 8 FSDP processes resumes in one, and the
other way round. With as many processes as saved it, the RNG states come back too and the resume is
exact.

A save is atomic as a whole: every process writes into one hidden staging folder; only when all
parts are on disk does rank 0 add the small files, rename the folder into place and point
``checkpoints/latest`` at it. A crash, a kill or a full disk at any moment leaves the earlier
checkpoints intact; the staging folder is removed on the way out, or by the next run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from unmask.checkpoint import sharded
from unmask.checkpoint.layout import (
    CHECKPOINTS_DIR,
    LATEST,
    TENSOR_FILES,
    CheckpointError,
    checkpoint_name,
    is_sharded,
    read_state,
    read_tensors,
    rng_file,
    step_folders,
    write_checkpoint,
    write_small_files,
)
from unmask.config import Config
from unmask.data import Tokenizer
from unmask.distributed.process import Parallel
from unmask.fileio import discard_folder, publish_folder, remove_leftovers, staging_folder, write_atomic, write_tensors
from unmask.runtime import derive_seed


class Stateful(Protocol):
    """A part of a run's state: tensors and plain (JSON) values by name, and their restoration."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ModelState:
    """The model's weights as a part: full or sharded (FSDP) tensors by parameter name."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state)


class OptimizerState:
    """AdamW's per-parameter state as a part: ``state.{parameter name}.{key}`` tensors (full or sharded).

    The hyper-parameters (param_groups) are not part of it: they come from the run's configuration.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return _flat(get_optimizer_state_dict(self.model, self.optimizer))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nested: dict[str, dict[str, Any]] = {}
        for key, value in state.items():
            name, _, entry = key.removeprefix("state.").rpartition(".")
            nested.setdefault(name, {})[entry] = value
        groups = get_optimizer_state_dict(self.model, self.optimizer)["param_groups"]
        set_optimizer_state_dict(self.model, self.optimizer, {"state": nested, "param_groups": groups})


def _flat(optimizer_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``state.{parameter name}.{key}`` -> tensor, from DCP's optimizer state dict (keyed by parameter name)."""
    return {f"state.{name}.{key}": value for name, entries in optimizer_state["state"].items()
            for key, value in entries.items()}


class Checkpointer:
    """Saves checkpoints of the run in ``run_dir`` and restores them, for this process's part of the job.

    ``config``, ``model`` (the model's description: :func:`unmask.models.describe`) and ``tokenizer`` describe
    the run and its model in every checkpoint.
    """

    def __init__(self, run_dir: str | Path, parallel: Parallel, *, config: Config, model: dict[str, Any],
                 tokenizer: Tokenizer, keep: int = 2) -> None:
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.parallel = parallel
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.keep = keep
        if parallel.is_main:
            remove_leftovers(self.root)  # staging folders of a killed save, folders set aside mid-prune

    def save(self, step: int, parts: Mapping[str, Stateful], extra: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step`` of ``parts``, point ``latest`` at it and prune all but the newest ``keep``."""
        final = self.root / checkpoint_name(step)
        try:
            return self._save(final, step, parts, extra or {})
        except (OSError, SafetensorError) as err:
            earlier = "the earlier checkpoints are intact" if step_folders(self.root.parent) else "nothing was saved"
            raise CheckpointError(f"could not write checkpoint {final} ({err}); {earlier}; "
                                  "free space or fix the folder, then --resume") from None

    def _save(self, final: Path, step: int, parts: Mapping[str, Stateful], extra: dict[str, Any]) -> Path:
        parallel = self.parallel
        tensors, values = _split({name: part.state_dict() for name, part in parts.items()})
        with contextlib.ExitStack() as stack:  # rank 0 makes the staging folder, every rank writes into it
            made = stack.enter_context(staging_folder(final)) if parallel.is_main else None
            tmp = Path(parallel.broadcast(str(made) if made is not None else None))
            if parallel.is_distributed:
                sharded.save(tensors, tmp)
            parallel.main_only(lambda: rng_file(tmp, 0).parent.mkdir(exist_ok=True))
            _write_rng(parallel, rng_file(tmp, parallel.rank))
            parallel.barrier()  # every part is written

            def publish() -> None:
                record = {"step": step, "world_size": parallel.world_size,
                          "strategy": self.config.parallel.strategy, **values, **extra}
                described = dict(record=record, config=self.config, model=self.model, tokenizer=self.tokenizer)
                if parallel.is_distributed:
                    write_small_files(tmp, **described)
                else:
                    write_checkpoint(tmp, tensors=tensors, **described)
                publish_folder(tmp, final, replace=True)
                write_atomic(self.root / LATEST, final.name)
                for old in step_folders(self.root.parent)[: -self.keep]:
                    discard_folder(old)

            parallel.main_only(publish)
        return final

    def restore(self, checkpoint: Path, parts: Mapping[str, Stateful]) -> dict[str, Any]:
        """Load ``checkpoint`` into this process's ``parts``; returns its ``state.json``.

        The RNG states come back exactly when the checkpoint was written by as many processes;
        otherwise each process's RNG (dropout only) is reseeded from (seed, step, rank).
        """
        record = read_state(checkpoint)
        # Each part's own tensors (sharded ones included), filled in place from the checkpoint.
        tensors, _ = _split({name: part.state_dict() for name, part in parts.items()})
        if is_sharded(checkpoint):
            sharded.load(tensors, checkpoint, distributed=self.parallel.is_distributed)
        else:
            for name, template in tensors.items():
                _fill(template, _read_part(checkpoint, name), f"{name}.")
        for name, part in parts.items():
            entries = record.get(name, {})
            part.load_state_dict({**(entries if isinstance(entries, dict) else {}), **tensors.get(name, {})})
        rng = rng_file(checkpoint, self.parallel.rank)
        if record.get("world_size", 1) == self.parallel.world_size and rng.is_file():
            _restore_rng(read_tensors(rng), self.parallel.device)
        else:
            torch.manual_seed(derive_seed(self.config.train.seed, "dropout", record["step"], self.parallel.rank))
        return record


def _split(states: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Each part's tensors (for its file or the shards) and its other entries (for state.json)."""
    tensors = {name: {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} for name, state in states.items()}
    values = {name: {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
              for name, state in states.items()}
    return {name: t for name, t in tensors.items() if t}, {name: v for name, v in values.items() if v}


def _read_part(checkpoint: Path, name: str) -> dict[str, torch.Tensor]:
    file = checkpoint / TENSOR_FILES[name]
    if not file.is_file():
        raise CheckpointError(f"{checkpoint} has no {file.name}, which this run's {name} needs "
                              f"({'optim.ema > 0 keeps an EMA' if name == 'ema' else 'the checkpoint is incomplete'})")
    return read_tensors(file)


def _fill(template: dict[str, Any], source: dict[str, Any], where: str) -> None:
    """Copy full tensors into the (possibly sharded) tensors of ``template``, key by key."""
    for key, value in template.items():
        if key not in source:
            raise CheckpointError(f"the checkpoint has no {where}{key}; it is from another model or was edited")
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


def _write_rng(parallel: Parallel, path: Path) -> None:
    """This process's RNG states: the CPU's and its own GPU's (never every GPU's)."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if parallel.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(parallel.device)
    write_tensors(tensors, path)


def _restore_rng(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
