"""The floor every other module stands on: which device, which precision, which seed.

- :func:`resolve_device` turns "auto", "cpu", "cuda", "cuda:1" into a device, or says why not.
- :func:`resolve_precision` and :func:`autocast`: bf16 autocast where the hardware pays for it,
  float32 elsewhere. Softmax, losses and draws always run in float32/float64: the objective and
  the samplers cast logits up themselves, so autocast only speeds up the matrix products.
- :func:`derive_seed` and :func:`seeded_generator`: every random stream of a run (the noise of a
  training micro-batch, an evaluation batch, a process's dropout) is seeded from the run's seed
  and a few integers that say which stream it is, through one formula.
- :func:`device_name`: what a figure was measured on (the GPU's or the CPU's model name).
"""

from __future__ import annotations

import contextlib
import hashlib
import platform

import torch

from unmask.errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed takes


class DeviceError(UserError):
    """A device that does not exist or is not available here."""


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} GPUs")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX): bf16 matrix products then run
    4-10x faster than fp32; on older CPUs bf16 is emulated and slower, so fp32 stays the default."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check and check())
    except RuntimeError:
        return False


def device_name(device: torch.device | str = "cpu") -> str:
    """The model name of ``device``: the GPU's, or the CPU's from ``/proc/cpuinfo`` where the system
    has one (``platform`` only knows the architecture, e.g. "x86_64", on Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA and on CPUs with native bf16, else "fp32"."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()) else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A fresh autocast context for ``precision`` ("auto", "bf16" or "fp32") on ``device``."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def derive_seed(seed: int, purpose: str, *indices: int) -> int:
    """A 63-bit seed for the random stream ``purpose`` (e.g. "noise", "dropout", "eval") at ``indices``.

    Hashing keeps streams with nearby indices (steps, micro-batches, ranks) unrelated, and
    streams of different purposes apart even at equal indices.
    """
    key = "/".join([str(seed), purpose, *map(str, indices)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def seeded_generator(device: torch.device | str, seed: int, purpose: str, *indices: int) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`derive_seed`."""
    return torch.Generator(device).manual_seed(derive_seed(seed, purpose, *indices))
