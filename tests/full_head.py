"""Test scaffolding: a denoiser wrapped so that it computes every position (the plain path the fast one must match)."""

from __future__ import annotations

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, denoise


class FullHead(torch.nn.Module):
    """Wraps a denoiser so that it computes every position: no ``where`` capability."""

    supports_attention_mask = True

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_t: Tensor, t: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return denoise(self.denoiser, x_t, t, attention_mask=attention_mask)
