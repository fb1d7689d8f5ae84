"""Every run configuration is checked the same way wherever it comes from (a preset, overrides, a
checkpoint's config.yaml, a distillation): :func:`validate` refuses what cannot run, in one line naming the
fix. The kind of the run checks its own rules (:meth:`unmask.kinds.base.ModelKind.validate`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from unmask.adapt_config import validate_adapt
from unmask.config import Config, ObjectiveConfig, coerce
from unmask.data.chat import FORMATS as CHAT_FORMATS
from unmask.distill.losses import DIVERGENCES
from unmask.errors import ConfigError
from unmask.kinds import KINDS, get_kind
from unmask.models import ARCHITECTURES, DEFAULT_ARCHITECTURE
from unmask.models.block_attention import ATTENTIONS
from unmask.models.dit import GELUS, TIME_INPUTS, DiTConfig
from unmask.schedules import SCHEDULES

# Numeric keys and their ranges: (low, high or None, low excluded, high excluded).
RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    "model.n_layers": (1, None, False, False), "model.hidden": (1, None, False, False),
    "model.n_heads": (1, None, False, False), "model.cond_dim": (1, None, False, False),
    "model.mlp_ratio": (1, None, False, False), "model.dropout": (0.0, 1.0, False, True),
    "model.rope_base": (0.0, None, True, False),
    "data.vocab_size": (259, None, False, False), "data.length": (3, None, False, False),
    "data.max_documents": (1, None, False, False), "objective.discrete_steps": (0, None, False, False),
    "objective.block_size": (1, None, False, False),
    "objective.curriculum_start": (0, None, False, False), "objective.curriculum_end": (0, None, False, False),
    "objective.temperature_start": (0.0, None, True, False), "objective.temperature_end": (0.0, None, True, False),
    "optim.lr": (0.0, None, True, False),
    "optim.beta1": (0.0, 1.0, False, True), "optim.beta2": (0.0, 1.0, False, True),
    "optim.eps": (0.0, None, True, False), "optim.weight_decay": (0.0, None, False, False),
    "optim.warmup_steps": (0, None, False, False), "optim.grad_clip": (0.0, None, False, False),
    "optim.ema": (0.0, 1.0, False, True),
    "train.global_batch": (1, None, False, False), "train.micro_batch": (1, None, False, False),
    "train.max_steps": (1, None, False, False), "train.max_minutes": (0.0, None, True, False),
    "train.eval_every": (1, None, False, False), "train.eval_batches": (1, None, False, False),
    "train.save_every": (1, None, False, False), "train.keep_checkpoints": (1, None, False, False),
    "train.log_every": (1, None, False, False),
    "distill.steps_from": (2, None, False, False), "distill.round_steps": (1, None, False, False),
    "adapt.anneal_steps": (0, None, False, False), "adapt.lora_rank": (0, None, False, False),
    "adapt.lora_alpha": (0.0, None, True, False), "adapt.lora_dropout": (0.0, 1.0, False, True),
}


def validate(config: Config, *, training: bool = True) -> None:
    """Reject combinations that cannot run, with the fix in the message (a preset or a checkpoint's config
    as much as the command line's overrides). ``training`` False leaves out the rules for training (a
    checkpoint that is only used is checked for what reading and running it needs)."""
    choices = {
        "objective.name": (config.objective.name, tuple(KINDS)),
        "data.layout": (config.data.layout, ("wrapped", "padded")),
        "optim.decay": (config.optim.decay, ("constant", "cosine")),
        "train.precision": (config.train.precision, ("auto", "bf16", "fp32")),
        "parallel.strategy": (config.parallel.strategy, ("ddp", "fsdp")),
        "distill.divergence": (config.distill.divergence, DIVERGENCES),
        "data.format": (config.data.format, CHAT_FORMATS),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    _check_ranges({f"{section}.{name}": value for section, items in config.to_dict().items()
                   for name, value in items.items()})
    _check_model(config.model)
    if config.objective.schedule not in SCHEDULES:
        names = ", ".join(SCHEDULES)
        raise ConfigError(f"objective.schedule must be one of {names}, got {config.objective.schedule!r}")
    if config.data.streaming and config.data.tokenizer == "bpe":
        raise ConfigError(
            "data.streaming needs a fixed tokenizer (data.tokenizer=gpt2, bert-base-uncased, char or a folder): "
            "training a BPE on the corpus would need the corpus on disk"
        )
    if config.train.global_batch % config.train.micro_batch:
        raise ConfigError(
            f"train.global_batch ({config.train.global_batch}) must be a multiple of train.micro_batch "
            f"({config.train.micro_batch})"
        )
    _validate_kind_fields(config)
    validate_adapt(config)
    if training:
        get_kind(config.objective.name).validate(config)
        _validate_distillation(config)


def _check_ranges(values: dict[str, Any]) -> None:
    """Every dotted key of ``values`` that has a range (``RANGES``) within it, and every float finite."""
    for key, value in values.items():
        if key in RANGES and value is not None:
            low, high, low_open, high_open = RANGES[key]
            below = value <= low if low_open else value < low
            above = high is not None and (value >= high if high_open else value > high)
            if below or above or value != value:  # value != value: nan
                if high is None:
                    wanted = f"{'>' if low_open else '>='} {low}"
                else:
                    wanted = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                raise ConfigError(f"{key} must be {wanted}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # inf passes a range without an upper end
            raise ConfigError(f"{key} must be a finite number, got {value!r}")


def _check_model(model: DiTConfig) -> None:
    """The model section's choices and shapes (its ranges are checked with the rest)."""
    for key, value, allowed in (("model.gelu", model.gelu, GELUS), ("model.attention", model.attention, ATTENTIONS),
                                ("model.time_input", model.time_input, TIME_INPUTS)):
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if model.hidden % model.n_heads:
        raise ConfigError(f"model.hidden ({model.hidden}) must be divisible by model.n_heads")


def check_model_description(values: Any) -> dict[str, Any]:
    """A model's description (a checkpoint's ``model.json``: :func:`unmask.models.describe`), every field
    checked as a run's config is: a file edited by hand, or damaged, is refused in one line before any model
    is built. Returns the description with its values converted to their fields' types."""
    if not isinstance(values, dict):
        raise ConfigError("a model description must be a JSON object of its configuration's fields")
    fields = dict(values)
    architecture = fields.pop("architecture", DEFAULT_ARCHITECTURE)
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}; unmask builds {', '.join(ARCHITECTURES)}")
    config_class = ARCHITECTURES[architecture][1]
    known = {f.name for f in dataclasses.fields(config_class)}
    stray = next((key for key in fields if key not in known), None)
    if stray is not None:
        raise ConfigError(f"unknown {architecture} model field {stray!r}; the fields are {', '.join(sorted(known))}")
    if config_class is DiTConfig:
        fields = {key: coerce(value, f"model.{key}") for key, value in fields.items()}
        model = DiTConfig(**fields)
        _check_ranges({f"model.{key}": value for key, value in fields.items()})
        _check_model(model)
    else:
        required = {f.name for f in dataclasses.fields(config_class)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(fields))
        if missing:
            raise ConfigError(f"the {architecture} model description lacks {', '.join(missing)}")
    sizes = {key: fields.get(key) for key in ("vocab_size", "length")}
    if any(not isinstance(value, int) or isinstance(value, bool) or value < 1 for value in sizes.values()):
        raise ConfigError(f"model vocab_size and length must be integers >= 1, got {sizes['vocab_size']!r} and "
                          f"{sizes['length']!r}")
    return {"architecture": architecture, **fields}


def _validate_distillation(config: Config) -> None:
    distill, kind = config.distill, get_kind(config.objective.name)
    if distill.method is None:
        if distill.teacher is not None:
            raise ConfigError("distill.teacher names a teacher but distill.method is unset: run unmask distill")
        return
    if distill.method != kind.distillation:
        method = f"its method is {kind.distillation}" if kind.distillation else "it has no distillation method"
        raise ConfigError(f"distill.method={distill.method} does not distil a {kind.label} model ({method})")
    if distill.teacher is None:
        raise ConfigError("distill.method needs distill.teacher, the teacher's run or checkpoint folder")
    if not distill.gamma_min < distill.gamma_max:
        raise ConfigError(f"distill.gamma_min ({distill.gamma_min}) must be below distill.gamma_max "
                          f"({distill.gamma_max})")


def _validate_kind_fields(config: Config) -> None:
    """Objective fields that only some kinds use (``ModelKind.objective_fields``) keep their defaults in a run of
    another kind: a value there would do nothing, which is never what its author meant."""
    kind = get_kind(config.objective.name)
    defaults = ObjectiveConfig()
    for name, other in KINDS.items():
        for key in set(other.objective_fields) - set(kind.objective_fields):
            if getattr(config.objective, key) != getattr(defaults, key):
                raise ConfigError(f"objective.{key} applies to objective.name={name} only, not to {kind.name}; "
                                  "drop it")

