"""``unmask distill``: a few-step student trained from a teacher run, round by round, as an ordinary run.

The student starts as the teacher (its EMA weights, the paper's) and trains with the trainer of every run
(its checkpoints, EMA, precision, parallelism and exact resume), on the teacher's data, with the loss of
its method (:mod:`unmask.distill.losses`): SDTT for MDLM, DCD for Duo. Round r (of ``distill.round_steps``
optimizer steps) distils the teacher's T / 2^r steps of dt = 2^r / T into half as many; after each round
the teacher takes the student's weights (both references copy the raw weights, not the EMA). The teacher of
the current round is a part of every checkpoint, so a resume continues exactly. The student folder is a run
like any other: eval, sample, serve, the frontier and the study take it.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import torch

from unmask.checkpoint.checkpointer import ModelState, Stateful
from unmask.checkpoint.layout import TOKENIZER_DIR
from unmask.config import Config, ConfigError, apply_overrides
from unmask.distill.losses import dcd_loss, sdtt_loss
from unmask.kinds.base import padding_of
from unmask.pipeline import load
from unmask.train import Trainer, resume_config
from unmask.train.loop import TrainResult

# The teacher's steps T of the first round, per method: the references' (SDTT from MDLM's 1024 steps, Duo's
# DCD from 512).
STEPS_FROM = {"sdtt": 1024, "dcd": 512}
# The references' optimisation for distillation (both papers: Adam lr 6e-5, linear warmup of 500 steps),
# applied unless the user sets these keys.
RECIPE = ("optim.lr=6e-5", "optim.warmup_steps=500")


class Distiller(Trainer):
    """The trainer of a distillation run (``config.distill``): a teacher beside the student, the method's loss."""

    def init_model(self) -> None:
        self.model.load_state_dict(load(self.config.distill.teacher, device=str(self.device)).model.state_dict())
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()  # the student starts as the teacher

    def parts(self) -> dict[str, Stateful]:
        return {**super().parts(), "teacher": ModelState(self.teacher)}

    @property
    def steps_from(self) -> int:
        return self.config.distill.steps_from or STEPS_FROM[self.config.distill.method]

    @property
    def round(self) -> int:
        return self.step // self.config.distill.round_steps

    @property
    def dt(self) -> float:
        """The teacher's step size in this round: 2^round / T."""
        return 2**self.round / self.steps_from

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        if self.step and self.step % self.config.distill.round_steps == 0:  # a round ends: the student teaches
            with torch.no_grad():
                for mine, theirs in zip(self.teacher.parameters(), self.model.parameters()):
                    mine.copy_(theirs)
        return super().train_step(batch)

    def batch_losses(self, part: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        distill, objective = self.config.distill, self.config.objective
        common = dict(dt=self.dt, schedule=objective.schedule, mask_id=self.mask_id, divergence=distill.divergence,
                      loss_mask=padding_of(part), generator=generator)
        if distill.method == "sdtt":
            return sdtt_loss(self.forward, self.teacher, part["input_ids"], **common)[0]
        return dcd_loss(self.forward, self.teacher, part["input_ids"], vocab_size=self.tokenizer.vocab_size,
                        gamma_min=distill.gamma_min, gamma_max=distill.gamma_max, **common)[0]


def distillation_config(teacher: str | Path, *, method: str, rounds: int, steps_from: int | None = None,
                        round_steps: int | None = None, overrides: list[str] | None = None) -> Config:
    """The student run's configuration: the teacher's, distilling with ``method`` for ``rounds`` rounds (the
    references' optimisation unless ``overrides`` say otherwise)."""
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    pipeline = load(teacher, device="cpu")
    config = copy.deepcopy(pipeline.config)
    distill = dataclasses.replace(config.distill, method=method, teacher=str(Path(teacher).resolve())
                                  if Path(teacher).exists() else str(teacher), steps_from=steps_from)
    if round_steps is not None:
        distill.round_steps = round_steps
    config.distill = distill
    if steps_from is not None and steps_from < 2 ** rounds:
        raise ConfigError(f"--steps-from {steps_from} cannot be halved {rounds} times; give at least {2 ** rounds}")
    apply_overrides(config, [*RECIPE, *(overrides or [])])
    config.train.max_steps = rounds * config.distill.round_steps
    return config


def distill(teacher: str | Path, out: str | Path, *, method: str, rounds: int, steps_from: int | None = None,
            round_steps: int | None = None, overrides: list[str] | None = None, resume: bool = False,
            progress: bool = True) -> TrainResult:
    """Distil the run or checkpoint ``teacher`` into the new run ``out`` (or with ``resume`` continue it)."""
    out = Path(out)
    if resume:
        config = resume_config(out, list(overrides or []))
        if config.distill.method is None:
            raise ConfigError(f"--resume: {out} is not a distillation run; continue it with unmask train --resume")
    else:
        config = distillation_config(teacher, method=method, rounds=rounds, steps_from=steps_from,
                                     round_steps=round_steps, overrides=overrides)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} already exists; choose a new --out (or --resume to continue it)")
        source = load(teacher, device="cpu")
        source.tokenizer.save(out / TOKENIZER_DIR)  # the student reads and writes the teacher's tokenizer
    try:
        return Distiller(config, out, resume=resume, progress=progress).run()
    except BaseException:
        if not resume and not any((out / "checkpoints").glob("step_*")):
            shutil.rmtree(out, ignore_errors=True)  # a student that never saved leaves nothing behind
        raise
