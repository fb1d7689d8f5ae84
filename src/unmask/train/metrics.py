"""Metrics sinks: a JSONL file always, TensorBoard when installed, Weights & Biases when asked; and the
progress bar of a training."""

from __future__ import annotations

import importlib.util
import json
import time
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from unmask.fileio import write_atomic

METRICS_FILE = "metrics.jsonl"


def _drop_after(path: Path, step: int) -> None:
    """Keep the lines of ``path`` logged at or before ``step`` (and none that is cut short or not a record)."""
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        write_atomic(path, "".join(kept))


class NoLogger:
    """The metrics sink of ranks other than 0."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLogger:
    """The run's metrics from training ``step`` on: lines of ``metrics.jsonl`` past it (logged by a session that
    stopped before saving them) are dropped first, so that a resumed run logs every step once.

    ``tensorboard`` None (``train.tensorboard``'s default) logs there when TensorBoard is installed, and says
    nothing when it is not; True asks for it, and its absence is said.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool | None = None, wandb: bool = False,
                 config: dict | None = None, step: int = 0):
        path = run_dir / METRICS_FILE
        if path.is_file():
            _drop_after(path, step)
        self.file = open(path, "a")  # noqa: SIM115 - open for the logger's lifetime
        self.writer = None
        self.wandb = None
        if tensorboard is None:
            tensorboard = importlib.util.find_spec("tensorboard") is not None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard logging is skipped: tensorboard is not installed (pip install "
                              "\"unmask[logging]\", or train.tensorboard=false to silence this); metrics go to "
                              "metrics.jsonl", stacklevel=2)
            else:
                # purge_step: TensorBoard hides its own events past the step resumed from.
                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)
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


class Progress:
    """The progress bar: in steps, or in seconds of the budget when ``train.max_minutes`` is what ends the run."""

    def __init__(self, step: int, end: int, max_minutes: float | None, *, enabled: bool) -> None:
        self.timed = max_minutes is not None
        if self.timed:
            self.bar = tqdm(total=round(60 * max_minutes), disable=not enabled, unit="s", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of the time budget{postfix}")
        else:
            self.bar = tqdm(total=end, initial=step, disable=not enabled, unit="step", dynamic_ncols=True)

    def update(self, step: int, elapsed: float, **postfix: str) -> None:
        if self.timed:
            self.bar.n = min(elapsed, self.bar.total)
            postfix = {"step": str(step), **postfix}
        else:
            self.bar.n = step
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
