"""Metrics sinks: a JSONL file always, TensorBoard when installed, Weights & Biases when asked."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any


class NoLogger:
    """The metrics sink of ranks other than 0."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLogger:
    def __init__(self, run_dir: Path, *, tensorboard: bool = True, wandb: bool = False, config: dict | None = None):
        self.file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - open for the logger's lifetime
        self.writer = None
        self.wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard logging is skipped: tensorboard is not installed (pip install "
                              "\"unmask[logging]\", or train.tensorboard=false to silence this); metrics go to "
                              "metrics.jsonl", stacklevel=2)
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                warnings.warn("train.wandb=true but wandb is not installed (pip install wandb); logging locally only",
                              stacklevel=2)
            else:
                self.wandb = wandb_module.init(project="unmask", dir=str(run_dir), config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
