"""Denoisers: the paper's DiT (bidirectional, or causal for the AR baseline)."""

from unmask.models.dit import DiT, DiTConfig

__all__ = ["DiT", "DiTConfig"]
