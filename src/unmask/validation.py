"""Every run configuration is checked the same way wherever it comes from (a preset, overrides, a
checkpoint's config.yaml, a distillation): :func:`validate` refuses what cannot run, in one line naming the
fix. The kind of the run checks its own rules (:meth:`unmask.kinds.base.ModelKind.validate`)."""

from __future__ import annotations

from unmask.adapt_config import validate_adapt
from unmask.config import Config, ObjectiveConfig
from unmask.data.chat import FORMATS as CHAT_FORMATS
from unmask.distill.losses import DIVERGENCES
from unmask.errors import ConfigError
from unmask.kinds import KINDS, get_kind
from unmask.models.block_attention import ATTENTIONS
from unmask.models.dit import GELUS, TIME_INPUTS
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


def validate(config: Config) -> None:
    """Reject combinations that cannot run, with the fix in the message."""
    choices = {
        "objective.name": (config.objective.name, tuple(KINDS)),
        "data.layout": (config.data.layout, ("wrapped", "padded")),
        "optim.decay": (config.optim.decay, ("constant", "cosine")),
        "train.precision": (config.train.precision, ("auto", "bf16", "fp32")),
        "model.gelu": (config.model.gelu, GELUS),
        "model.attention": (config.model.attention, ATTENTIONS),
        "model.time_input": (config.model.time_input, TIME_INPUTS),
        "parallel.strategy": (config.parallel.strategy, ("ddp", "fsdp")),
        "distill.divergence": (config.distill.divergence, DIVERGENCES),
        "data.format": (config.data.format, CHAT_FORMATS),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    for key, (low, high, low_open, high_open) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is None:
            continue
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above or value != value:  # value != value: nan
            if high is None:
                wanted = f"{'>' if low_open else '>='} {low}"
            else:
                wanted = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise ConfigError(f"{key} must be {wanted}, got {value!r}")
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
    if config.model.hidden % config.model.n_heads:
        raise ConfigError(f"model.hidden ({config.model.hidden}) must be divisible by model.n_heads")
    _validate_kind_fields(config)
    validate_adapt(config)
    get_kind(config.objective.name).validate(config)
    _validate_distillation(config)


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

