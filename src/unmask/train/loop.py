"""The training loop: batches -> objective -> AdamW -> EMA, with validation, logging, checkpoints.

Everything random is derived from (seed, step): the batch of step k comes from
``batch_iterator(seed, start_step=k)``, the times and masks of step k from a generator seeded
with (seed, step, micro-batch), and dropout from the global RNG, whose state every checkpoint
saves. So a run interrupted at any checkpoint and resumed ends with the same weights as one
that never stopped.

Under torchrun the same loop runs in every process; :class:`unmask.distributed.Parallel` adds the
few collective steps. The global batch stays ``train.global_batch``, cut into the same
micro-batches of ``train.micro_batch`` whatever the number of processes: rank r takes a
contiguous run of them, seeds each one's noise from its index in the global batch, and
normalises by the token count of the whole global batch, so that the summed gradients, and with
them the whole run, match one process to float tolerance (dropout aside: its draws differ).
Rank 0 alone prints, logs and writes the run's files; checkpoints are sharded
(:mod:`unmask.checkpoint_dist`) and resume with any number of processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from unmask.checkpoint import (
    is_sharded,
    load_config,
    load_training_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from unmask.checkpoint_dist import dropout_seed, restore, save_sharded
from unmask.config import Config, ConfigError, validate
from unmask.data import TokenBlocks, Tokenizer, batch_iterator, get_tokenizer, iter_documents
from unmask.data import load_tokenizer as load_saved_tokenizer
from unmask.data.streaming import BlockList, StreamingBlocks, stream_batches
from unmask.distributed import Parallel, setup
from unmask.evaluate.likelihood import evaluate_dataset
from unmask.losses import sequence_losses
from unmask.models.compiled import MaybeCompiled
from unmask.pipeline import build_model
from unmask.precision import autocast, resolve_precision
from unmask.train.logging import MetricsLogger
from unmask.train.optim import EMA, build_optimizer, lr_factor

# Fields that may change between a run and its resume: they do not change the optimisation.
RESUMABLE_CHANGES = {
    "train.max_steps", "train.max_minutes", "train.eval_every", "train.eval_batches", "train.save_every",
    "train.keep_checkpoints", "train.log_every", "train.device", "train.tensorboard", "train.wandb", "train.compile",
    "data.cache_dir", "parallel.strategy", "parallel.activation_checkpointing",
}


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    tokens_per_s: float
    validation: dict = field(default_factory=dict)
    interrupted: bool = False


def config_differences(saved: Config, current: Config) -> list[str]:
    old, new = saved.to_dict(), current.to_dict()
    return [
        f"{section}.{key}: {old[section][key]!r} -> {new[section][key]!r}"
        for section in new
        for key in new[section]
        if old[section].get(key) != new[section][key] and f"{section}.{key}" not in RESUMABLE_CHANGES
    ]


def prepare_tokenizer(config: Config, run_dir: Path) -> Tokenizer:
    """The run's tokenizer: saved in run_dir/tokenizer once, reloaded from there afterwards."""
    folder = run_dir / "tokenizer"
    if folder.is_dir():
        return load_saved_tokenizer(folder)
    spec = config.data.tokenizer
    corpus = iter_documents(config.data.source, "train") if spec == "bpe" else None
    tokenizer = get_tokenizer(spec, corpus=corpus, vocab_size=config.data.vocab_size)
    tmp = run_dir / ".tokenizer.tmp"
    tokenizer.save(tmp)
    tmp.rename(folder)
    return tokenizer


def open_datasets(config: Config, tokenizer: Tokenizer, parallel: Parallel | None = None
                  ) -> tuple[TokenBlocks | StreamingBlocks, Dataset]:
    """The training set (cached blocks, or with ``data.streaming`` this process's stream) and the
    validation set (the same for every process)."""
    d = config.data
    common = dict(length=d.length, layout=d.layout, cache_dir=d.cache_dir, max_documents=d.max_documents)
    if d.valid_source:
        valid = TokenBlocks(d.valid_source, tokenizer, split="all", **common)
    elif d.streaming:  # a fixed slice of the streamed validation split
        stream = StreamingBlocks(d.source, tokenizer, split="validation", length=d.length, layout=d.layout)
        valid = BlockList(stream, config.train.eval_batches * config.train.micro_batch)
    else:
        valid = TokenBlocks(d.source, tokenizer, split="validation", **common)
    if d.streaming:
        rank, world = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
        train = StreamingBlocks(d.source, tokenizer, split="train", length=d.length, layout=d.layout,
                                rank=rank, world_size=world, max_documents=d.max_documents)
    else:
        train = TokenBlocks(d.source, tokenizer, split="train", **common)
    return train, valid


def _step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) % (2**63))


class _NoLogger:
    """The metrics sink of ranks other than 0."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """One training run in ``run_dir``. ``Trainer(config, run_dir).run()`` trains to the end."""

    def __init__(self, config: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> None:
        validate(config)
        self.config = config
        self.run_dir = Path(run_dir)
        self.parallel = setup(config.train.device)  # one process, or this one's place in a torchrun job
        self.progress = progress and self.parallel.is_main
        self.device = self.parallel.device
        self.precision = resolve_precision(config.train.precision, self.device)
        micro_batches = config.train.global_batch // config.train.micro_batch
        if micro_batches % self.parallel.world_size:
            raise ConfigError(
                f"train.global_batch / train.micro_batch = {micro_batches} micro-batches do not split evenly "
                f"over {self.parallel.world_size} processes; change train.micro_batch or the number of processes"
            )
        # Rank 0 creates the run directory, the tokenizer and the token caches; the others reuse them.
        start = self.parallel.main_first(lambda: self._prepare_run_dir(resume, write=self.parallel.is_main))
        self.tokenizer = self.parallel.main_first(lambda: prepare_tokenizer(config, self.run_dir))
        self.mask_id = self.tokenizer.mask_id
        self.train_set, self.valid_set = self.parallel.main_first(
            lambda: open_datasets(config, self.tokenizer, self.parallel)
        )

        torch.manual_seed(config.train.seed)
        self.model = build_model(config, self.tokenizer.vocab_size).to(self.device)
        forward = self.parallel.wrap(self.model, config.parallel, self.precision)  # the model itself for one process
        self.optimizer = build_optimizer(self.model, config.optim, self.device)
        self.ema = EMA(self.model, config.optim.ema) if config.optim.ema > 0 else None
        self.step = 0
        self._stream_position: dict | None = None  # with data.streaming: the stream's place after self.step
        if start is not None:
            self._restore(start)
        elif self.parallel.is_distributed:
            torch.manual_seed(dropout_seed(config.train.seed, 0, self.parallel.rank))
        self.forward = MaybeCompiled(forward, dynamic=True) if config.train.compile else forward

    def _prepare_run_dir(self, resume: bool, write: bool = True) -> Path | None:
        has_run = (self.run_dir / "checkpoints").is_dir() and any((self.run_dir / "checkpoints").glob("step_*"))
        if not resume:
            if has_run:
                raise ConfigError(
                    f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
                )
            if write:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.config.save(self.run_dir / "config.yaml")
            return None
        if not has_run:
            raise ConfigError(f"--resume: {self.run_dir} holds no checkpoint to resume; drop --resume to start")
        checkpoint = resolve_checkpoint(self.run_dir)
        changed = config_differences(load_config(checkpoint), self.config)
        if changed:
            raise ConfigError(f"--resume with a changed config ({'; '.join(changed)}); start a new --out instead")
        return checkpoint

    def _restore(self, checkpoint: Path) -> None:
        if self.config.data.streaming:
            self._restore_stream(checkpoint)
        if self.parallel.is_distributed or is_sharded(checkpoint):  # resharded to this number of processes
            self.step = restore(checkpoint, model=self.model, optimizer=self.optimizer, ema=self.ema,
                                parallel=self.parallel, seed=self.config.train.seed)
            return
        state = load_training_state(checkpoint)
        load_weights(self.model, state.model, checkpoint / "model.safetensors")
        self.optimizer.load_state_dict(state.optimizer)
        if self.ema is not None and state.ema is not None:
            self.ema.load_state_dict(state.ema, state.ema_updates)
        self.step = state.step

    def _restore_stream(self, checkpoint: Path) -> None:
        """Put this process's stream where the checkpoint left it."""
        states = json.loads((checkpoint / "state.json").read_text()).get("stream")
        if not isinstance(states, list) or len(states) != self.parallel.world_size:
            saved = len(states) if isinstance(states, list) else "an unknown number of"
            raise ConfigError(f"--resume: this streaming run was saved by {saved} processes and resumes only "
                              f"with as many (now {self.parallel.world_size})")
        self.train_set.load_state_dict(states[self.parallel.rank])

    @property
    def accumulation(self) -> int:
        """Micro-batches per process and step."""
        return self.config.train.global_batch // self.config.train.micro_batch // self.parallel.world_size

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimizer step on a global batch: accumulate, clip, AdamW, EMA. Returns the loss per token."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(self.step, cfg.optim, cfg.train.max_steps)
        micro = cfg.train.micro_batch
        total_tokens = self.parallel.reduce_sum(batch["loss_mask"].sum()).clamp_min(1)  # of the global batch
        first = self.parallel.rank * self.accumulation  # index of this process's first micro-batch in the step
        loss_sum = torch.zeros((), device=self.device)
        for i in range(self.accumulation):
            part = {k: v[i * micro : (i + 1) * micro] for k, v in batch.items()}
            generator = _step_generator(cfg.train.seed, self.step, first + i, self.device)
            with self.parallel.gradient_sync(i == self.accumulation - 1):
                with autocast(self.precision, self.device):
                    losses, _ = sequence_losses(self.forward, part, cfg.objective, self.mask_id, generator=generator)
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
        elif not self.parallel.sharded:
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
        if self.config.data.streaming:  # every process's stream position at self.step, for an exact resume
            position = self._stream_position or self.train_set.state_dict()
            extra = {**(extra or {}), "stream": self.parallel.gather_objects(position)}
        if self.parallel.is_distributed:
            return save_sharded(
                self.run_dir, step=self.step, model=self.model, optimizer=self.optimizer, ema=self.ema,
                config=self.config, tokenizer_dir=self.run_dir / "tokenizer", parallel=self.parallel, extra=extra,
                keep=self.config.train.keep_checkpoints,
            )
        return save_checkpoint(
            self.run_dir,
            step=self.step,
            model=self.model,
            ema=self.ema.state_dict() if self.ema is not None else None,
            ema_updates=self.ema.updates if self.ema is not None else 0,
            optimizer=self.optimizer,
            config=self.config,
            tokenizer_dir=self.run_dir / "tokenizer",
            extra=extra,
            keep=self.config.train.keep_checkpoints,
        )

    def run(self, max_steps: int | None = None) -> TrainResult:
        cfg = self.config.train
        end = min(cfg.max_steps, max_steps) if max_steps is not None else cfg.max_steps
        main = self.parallel.is_main
        logger = (MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                                config=self.config.to_dict()) if main else _NoLogger())
        world = self.parallel.world_size  # each process reads its own slice of every global batch
        if isinstance(self.train_set, StreamingBlocks):
            batches = stream_batches(self.train_set, cfg.global_batch // world)
            # The stream moves when a batch is drawn, the step when it is trained on: a save (an
            # interrupt included) takes the position that goes with the last completed step.
            self._stream_position = self.train_set.state_dict()
        else:
            batches = batch_iterator(self.train_set, batch_size=cfg.global_batch // world, seed=cfg.seed,
                                     start_step=self.step, rank=self.parallel.rank, world_size=world)
        tokens_per_step = cfg.global_batch * self.config.data.length
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        started, trained_steps, validation = time.perf_counter(), 0, {}
        checkpoint, interrupted = None, False
        self.model.train()
        try:
            while self.step < end:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
                loss = self.train_step(batch)
                if isinstance(self.train_set, StreamingBlocks):
                    self._stream_position = self.train_set.state_dict()
                trained_steps += 1
                elapsed = time.perf_counter() - started
                tokens_per_s = trained_steps * tokens_per_step / max(elapsed, 1e-9)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}; lower optim.lr")
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
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
                        bar.write(f"step {self.step}: validation {validation['val_nelbo']:.4f} nats/token "
                                  f"(ppl bound {validation['val_ppl']:.2f})")
                if self.step % cfg.save_every == 0 or self.step == end or out_of_time:
                    checkpoint = self.save({"tokens_per_s": tokens_per_s, **validation})
                if out_of_time:
                    break
        except KeyboardInterrupt:
            interrupted = True
            # Several processes may stop at different points; they resume from the last checkpoint.
            if self.step > 0 and not self.parallel.is_distributed:
                checkpoint = self.save()
                bar.write(f"interrupted: saved step {self.step} to {checkpoint}")
        finally:
            bar.close()
            logger.close()
        elapsed = time.perf_counter() - started
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            checkpoint=checkpoint,
            tokens_per_s=trained_steps * tokens_per_step / max(elapsed, 1e-9),
            validation=validation,
            interrupted=interrupted,
        )


def train(config: Config, run_dir: str | Path, *, resume: bool = False, max_steps: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train (or with ``resume`` continue) the run in ``run_dir``; see :class:`Trainer`."""
    return Trainer(config, run_dir, resume=resume, progress=progress).run(max_steps)
