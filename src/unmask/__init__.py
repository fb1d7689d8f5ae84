"""unmask: masked diffusion language models (MDLM, Sahoo et al. 2024) in plain PyTorch.

The small public API; everything else is importable from its module.
"""

# First, before torch loads: OpenMP's spin count (see unmask/openmp.py).
import unmask.openmp  # noqa: F401
from unmask.denoiser import Denoiser, denoise
from unmask.models import DiT, DiTConfig
from unmask.objective import ar_loss, nelbo, nelbo_discrete, subs_log_probs
from unmask.pipeline import Pipeline, load
from unmask.sampling import SampleOutput, generate, sample
from unmask.schedules import Schedule, get_schedule

__version__ = "0.1.0"

__all__ = [
    "DiT",
    "DiTConfig",
    "Denoiser",
    "Pipeline",
    "SampleOutput",
    "Schedule",
    "ar_loss",
    "denoise",
    "generate",
    "get_schedule",
    "load",
    "nelbo",
    "nelbo_discrete",
    "sample",
    "subs_log_probs",
]
