"""How much memory a model or a batch will take, estimated from its configuration before anything is built.

A configuration from anywhere (a preset, a checkpoint's files, a command's options, a request) can ask for
more than the machine has: ``n_layers: 100000``, ``model.hidden=100000000``, 10^8 samples. Built first, it
ends in an allocation error after minutes, or in the kernel's out-of-memory killer, which takes other
processes with it. So every place that builds a model or a batch from what a user gave estimates it first
(:func:`check_fits`) and refuses, in one line with the estimate and what the device has free, what cannot
fit. The estimates count the large tensors only (weights, optimizer state, activations, logits, the
sampler's state), so they are lower bounds: what is refused could not have fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from unmask.errors import OptionError
from unmask.models import DiTConfig

TIME_FEATURES = 256  # the sinusoidal time features the DiT's time embedding starts from
# Bytes per parameter while training: fp32 weights, their gradient, AdamW's two moments; the EMA's copy apart.
TRAINING_BYTES = 4 + 4 + 8
EMA_BYTES = 4
# Bytes per position of a sampling run's state: the tokens (int64), their confidence (float64), a uniform draw
# (float64) and a few boolean masks.
SAMPLER_STATE_BYTES = 8 + 8 + 8 + 4


class SizeError(OptionError):
    """A model or batch larger than the memory this device has free; the message has the estimate and the fix."""


def parameter_count(config: DiTConfig) -> int:
    """The parameters of ``DiT(config)``, counted from its shapes (nothing is built)."""
    d, c, ratio, vocab = config.hidden, config.cond_dim, config.mlp_ratio, config.vocab_size or 0
    block = 2 * d + 3 * d * d + d * d + (d * ratio * d + ratio * d) + (ratio * d * d + d) + (c * 6 * d + 6 * d)
    time_embedding = TIME_FEATURES * c + c + c * c + c
    return vocab * d + time_embedding + config.n_layers * block + d + (c * 2 * d + 2 * d) + (d * vocab + vocab)


def model_bytes(config: DiTConfig) -> int:
    """The memory of ``DiT(config)`` in float32: its weights and its rotary tables (one row per position)."""
    head_half = config.hidden // config.n_heads // 2
    return 4 * parameter_count(config) + 2 * 4 * config.length * head_half


def activation_bytes(config: DiTConfig, rows: int, length: int, *, element: int, outputs: int | None = None,
                     training: bool = False) -> int:
    """The activations of one forward pass over ``rows`` x ``length`` tokens in ``element``-byte floats: the
    widest few hidden states alive at once (every block's saved ones when ``training``), and the logits of
    ``outputs`` positions (default: every one) with the float32/float64 copies the loss or the draw makes."""
    tokens = rows * length
    per_token = (6 + 2 * config.mlp_ratio) * config.hidden
    hidden = tokens * per_token * element * (config.n_layers if training else 1)
    scored = tokens if outputs is None else outputs
    return hidden + scored * (config.vocab_size or 0) * (element + (8 if training else 16))


def training_bytes(config: DiTConfig, micro_batch: int, *, element: int, ema: bool) -> int:
    """One training process: the model, its gradient, AdamW's state (and the EMA), and a micro-batch's pass."""
    state = parameter_count(config) * (TRAINING_BYTES + (EMA_BYTES if ema else 0))
    return model_bytes(config) + state + activation_bytes(config, micro_batch, config.length, element=element,
                                                          training=True)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this process on ``device`` (None where it cannot be told): a GPU's free memory, or the
    machine's available memory within this container's limit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = _meminfo_available()
    limit = _cgroup_room()
    return min(x for x in (free, limit) if x is not None) if free is not None or limit is not None else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit (a container's) still leaves, None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def gib(size: int) -> str:
    """A size in GiB for messages (MiB below one GiB)."""
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.0f} MiB"


def check_fits(needed: int, device: torch.device, what: str, fix: str, *, processes: int = 1,
               options: tuple[str, ...] = ()) -> None:
    """Refuse ``what`` (its estimate ``needed`` per process, ``processes`` of them sharing the device) when it is
    more than ``device`` has free; ``fix`` says what to make smaller, naming ``options`` as ``{0}``, ``{1}``, ...
    (each front end in its own words: :class:`unmask.errors.OptionError`)."""
    free = available_bytes(device)
    if free is not None and needed * processes > free:
        each = f" in each of {processes} processes" if processes > 1 else ""
        raise SizeError(f"{what} needs at least {gib(needed)}{each}, more than the {gib(free)} free on "
                        f"{device.type}; {fix}", *options)


def summary(config: DiTConfig) -> str:
    """The model's shape and parameter count, for messages."""
    return (f"a {config.n_layers} x {config.hidden} model ({parameter_count(config):,} parameters, vocabulary "
            f"{config.vocab_size:,}, length {config.length:,})")
