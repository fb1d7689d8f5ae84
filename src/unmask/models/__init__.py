"""Denoisers by architecture name: the paper's DiT (bidirectional, or causal for the AR baseline), and a
pretrained Hugging Face causal LM adapted into a diffusion LM (``causal_lm``).

A model describes itself (:func:`describe`: its architecture and whole configuration, what a checkpoint's
``model.json`` holds) and is built back from that description (:func:`build_model`): no size is ever guessed
from a run's config or the weights' shapes. A new architecture is one entry of ``ARCHITECTURES``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from unmask.models.causal_lm import CausalLM, CausalLMConfig
from unmask.models.dit import DiT, DiTConfig

# Architecture name -> (model class, its configuration dataclass).
ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {"dit": (DiT, DiTConfig),
                                                          "causal_lm": (CausalLM, CausalLMConfig)}
DEFAULT_ARCHITECTURE = "dit"


def describe(model: nn.Module) -> dict[str, Any]:
    """The model's architecture and its whole configuration, as JSON data."""
    name = next((name for name, (cls, _) in ARCHITECTURES.items() if isinstance(model, cls)), None)
    if name is None:
        known = ", ".join(ARCHITECTURES)
        raise TypeError(f"{type(model).__name__} is not an architecture unmask saves (one of {known})")
    return {"architecture": name, **dataclasses.asdict(model.config)}


def model_config(description: dict[str, Any]) -> Any:
    """The configuration dataclass a description holds (ValueError for an unknown architecture or field)."""
    fields = dict(description)
    name = fields.pop("architecture", DEFAULT_ARCHITECTURE)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; unmask builds {', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[name][1](**fields)
    except TypeError as err:
        raise ValueError(f"not a {name} configuration ({err})") from None


def build_model(description: dict[str, Any]) -> nn.Module:
    """The model a description (:func:`describe`) stands for, freshly initialised."""
    config = model_config(description)
    return ARCHITECTURES[description.get("architecture", DEFAULT_ARCHITECTURE)][0](config)


__all__ = ["ARCHITECTURES", "CausalLM", "CausalLMConfig", "DiT", "DiTConfig", "build_model", "describe", "model_config"]
