"""Checkpoints: where they live and how to read them (:mod:`.layout`), the one object that saves and
restores a run's state (:mod:`.checkpointer`), sharded ones read safely (:mod:`.sharded`), the model
weights of either kind (:mod:`.weights`), export."""

from unmask.checkpoint.checkpointer import Checkpointer
from unmask.checkpoint.export import export_checkpoint, write_new_folder
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
from unmask.checkpoint.weights import WEIGHTS, model_weights

__all__ = [
    "WEIGHTS",
    "CheckpointError",
    "CheckpointNotice",
    "Checkpointer",
    "export_checkpoint",
    "is_checkpoint",
    "is_sharded",
    "load_config",
    "model_weights",
    "load_weights",
    "read_state",
    "read_tensors",
    "resolve_checkpoint",
    "write_new_folder",
]
