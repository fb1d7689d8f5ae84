"""Sharded checkpoints (``torch.distributed.checkpoint``, DCP), read without running code from the folder.

DCP writes each process's shards of the tensors into ``dcp/*.distcp`` and an index into
``dcp/.metadata``. Two parts of DCP's reader would run code from a crafted folder: the index is a
pickle, and non-tensor entries are read with ``torch.load(weights_only=False)``. So unmask saves
tensors only (the optimizer's hyper-parameters come from the run's config), reads the index with
an unpickler that admits nothing but DCP's own metadata classes and a few plain torch types
(:class:`SafeReader`), and refuses any non-tensor entry (:class:`TensorsOnlyPlanner`). A folder
that needs anything else is refused in one line; it was not written by unmask.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from unmask.checkpoint.layout import SHARDED_DIR, CheckpointError

_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": ("Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorProperties",
                                              "TensorStorageMetadata", "BytesStorageMetadata", "StorageMeta",
                                              "_MEM_FORMAT_ENCODING"),
    "torch.distributed.checkpoint.filesystem": ("_StorageInfo",),
}
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata dataclasses, torch dtypes and sizes, paths: nothing that can run code."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()):
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                         torch.memory_format)):
            return getattr(torch, name)
        if (module, name) in _ALLOWED:
            return {"torch": torch, "torch.serialization": torch.serialization, "pathlib": pathlib,
                    "collections": __import__("collections")}[module].__dict__[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with the index read by :class:`_MetadataUnpickler`."""

    def read_metadata(self) -> Metadata:
        path = Path(self.path) / ".metadata"
        metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError("the index is not DCP metadata")
        if getattr(metadata, "storage_meta", None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


class TensorsOnlyPlanner(DefaultLoadPlanner):
    """Loads tensors; a non-tensor entry would be unpickled, so it is refused."""

    def load_bytes(self, read_item, value) -> None:
        raise pickle.UnpicklingError(f"{read_item.dest_index.fqn} is not a tensor")


def tensors_only(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without its non-tensor leaves (the optimizer's param_groups): what unmask saves."""
    kept: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, dict):
            kept[key] = tensors_only(value)
        elif isinstance(value, torch.Tensor):
            kept[key] = value
    return kept


def save(state: dict[str, Any], folder: Path) -> None:
    """Every process writes its shards of ``state``'s tensors into ``folder/dcp``."""
    dcp.save(tensors_only(state), checkpoint_id=folder / SHARDED_DIR)


def load(state: dict[str, Any], folder: Path, *, distributed: bool) -> None:
    """Fill the tensors of ``state`` (this process's shards of them) from ``folder/dcp``."""
    try:
        with warnings.catch_warnings():
            # DCP warns whenever it reads in one process; here that is intended.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(tensors_only(state), storage_reader=SafeReader(folder / SHARDED_DIR),
                     planner=TensorsOnlyPlanner(), no_dist=not distributed)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{folder} was not written by unmask ({err}); unmask does not load it, since "
                              "reading it could run code from the folder") from None
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP raises several types for a bad folder
        raise CheckpointError(f"{folder} is corrupt, incomplete or not an unmask checkpoint ({_reason(err)}); "
                              "pick an earlier checkpoint with --step") from None


def _reason(err: BaseException) -> str:
    """One line for a failed DCP read: the first failing rank's own error (DCP wraps each rank's with its
    traceback in a CheckpointException, which is no Exception)."""
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def saved_tensors(folder: Path) -> dict[str, TensorStorageMetadata]:
    """Name -> shape and dtype of every tensor in the sharded checkpoint ``folder``."""
    try:
        metadata = SafeReader(folder / SHARDED_DIR).read_metadata()
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{folder} was not written by unmask ({err}); unmask does not load it, since "
                              "reading it could run code from the folder") from None
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - a truncated or garbled index
        raise CheckpointError(f"{folder} is corrupt or incomplete ({_reason(err)}); "
                              "pick an earlier checkpoint with --step") from None
    return {name: meta for name, meta in metadata.state_dict_metadata.items()
            if isinstance(meta, TensorStorageMetadata)}


def read_full(folder: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Whole tensors (all shards joined) of a sharded checkpoint, read in this process alone."""
    saved = saved_tensors(folder)
    wanted = saved if names is None else {name: saved[name] for name in names if name in saved}
    tensors = {name: torch.empty(tuple(meta.size), dtype=meta.properties.dtype) for name, meta in wanted.items()}
    load(tensors, folder, distributed=False)
    return tensors
