"""Training: the loop (:mod:`.loop`), the run's folder (:mod:`.run_dir`), the optimisation recipe
(:mod:`.optim`) and metrics (:mod:`.metrics`); checkpoints: :mod:`unmask.checkpoint`."""

from unmask.train.loop import Trainer, TrainResult, train
from unmask.train.run_dir import resume_config

__all__ = ["TrainResult", "Trainer", "resume_config", "train"]
