"""Model kinds: one object per kind of model a run can train (``objective.name``), found in one registry.

Each kind is one module (:mod:`.mdlm`, :mod:`.ar`, :mod:`.sedd`, :mod:`.d3pm`, :mod:`.bd3lm`, :mod:`.duo`)
holding a
:class:`unmask.kinds.base.ModelKind`: its loss, how its logits read, which bounds are exact for it,
what it checks in a configuration and how it samples. A new kind is a new module added to ``KINDS``
below; nothing else in unmask compares kind names (``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unmask.denoiser import Denoiser
from unmask.errors import ConfigError
from unmask.kinds.ar import AR
from unmask.kinds.base import ModelKind
from unmask.kinds.bd3lm import BD3LM
from unmask.kinds.d3pm import D3PM
from unmask.kinds.duo import DUO
from unmask.kinds.mdlm import MDLM
from unmask.kinds.sedd import SEDD

if TYPE_CHECKING:
    from unmask.config import ObjectiveConfig

# The registry, in the order of the paper's tables.
KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (AR, MDLM, BD3LM, SEDD, D3PM, DUO)}


def get_kind(name: str) -> ModelKind:
    """The kind named ``name`` (an ``objective.name``); a ConfigError naming the closest one otherwise."""
    if name not in KINDS:
        close = difflib.get_close_matches(str(name), KINDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"objective.name must be one of {', '.join(KINDS)}; {hint}got {name!r}")
    return KINDS[name]


def sequence_losses(model: Denoiser, batch: dict[str, Tensor], objective: ObjectiveConfig, mask_id: int, *,
                    generator: torch.Generator | None = None, num_t: int = 1, discrete_steps: int | None = None,
                    step: int | None = None) -> tuple[Tensor, Tensor]:
    """(loss [B], scored tokens [B]) of a batch under ``objective``'s kind (:meth:`ModelKind.losses`)."""
    return get_kind(objective.name).losses(model, batch, objective, mask_id, generator=generator, num_t=num_t,
                                           discrete_steps=discrete_steps, step=step)


__all__ = ["KINDS", "ModelKind", "get_kind", "sequence_losses"]
