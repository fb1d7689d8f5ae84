"""The ``adapt`` section of a run's configuration: starting from a pretrained causal LM
(:mod:`unmask.models.causal_lm`, ``unmask train --init MODEL``), and what such a run must satisfy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unmask.errors import ConfigError
from unmask.kinds import KINDS, get_kind
from unmask.models.dit import DiTConfig

if TYPE_CHECKING:
    from unmask.config import Config


@dataclass
class AdaptConfig:
    """Starting from a pretrained causal LM (:mod:`unmask.models.causal_lm`): ``unmask train --init MODEL``."""

    init: str | None = None  # the model: a hub name, a local folder or a .gguf file (None: a DiT from scratch)
    shift: bool = True  # read position i's logits from position i - 1's output (DiffuLLaMA, Dream)
    anneal_steps: int = 0  # attention-mask annealing from causal to the diffusion mask over this many steps
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank (peft) instead of every weight
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # the linear layers with adapters: "all-linear" or names, e.g. q_proj,v_proj


def validate_adapt(config: Config) -> None:
    """An adapted run (``adapt.init``) trains a kind that can start from a causal LM, on the model's own
    tokenizer, without the DiT's ``model`` section; the other ``adapt`` keys need ``adapt.init``."""
    adapt, defaults = config.adapt, AdaptConfig()
    if adapt.init is None:
        changed = [f.name for f in dataclasses.fields(AdaptConfig)
                   if getattr(adapt, f.name) != getattr(defaults, f.name)]
        if changed:
            raise ConfigError(f"adapt.{changed[0]} applies to a run that adapts a pretrained model: set adapt.init "
                              "(unmask train --init MODEL) or drop it")
        return
    if not get_kind(config.objective.name).adaptable:
        able = ", ".join(name for name, kind in KINDS.items() if kind.adaptable)
        raise ConfigError(f"adapt.init turns a causal LM into a masked diffusion model: objective.name must be one "
                          f"of {able}, got {config.objective.name}")
    if config.data.tokenizer != adapt.init:
        raise ConfigError(f"data.tokenizer must be the model's own when adapting {adapt.init}: set "
                          f"data.tokenizer={adapt.init} (unmask train --init sets both)")
    dit = DiTConfig()
    changed = [f.name for f in dataclasses.fields(DiTConfig)
               if "derived" not in f.metadata and getattr(config.model, f.name) != getattr(dit, f.name)]
    if changed:
        raise ConfigError(f"model.{changed[0]} shapes unmask's DiT, but an adapted model is {adapt.init} itself: "
                          "drop the model section (unmask train --init uses --preset adapt)")
    if adapt.lora_rank == 0 and (adapt.lora_alpha, adapt.lora_dropout, adapt.lora_targets) != (
            defaults.lora_alpha, defaults.lora_dropout, defaults.lora_targets):
        raise ConfigError("adapt.lora_alpha, lora_dropout and lora_targets shape LoRA adapters: set adapt.lora_rank "
                          "(e.g. 16) or drop them")
