"""Optional ``torch.compile`` of a denoiser that falls back to eager where no compiler works."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


class MaybeCompiled(nn.Module):
    """Runs ``torch.compile(model)``; on the first compiler failure, warns once and runs eagerly.

    Compilation happens at the first call (that is when a missing C compiler or an unsupported
    platform shows), so the fallback is decided there. The wrapped model keeps its parameters:
    optimizers and checkpoints use ``model`` itself.
    """

    def __init__(self, model: nn.Module, **compile_kwargs: object) -> None:
        super().__init__()
        self.model = model
        self.supports_positions = getattr(model, "supports_positions", False)
        self.supports_attention_mask = getattr(model, "supports_attention_mask", False)
        self.compiled = torch.compile(model, **compile_kwargs)
        self.failed = False

    def forward(self, x_t: Tensor, t: Tensor | None = None, **kwargs: Tensor) -> Tensor:
        if not self.failed:
            try:
                return self.compiled(x_t, t, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.failed = True
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running eagerly", stacklevel=2)
        return self.model(x_t, t, **kwargs)
