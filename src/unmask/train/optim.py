"""The paper's optimisation recipe: AdamW, linear warmup then constant or cosine, EMA of weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from unmask.config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over all parameters; the fused kernel where this torch build has one for the device."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=device.type in ("cuda", "cpu"), **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def lr_factor(step: int, config: OptimConfig, max_steps: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup, then constant or cosine to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.decay == "cosine":
        progress = (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


class EMA:
    """Exponential moving average of the trained weights (decay 0.9999 in the paper), kept in float32.

    The decay is capped at (1 + n) / (10 + n) after n updates, so that a short run does not
    evaluate weights that are still mostly the initialisation; long runs reach the full decay.
    Frozen weights (a LoRA run's base model) never change and are not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        names, params = zip(*((name, p) for name, p in model.named_parameters() if name in self.shadow))
        shadows = [self.shadow[name] for name in names]
        torch._foreach_lerp_(shadows, [p.detach().float() for p in params], 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """The averaged weights by parameter name (the live tensors) and the number of updates."""
        return {**self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        for name, shadow in self.shadow.items():
            if state[name] is not shadow:  # the checkpointer fills the live tensors in place
                shadow.copy_(state[name])
        self.updates = int(state.get("updates", 0))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])
