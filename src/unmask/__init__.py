"""unmask: masked diffusion language models (MDLM, Sahoo et al. 2024) in plain PyTorch.

The small public API, what the README's Python examples use; everything else is importable from its
module. Names are imported on first use, so ``import unmask`` (and ``unmask --help``) stays light:
torch, the interop readers, the server and the study load only when something needs them.
"""

import importlib

# First, before torch loads: OpenMP's spin count (see unmask/openmp.py).
import unmask.openmp  # noqa: F401

__version__ = "0.1.0"

# Each public name and the module that defines it.
_EXPORTS = {
    "DiT": "unmask.models",
    "DiTConfig": "unmask.models",
    "Denoiser": "unmask.denoiser",
    "denoise": "unmask.denoiser",
    "KINDS": "unmask.kinds",
    "get_kind": "unmask.kinds",
    "ar_loss": "unmask.bounds.ar",
    "nelbo": "unmask.bounds.mdlm",
    "nelbo_discrete": "unmask.bounds.mdlm",
    "subs_log_probs": "unmask.bounds.nll",
    "Schedule": "unmask.schedules",
    "get_schedule": "unmask.schedules",
    "Pipeline": "unmask.pipeline",
    "load": "unmask.pipeline",
    "Process": "unmask.sampling",
    "SampleOutput": "unmask.sampling",
    "SamplerConfig": "unmask.sampling",
    "DrawConfig": "unmask.sampling",
    "Remasking": "unmask.sampling",
    "generate": "unmask.sampling",
    "sample": "unmask.sampling",
    "generate_text": "unmask.generation",
    "EvalConfig": "unmask.evaluate",
    "evaluate_checkpoint": "unmask.evaluate",
    "conditional_nelbo": "unmask.evaluate.conditional",
    "UnmaskLM": "unmask.evaluate.harness",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unmask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access finds it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
