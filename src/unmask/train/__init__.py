"""Training: the loop, the optimisation recipe and metrics (checkpoints: :mod:`unmask.checkpoint`)."""

from unmask.train.loop import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]
