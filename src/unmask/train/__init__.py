"""Training: the loop, the optimisation recipe, checkpoints and metrics."""

from unmask.train.checkpoint import CheckpointError
from unmask.train.loop import Trainer, TrainResult, train

__all__ = ["CheckpointError", "TrainResult", "Trainer", "train"]
