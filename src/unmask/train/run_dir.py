"""A run's folder: claimed by one process at a time, started or resumed, with its tokenizer and data.

A run directory holds ``config.yaml``, ``tokenizer/``, ``metrics.jsonl``, ``tensorboard/`` and
``checkpoints/`` (see :mod:`unmask.checkpoint`). Only one training process (rank 0 of a job) writes
into it: :class:`RunLock` refuses a second one in one line naming the first. Resuming continues
the saved configuration (:func:`resume_config`); only the keys in ``RESUMABLE_CHANGES`` may differ.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from torch.utils.data import Dataset

from unmask.checkpoint import load_config, resolve_checkpoint
from unmask.checkpoint.layout import step_folders
from unmask.config import Config, ConfigError, apply_overrides
from unmask.data import (
    ChatExamples,
    TokenBlocks,
    Tokenizer,
    get_tokenizer,
    is_chat_source,
    iter_documents,
    load_tokenizer,
)
from unmask.data.streaming import BlockList, StreamingBlocks
from unmask.distributed.process import Parallel
from unmask.fileio import publish_folder, staging_folder
from unmask.kinds import KINDS, get_kind

logger = logging.getLogger(__name__)

# Fields that may change between a run and its resume: they do not change the optimisation.
RESUMABLE_CHANGES = {
    "train.max_steps", "train.max_minutes", "train.eval_every", "train.eval_batches", "train.save_every",
    "train.keep_checkpoints", "train.log_every", "train.device", "train.tensorboard", "train.wandb", "train.compile",
    "data.cache_dir", "parallel.strategy", "parallel.activation_checkpointing",
}
LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory for as long as one training process uses it.

    The lock file goes when the lock is released. A training session releases it with ``discard``: then
    everything it added to a run directory that still holds no checkpoint goes too (its config, tokenizer,
    metrics), so that a training that failed or was stopped before its first checkpoint leaves the folder as
    it found it, and a new start there does not pick up a tokenizer made for another config.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.made = run_dir, not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.before = {entry.name for entry in run_dir.iterdir()}
        self.path = run_dir / LOCK_FILE
        while True:
            self.file = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.seek(0)
                holder = self.file.read().strip() or "unknown"
                self.file.close()
                raise ConfigError(f"{run_dir} is in use by another unmask process (pid {holder}); wait for it to "
                                  "finish or choose another --out") from None
            # The holder removes the file as it releases: a lock taken on the removed file is no lock.
            if _same_file(self.file, self.path):
                break
            self.file.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self, *, discard: bool = False) -> None:
        """Release the lock; with ``discard``, first remove what this session added to a run without checkpoints."""
        if self.file.closed:
            return
        if discard and not has_run(self.run_dir):
            for entry in self.run_dir.iterdir():
                if entry.name not in self.before and entry.name != LOCK_FILE:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self.path.unlink(missing_ok=True)  # while the lock is held: see the loop in __init__
        self.file.close()  # closing releases the lock
        if discard and self.made and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()


def _same_file(file, path: Path) -> bool:
    try:
        return os.fstat(file.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def has_run(run_dir: Path) -> bool:
    return bool(step_folders(run_dir))


def config_differences(saved: Config, current: Config) -> list[str]:
    old, new = saved.to_dict(), current.to_dict()
    return [
        f"{section}.{key}: {old[section][key]!r} -> {new[section][key]!r}"
        for section in new
        for key in new[section]
        if old[section].get(key) != new[section][key] and f"{section}.{key}" not in RESUMABLE_CHANGES
    ]


def _refuse_changes(saved: Config, config: Config) -> None:
    changed = config_differences(saved, config)
    if changed:
        raise ConfigError(f"--resume with a changed config ({'; '.join(changed)}); start a new --out instead")


def resume_config(run_dir: str | Path, overrides: list[str], *, step: int | None = None) -> Config:
    """The saved configuration of the run in ``run_dir`` with ``key=value`` ``overrides`` applied.

    An override of a key outside ``RESUMABLE_CHANGES`` must give the saved value again: a
    different one would change the optimisation, and is refused.
    """
    run_dir = Path(run_dir)
    if not has_run(run_dir):
        raise ConfigError(f"--resume: {run_dir} holds no checkpoint to resume; drop --resume to start")
    saved = load_config(resolve_checkpoint(run_dir, step=step))
    config = apply_overrides(Config.from_dict(saved.to_dict()), overrides)
    _refuse_changes(saved, config)
    return config


def start_or_resume(run_dir: Path, config: Config, *, resume: bool, step: int | None, write: bool) -> Path | None:
    """Check that ``run_dir`` may be started (``resume`` False) or resumed; the checkpoint to resume from."""
    if not resume:
        if has_run(run_dir):
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        if write:
            run_dir.mkdir(parents=True, exist_ok=True)
            config.save(run_dir / "config.yaml")
        return None
    if not has_run(run_dir):
        raise ConfigError(f"--resume: {run_dir} holds no checkpoint to resume; drop --resume to start")
    checkpoint = resolve_checkpoint(run_dir, step=step)
    later = [f.name for f in step_folders(run_dir) if f.name > checkpoint.name]
    if step is not None and later:
        raise ConfigError(f"--step {step}: {run_dir} has later checkpoints ({', '.join(later)}) that resuming from "
                          f"step {step} would replace; copy the run first (cp -r {run_dir} NEW) and resume the copy")
    _refuse_changes(load_config(checkpoint), config)
    return checkpoint


def prepare_tokenizer(config: Config, run_dir: Path, *, trust_remote_code: bool = False) -> Tokenizer:
    """The run's tokenizer: saved in run_dir/tokenizer once, reloaded from there afterwards (unmask's own
    files: no code of a Hugging Face tokenizer runs again)."""
    folder = run_dir / "tokenizer"
    if folder.is_dir():
        return load_tokenizer(folder)
    spec = config.data.tokenizer
    corpus = iter_documents(config.data.source, "train", text_field=config.data.text_field) if spec == "bpe" else None
    if corpus is not None:
        logger.info("training a BPE tokenizer of %d ids on %s (once per run)", config.data.vocab_size,
                    config.data.source)
    tokenizer = get_tokenizer(spec, corpus=corpus, vocab_size=config.data.vocab_size,
                              trust_remote_code=trust_remote_code)
    with staging_folder(folder) as tmp:
        tokenizer.save(tmp)
        publish_folder(tmp, folder, replace=False)
    return tokenizer


def open_datasets(config: Config, tokenizer: Tokenizer, parallel: Parallel | None = None
                  ) -> tuple[TokenBlocks | StreamingBlocks | ChatExamples, Dataset]:
    """The training set (cached blocks, or with ``data.streaming`` this process's stream, or the examples of a
    chat file) and the validation set (the same for every process)."""
    d = config.data
    if is_chat_source(d.source, d.format):
        return _chat_datasets(config, tokenizer)
    common = dict(length=d.length, layout=d.layout, cache_dir=d.cache_dir, max_documents=d.max_documents,
                  text_field=d.text_field)
    if d.valid_source:
        valid = TokenBlocks(d.valid_source, tokenizer, split="all", **common)
    elif d.streaming:  # a fixed slice of the streamed validation split
        stream = StreamingBlocks(d.source, tokenizer, split="validation", length=d.length, layout=d.layout,
                                 text_field=d.text_field)
        valid = BlockList(stream, config.train.eval_batches * config.train.micro_batch)
    else:
        valid = TokenBlocks(d.source, tokenizer, split="validation", **common)
    if d.streaming:
        rank, world = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
        train = StreamingBlocks(d.source, tokenizer, split="train", length=d.length, layout=d.layout,
                                rank=rank, world_size=world, max_documents=d.max_documents, text_field=d.text_field)
    else:
        train = TokenBlocks(d.source, tokenizer, split="train", **common)
    return train, valid


def _chat_datasets(config: Config, tokenizer: Tokenizer) -> tuple[ChatExamples, ChatExamples]:
    """The training and validation conversations of a chat source (supervised fine-tuning)."""
    d = config.data
    kind = get_kind(config.objective.name)
    if not kind.prompted:
        able = ", ".join(name for name, other in KINDS.items() if other.prompted)
        raise ConfigError(f"{d.source} is a chat file (supervised fine-tuning), which objective.name={kind.name} "
                          f"does not train on; use one of {able}, or data.format=text")
    if d.streaming:
        raise ConfigError("a chat file is read whole: drop data.streaming")
    train = ChatExamples(d.source, tokenizer, split="train", length=d.length)
    valid_split = (d.valid_source, "all") if d.valid_source else (d.source, "validation")
    return train, ChatExamples(valid_split[0], tokenizer, split=valid_split[1], length=d.length)
