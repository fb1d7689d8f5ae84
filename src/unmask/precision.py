"""Mixed precision: bf16 autocast where the hardware pays for it, float32 everywhere else.

Softmax, losses and draws always run in float32/float64: the objective and the samplers cast
logits up themselves, so autocast only speeds up the matrix products.
"""

from __future__ import annotations

import contextlib

import torch


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX): bf16 matrix products then run
    4-10x faster than fp32; on older CPUs bf16 is emulated and slower, so fp32 stays the default."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check and check())
    except RuntimeError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA and on CPUs with native bf16, else "fp32"."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()) else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A fresh autocast context for ``precision`` ("bf16" or "fp32") on ``device``."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
