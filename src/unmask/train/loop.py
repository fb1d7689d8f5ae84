"""The training loop: batches -> objective -> AdamW -> EMA, with validation, logging, checkpoints.

Everything random is derived from (seed, step): the batch of step k comes from
``batch_iterator(seed, start_step=k)``, the times and masks of step k from a generator seeded
with (seed, "noise", step, micro-batch), and dropout from the global RNG, whose state every
checkpoint saves. So a run interrupted at any checkpoint and resumed ends with the same weights
as one that never stopped.

The loop is the same for one process and for many. Parallelism is applied to the model from
outside (:func:`unmask.distributed.parallelize.parallelize`), and checkpoints are saved and
restored by one :class:`unmask.checkpoint.Checkpointer` whatever the number of processes. The
global batch stays ``train.global_batch``, cut into the same micro-batches of
``train.micro_batch`` whatever the number of processes: rank r takes a contiguous run of them,
seeds each one's noise from its index in the global batch, and normalises by the token count of
the whole global batch, so that the summed gradients, and with them the whole run, match one
process to float tolerance (dropout aside: its draws differ). Rank 0 alone prints, logs and
writes the run's files.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unmask.checkpoint import Checkpointer
from unmask.checkpoint.checkpointer import ModelState, OptimizerState, Stateful
from unmask.checkpoint.layout import load_model_description
from unmask.config import Config, ConfigError
from unmask.data import batch_iterator
from unmask.data.streaming import StreamingBlocks, stream_batches
from unmask.distributed.parallelize import gradient_sync, is_sharded, parallelize
from unmask.distributed.process import Parallel, setup
from unmask.errors import UserError
from unmask.evaluate.likelihood import evaluate_dataset
from unmask.interop.pretrained import adapt_pretrained
from unmask.kinds import get_kind
from unmask.models import DiT, DiTConfig, build_model, describe
from unmask.runtime import autocast, derive_seed, resolve_precision, seeded_generator
from unmask.sizes import check_fits, summary, training_bytes
from unmask.train.metrics import MetricsLogger, NoLogger, Progress
from unmask.train.optim import EMA, build_optimizer, lr_factor
from unmask.train.run_dir import RunLock, open_datasets, prepare_tokenizer, start_or_resume
from unmask.train.signals import Stopped, stop_signals
from unmask.validation import validate


class TrainingDiverged(UserError):
    """The loss became nan or infinite: the step is named, the checkpoints written before it are kept."""


@dataclass
class TrainState:
    """The trainer's own part of a checkpoint: the training time of every session up to the step (what a
    time budget counts, e.g. ``unmask study``'s)."""

    train_seconds: float = 0.0

    def state_dict(self) -> dict[str, float]:
        return {"train_seconds": round(self.train_seconds, 3)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.train_seconds = float(state.get("train_seconds", 0.0))


class StreamState:
    """Where every process's stream of a streamed corpus stands after the last completed step."""

    def __init__(self, stream: StreamingBlocks, parallel: Parallel) -> None:
        self.stream, self.parallel = stream, parallel
        self.position: dict | None = None  # set once training draws batches

    def state_dict(self) -> dict[str, list]:
        return {"stream": self.parallel.gather_objects(self.position or self.stream.state_dict())}

    def load_state_dict(self, state: dict[str, list]) -> None:
        states = state.get("stream")
        if not isinstance(states, list) or len(states) != self.parallel.world_size:
            saved = len(states) if isinstance(states, list) else "an unknown number of"
            raise ConfigError(f"--resume: this streaming run was saved by {saved} processes and resumes only "
                              f"with as many (now {self.parallel.world_size})")
        self.stream.load_state_dict(states[self.parallel.rank])


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    tokens_per_s: float
    validation: dict = field(default_factory=dict)
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that stopped it (SIGTERM, ...), None for Ctrl-C or no stop


class Trainer:
    """One training run in ``run_dir``. ``Trainer(config, run_dir).run()`` trains to the end.

    ``resume`` continues from the latest checkpoint (or ``step``); the configuration must be the
    saved one up to the keys that do not change the optimisation (see
    :func:`unmask.train.run_dir.resume_config`).
    """

    def __init__(self, config: Config, run_dir: str | Path, *, resume: bool = False, step: int | None = None,
                 progress: bool = True, trust_remote_code: bool = False) -> None:
        validate(config)
        if not str(run_dir).strip():  # Path("") is the current folder: a run would scatter its files there
            raise ConfigError("the run directory is empty; give a folder name (--out)")
        self.config = config
        self.run_dir = Path(run_dir)
        self.parallel = setup(config.train.device)  # one process, or this one's place in a torchrun job
        self.progress = progress and self.parallel.is_main
        self.device = self.parallel.device
        self.precision = resolve_precision(config.train.precision, self.device)
        self.trust_remote_code = trust_remote_code  # a Hugging Face tokenizer's own code (data.tokenizer)
        micro_batches = config.train.global_batch // config.train.micro_batch
        if micro_batches % self.parallel.world_size:
            raise ConfigError(
                f"train.global_batch / train.micro_batch = {micro_batches} micro-batches do not split evenly "
                f"over {self.parallel.world_size} processes; change train.micro_batch or the number of processes"
            )
        # Rank 0 claims the run directory and creates the tokenizer and the token caches; the others reuse them.
        self.lock = self.parallel.main_only(lambda: RunLock(self.run_dir))
        try:
            self._build(resume, step)
        except BaseException:
            self.close()
            raise

    def _build(self, resume: bool, step: int | None) -> None:
        config, parallel = self.config, self.parallel
        start = parallel.main_first(lambda: start_or_resume(self.run_dir, config, resume=resume, step=step,
                                                             write=parallel.is_main))
        self.tokenizer = parallel.main_first(lambda: prepare_tokenizer(config, self.run_dir,
                                                                       trust_remote_code=self.trust_remote_code))
        self.mask_id = self.tokenizer.mask_id
        if config.adapt.init is None:  # an adapted model's size is its source's
            self._check_size(config.model_config(self.tokenizer.vocab_size))  # before the corpus and the model
        self.train_set, self.valid_set = parallel.main_first(lambda: open_datasets(config, self.tokenizer, parallel))

        self.kind = get_kind(config.objective.name)
        torch.manual_seed(config.train.seed)
        self.model = self._new_model(start).to(self.device)
        self.init_model()
        # A model whose training changes with the step (attention-mask annealing: unmask.models.causal_lm).
        self.set_training_step = getattr(self.model, "set_training_step", None)
        # What the loop calls: DDP's wrapper, or the model itself (maybe sharded, compiled, checkpointed).
        self.forward = parallelize(self.model, parallel, config.parallel, precision=self.precision,
                                   compile=config.train.compile)
        self.optimizer = build_optimizer(self.model, config.optim, self.device)
        self.ema = EMA(self.model, config.optim.ema) if config.optim.ema > 0 else None
        self.checkpointer = Checkpointer(self.run_dir, parallel, config=config, model=describe(self.model),
                                         tokenizer=self.tokenizer, keep=config.train.keep_checkpoints)
        self.step = 0
        self.state = TrainState()
        self.stream = StreamState(self.train_set, parallel) if isinstance(self.train_set, StreamingBlocks) else None
        if start is not None:
            self.step = self.checkpointer.restore(start, self.parts())["step"]
        elif parallel.is_distributed:
            torch.manual_seed(derive_seed(config.train.seed, "dropout", 0, parallel.rank))

    def init_model(self) -> None:
        """Called once the model is built (at its initialisation) and before anything is made of its weights:
        a subclass that starts from other weights (distillation) loads them here."""

    def batch_losses(self, part: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """The training loss per sequence of one micro-batch: the kind's loss at this step."""
        return self.kind.losses(self.forward, part, self.config.objective, self.mask_id, generator=generator,
                                step=self.step)[0]

    def _new_model(self, start: Path | None) -> torch.nn.Module:
        """The model to train: the checkpoint's when resuming (an adapted model needs no file of its origin
        then), the pretrained ``adapt.init`` adapted, or a DiT from random weights."""
        vocab_size = self.tokenizer.vocab_size
        if start is not None:
            return build_model(load_model_description(start, self.config, vocab_size))
        if self.config.adapt.init is not None:
            return adapt_pretrained(self.config.adapt, self.tokenizer, self.config.data.length)
        return DiT(self.config.model_config(vocab_size))

    def _check_size(self, model_config: DiTConfig) -> None:
        """Refuse a model and micro-batch this process's device cannot hold (processes on one CPU share it)."""
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.device.type == "cpu" else 1
        needed = training_bytes(model_config, self.config.train.micro_batch, element=2 if self.precision == "bf16"
                                else 4, ema=self.config.optim.ema > 0)
        check_fits(needed, self.device, f"training {summary(model_config)} on micro-batches of "
                   f"{self.config.train.micro_batch}", "lower model.n_layers, model.hidden, data.length or "
                   "train.micro_batch (train.global_batch is kept by accumulation)", processes=sharing)

    def close(self) -> None:
        """Release the run directory, removing what this session added if it saved no checkpoint there."""
        if self.lock is not None:
            self.lock.release(discard=True)

    def parts(self) -> dict[str, Stateful]:
        """The run's state, part by part, as the checkpointer saves and restores it."""
        parts: dict[str, Stateful] = {"model": ModelState(self.model),
                                      "optimizer": OptimizerState(self.model, self.optimizer), "train": self.state}
        if self.ema is not None:
            parts["ema"] = self.ema
        if self.stream is not None:
            parts["data"] = self.stream
        return parts

    @property
    def train_seconds(self) -> float:
        """Training time of the run up to ``step``, over every session."""
        return self.state.train_seconds

    @property
    def accumulation(self) -> int:
        """Micro-batches per process and step."""
        return self.config.train.global_batch // self.config.train.micro_batch // self.parallel.world_size

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimizer step on a global batch: accumulate, clip, AdamW, EMA. Returns the loss per token."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(self.step, cfg.optim, cfg.train.max_steps)
        if self.set_training_step is not None:
            self.set_training_step(self.step)
        micro = cfg.train.micro_batch
        total_tokens = self.parallel.reduce_sum(batch["loss_mask"].sum()).clamp_min(1)  # of the global batch
        first = self.parallel.rank * self.accumulation  # index of this process's first micro-batch in the step
        loss_sum = torch.zeros((), device=self.device)
        for i in range(self.accumulation):
            part = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
            generator = seeded_generator(self.device, cfg.train.seed, "noise", self.step, first + i)
            with gradient_sync(self.forward, i == self.accumulation - 1):
                with autocast(self.precision, self.device):
                    losses = self.batch_losses(part, generator)
                # Sum over the micro-batch / tokens of the whole batch: the accumulated gradient is that
                # of the mean loss per token, whatever the split into micro-batches and processes.
                loss = losses.sum() / total_tokens
                self.parallel.scale_loss(loss).backward()
            loss_sum += loss.detach()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return float(self.parallel.reduce_sum(loss_sum))

    def validate(self) -> dict[str, float]:
        """Validation NELBO (or AR NLL) per token with the EMA weights, on a fixed set of batches."""
        with self._ema_weights() as model:
            model.eval()
            result = evaluate_dataset(
                model, self.valid_set, self.config.objective, self.mask_id,
                batch_size=self.config.train.micro_batch, max_batches=self.config.train.eval_batches,
                seed=self.config.train.seed, device=self.device, precision=self.precision, parallel=self.parallel,
            )
        self.model.train()
        return {"val_nelbo": result.nelbo_per_token, "val_ppl": result.perplexity, "val_stderr": result.stderr}

    @contextlib.contextmanager
    def _ema_weights(self) -> Iterator[torch.nn.Module]:
        """The model with the EMA weights: a copy, or for a sharded model its own, swapped in and back."""
        if self.ema is None:
            yield self.model
        elif not is_sharded(self.model):
            model = copy.deepcopy(self.model)
            self.ema.copy_to(model)
            yield model
        else:
            trained = {name: p.detach().clone() for name, p in self.model.named_parameters()}
            self.ema.copy_to(self.model)
            try:
                yield self.model
            finally:
                self.model.reshard()  # FSDP keeps the root's parameters gathered after a forward pass
                with torch.no_grad():
                    for name, p in self.model.named_parameters():
                        p.copy_(trained[name])

    def save(self, extra: dict | None = None) -> Path:
        """Checkpoint ``self.step`` (every part of :meth:`parts`); its state.json also records ``extra``."""
        return self.checkpointer.save(self.step, self.parts(), extra)

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg, world = self.config.train, self.parallel.world_size  # each process reads its slice of every batch
        if self.stream is not None:
            self.stream.position = self.train_set.state_dict()
            return stream_batches(self.train_set, cfg.global_batch // world)
        return batch_iterator(self.train_set, batch_size=cfg.global_batch // world, seed=cfg.seed,
                              start_step=self.step, rank=self.parallel.rank, world_size=world)

    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train until ``train.max_steps`` (or ``max_steps``) or ``train.max_minutes``; save and validate at the end."""
        try:
            return self._run(max_steps)
        finally:
            self.close()

    def _run(self, max_steps: int | None) -> TrainResult:
        cfg = self.config.train
        end = min(cfg.max_steps, max_steps) if max_steps is not None else cfg.max_steps
        main = self.parallel.is_main
        logger = (MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                                config=self.config.to_dict(), step=self.step) if main else NoLogger())
        figure = "ppl" if self.kind.exact else "ppl bound"
        tokens_per_step = cfg.global_batch * self.config.data.length
        progress = Progress(self.step, end, cfg.max_minutes, enabled=self.progress)
        started, trained_steps, validation = time.perf_counter(), 0, {}
        seconds_before = self.train_seconds
        checkpoint, interrupted, stop_signal = None, False, None
        batches = self._batches()
        self.model.train()
        try:
            while self.step < end:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
                loss = self.train_step(batch)
                if self.stream is not None:
                    # The stream moves when a batch is drawn, the step when it is trained on: a save (an
                    # interrupt included) takes the position that goes with the last completed step.
                    self.stream.position = self.train_set.state_dict()
                trained_steps += 1
                elapsed = time.perf_counter() - started
                self.state.train_seconds = seconds_before + elapsed
                tokens_per_s = trained_steps * tokens_per_step / max(elapsed, 1e-9)
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"training diverged: the loss became {loss} at step {self.step}; lower "
                                           "optim.lr or raise optim.warmup_steps and train into a new --out (the "
                                           "checkpoints saved before it are kept)")
                progress.update(self.step, elapsed, loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                if self.step % cfg.log_every == 0 or self.step == end:
                    logger.log(self.step, {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                                           "tokens_per_s": tokens_per_s})
                out_of_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
                if cfg.max_minutes is not None:
                    out_of_time = self.parallel.any(out_of_time)  # every process stops at the same step
                if self.step % cfg.eval_every == 0 or self.step == end or out_of_time:
                    validation = self.validate()
                    logger.log(self.step, validation)
                    if main:
                        progress.write(f"step {self.step}: validation {validation['val_nelbo']:.4f} nats/token "
                                       f"({figure} {validation['val_ppl']:.2f})")
                if self.step % cfg.save_every == 0 or self.step == end or out_of_time:
                    checkpoint = self.save({"tokens_per_s": tokens_per_s, **validation})
                if out_of_time:
                    break
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM and the like (unmask.train.signals)
            interrupted = True
            stop_signal = stop.signum if isinstance(stop, Stopped) else None
            # Several processes may stop at different points; they resume from the last checkpoint.
            if self.step > 0 and not self.parallel.is_distributed:
                checkpoint = self.save()
                progress.write(f"{stop.name if isinstance(stop, Stopped) else 'interrupted'}: saved step "
                               f"{self.step} to {checkpoint}")
        finally:
            progress.close()
            logger.close()
        elapsed = time.perf_counter() - started
        return TrainResult(run_dir=self.run_dir, step=self.step, checkpoint=checkpoint,
                           tokens_per_s=trained_steps * tokens_per_step / max(elapsed, 1e-9),
                           validation=validation, interrupted=interrupted, stop_signal=stop_signal)


def train(config: Config, run_dir: str | Path, *, resume: bool = False, step: int | None = None,
          max_steps: int | None = None, progress: bool = True, trust_remote_code: bool = False) -> TrainResult:
    """Train (or with ``resume`` continue) the run in ``run_dir``; see :class:`Trainer`. SIGTERM (and SIGUSR1,
    SIGHUP) stop it as Ctrl-C does, the step it reached saved (:mod:`unmask.train.signals`)."""
    with stop_signals():
        return Trainer(config, run_dir, resume=resume, step=step, progress=progress,
                       trust_remote_code=trust_remote_code).run(max_steps)
