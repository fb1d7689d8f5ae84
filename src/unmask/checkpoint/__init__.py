"""Checkpoints: where they live and how to read them (:mod:`.layout`), the one object that saves and
restores a run's state (:mod:`.checkpointer`), sharded ones read safely (:mod:`.sharded`), export."""

from unmask.checkpoint.checkpointer import Checkpointer
from unmask.checkpoint.export import export_checkpoint
from unmask.checkpoint.layout import (
    CheckpointError,
    CheckpointNotice,
    is_checkpoint,
    is_sharded,
    load_config,
    load_weights,
    read_state,
    read_tensors,
    resolve_checkpoint,
)

__all__ = [
    "CheckpointError",
    "CheckpointNotice",
    "Checkpointer",
    "export_checkpoint",
    "is_checkpoint",
    "is_sharded",
    "load_config",
    "load_weights",
    "read_state",
    "read_tensors",
    "resolve_checkpoint",
]
