"""Sharded checkpoints of multi-process runs (``torch.distributed.checkpoint``), resumable at any world size.

A multi-process run writes ``checkpoints/step_XXXXXXXX/`` folders holding

    dcp/           model, EMA and AdamW state: every rank writes its own part (DCP shards)
    rng/           each rank's RNG state (dropout), for an exact resume with as many processes
    state.json     step, EMA update count, world size and strategy, metrics
    config.yaml    the run's configuration
    tokenizer/     the tokenizer

A save is atomic as a whole: every rank writes into the same hidden temporary folder, and only
after a barrier (every shard is on disk) does rank 0 add the small files, rename the folder into
place and point ``checkpoints/latest`` at it. A process killed at any moment leaves the earlier
checkpoints intact and at most a hidden ``.step_XXXXXXXX.tmp`` folder, which is never read and
is replaced by the next save of that step.

Loading reshards: DCP reads the part of each tensor a process holds, so a checkpoint saved by N
processes resumes with M (one included) and with DDP or FSDP; a single-process (safetensors)
checkpoint resumes under torchrun as well. :func:`export_checkpoint` writes the consolidated
single-process layout (safetensors), which every single-process tool reads.

DCP keeps its metadata and the optimizer's hyper-parameters with pickle, so load sharded
checkpoints only from sources you trust; exported checkpoints are safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from unmask.checkpoint import (
    SHARDED_DIR,
    CheckpointError,
    checkpoint_name,
    fsync_tree,
    is_sharded,
    load_config,
    load_training_state,
    publish,
    read_tensors,
    resolve_checkpoint,
    write_checkpoint_files,
)
from unmask.config import Config
from unmask.distributed import Parallel

if TYPE_CHECKING:
    from unmask.train.optim import EMA

RNG_DIR = "rng"


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / RNG_DIR / f"rank_{rank:05d}.safetensors"


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None) -> dict[str, Any]:
    """What DCP saves and loads: model and optimizer keyed by parameter name, and the EMA.

    For a sharded model the tensors are this rank's shards (DTensors); loading fills them in place.
    """
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    if ema is not None:
        state["ema"] = ema.shadow
    return state


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{checkpoint}/state.json is unreadable ({err}); use an earlier checkpoint") from None


def save_sharded(
    run_dir: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    config: Config,
    tokenizer_dir: Path,
    parallel: Parallel,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Every rank writes its shards of checkpoint ``step``; rank 0 publishes it once all are written."""
    root = run_dir / "checkpoints"
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"

    def prepare() -> None:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / RNG_DIR).mkdir(parents=True)

    parallel.main_only(prepare)
    dcp.save(_state(model, optimizer, ema), checkpoint_id=tmp / SHARDED_DIR)
    save_file(_rank_rng(parallel.device), _rng_file(tmp, parallel.rank))
    parallel.barrier()  # every shard is written

    def finish() -> None:
        state = {"step": step, "ema_updates": ema.updates if ema is not None else 0, "world_size": parallel.world_size,
                 "strategy": config.parallel.strategy, **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        config.save(tmp / "config.yaml")
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        fsync_tree(tmp)
        publish(tmp, final, keep)

    parallel.main_only(finish)
    return final


def restore(checkpoint: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None,
            parallel: Parallel, seed: int) -> int:
    """Load a checkpoint (sharded, or single-process) into this process's model, optimizer and EMA.

    Works with any number of processes and either strategy. The RNG states come back exactly when
    the checkpoint was written by as many processes; otherwise each rank's RNG (dropout only) is
    reseeded from (seed, step, rank). Returns the checkpoint's step.
    """
    template = _state(model, optimizer, ema)
    if is_sharded(checkpoint):
        state = read_state(checkpoint)
        try:
            _load(template, checkpoint, no_dist=not parallel.is_distributed)
        except Exception as err:  # noqa: BLE001 - DCP raises several types for a bad folder
            raise CheckpointError(f"{checkpoint} is corrupt or incomplete ({type(err).__name__}: {err}); "
                                  "use an earlier checkpoint") from None
        step, ema_updates, saved_world = state["step"], state.get("ema_updates", 0), state.get("world_size")
    else:
        full = load_training_state(checkpoint)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        source = {
            "model": full.model,
            "ema": full.ema or {},
            "optimizer": {"state": {names[index]: value for index, value in full.optimizer["state"].items()}},
        }
        _fill(template, source, "")
        step, ema_updates, saved_world = full.step, full.ema_updates, 1
    set_state_dict(model, optimizer, model_state_dict=template["model"], optim_state_dict=template["optimizer"])
    if ema is not None:
        ema.updates = ema_updates  # the shadow tensors were filled in place
    rng = _rng_file(checkpoint, parallel.rank)
    if saved_world == parallel.world_size and rng.is_file():
        _restore_rank_rng(read_tensors(rng), parallel.device)
    else:
        torch.manual_seed(dropout_seed(seed, step, parallel.rank))
    return step


def _rank_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's RNG states: the CPU's and its own GPU's (never every GPU's)."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def _restore_rank_rng(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The global RNG seed of ``rank`` from ``step`` on (dropout draws differ across ranks)."""
    return ((seed * 1_000_003 + step) * 7_919 + rank + 1) % (2**63)


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
    from torch.distributed.tensor import DTensor, distribute_tensor

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


def _load(state: dict[str, Any], checkpoint: Path, *, no_dist: bool) -> None:
    with warnings.catch_warnings():
        # DCP warns whenever it reads in one process; here that is intended.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=checkpoint / SHARDED_DIR, no_dist=no_dist)


def _saved_keys(checkpoint: Path) -> set[str]:
    try:
        return set(dcp.FileSystemReader(str(checkpoint / SHARDED_DIR)).read_metadata().state_dict_metadata)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{checkpoint} is corrupt or incomplete ({err}); use an earlier checkpoint") from None


def consolidated_weights(checkpoint: Path, model: torch.nn.Module, weights: str = "ema") -> dict[str, torch.Tensor]:
    """Full ``weights`` ("ema", or "model") of a sharded checkpoint, read in this process alone."""
    if weights == "ema" and not any(key.startswith("ema.") for key in _saved_keys(checkpoint)):
        weights = "model"
    if weights == "ema":
        tensors = {name: torch.empty_like(p) for name, p in model.named_parameters()}
    else:
        tensors = {name: torch.empty_like(v) for name, v in model.state_dict().items()}
    try:
        _load({weights: tensors}, checkpoint, no_dist=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{checkpoint} is corrupt, incomplete or from another model size ({err})") from None
    return tensors


def export_checkpoint(source: str | Path, out: str | Path) -> Path:
    """Write the single-process checkpoint folder (safetensors) of a run or checkpoint to ``out``.

    A sharded checkpoint is consolidated: model, EMA and AdamW state become full tensors, the RNG
    state is rank 0's. ``out`` then loads with :func:`unmask.load`, ``unmask sample`` and
    ``unmask eval``, and resumes training in one process. Written atomically.
    """
    from unmask.data import load_tokenizer
    from unmask.pipeline import build_model
    from unmask.train.optim import EMA, build_optimizer

    checkpoint = resolve_checkpoint(source)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists; choose a new folder for --out")
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if not is_sharded(checkpoint):
        shutil.copytree(checkpoint, tmp)
    else:
        config = load_config(checkpoint)
        tokenizer = load_tokenizer(checkpoint / "tokenizer")
        model = build_model(config, tokenizer.vocab_size)
        device = torch.device("cpu")
        optimizer = build_optimizer(model, config.optim, device)
        ema = EMA(model, config.optim.ema) if config.optim.ema > 0 else None
        step = restore(checkpoint, model=model, optimizer=optimizer, ema=ema, parallel=Parallel(device=device),
                       seed=config.train.seed)
        state = read_state(checkpoint)
        extra = {k: v for k, v in state.items() if k not in ("step", "ema_updates", "world_size", "strategy")}
        rng_file = _rng_file(checkpoint, 0)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write_checkpoint_files(
            tmp, step=step, model=model, ema=ema.state_dict() if ema is not None else None,
            ema_updates=ema.updates if ema is not None else 0, optimizer=optimizer, config=config,
            tokenizer_dir=checkpoint / "tokenizer", extra=extra,
            rng=_single_process_rng(read_tensors(rng_file)) if rng_file.is_file() else None,
        )
    fsync_tree(tmp)
    os.replace(tmp, out)
    return out


def _single_process_rng(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's RNG states under the names of a single-process checkpoint."""
    return {("rng.cuda.0" if name == "rng.cuda" else name): value for name, value in tensors.items()}
