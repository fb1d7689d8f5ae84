"""Denoisers: the paper's DiT (bidirectional, or causal for the AR baseline) and its presets."""

from unmask.models.dit import MODEL_PRESETS, DiT, DiTConfig

__all__ = ["MODEL_PRESETS", "DiT", "DiTConfig"]
