"""Typed run configuration: dataclasses, YAML presets, and ``key=value`` overrides.

A run is described by one :class:`Config` (model, data, objective, optimizer, training, parallel, and
``adapt`` when it starts from a pretrained causal LM).
The ``model`` section is the model's own configuration, :class:`unmask.models.DiTConfig`; the few
fields of it that follow from the rest of the run (vocabulary, length, causal attention) are
filled in by :meth:`Config.model_config`, never set by hand. Presets live in
``unmask/configs/*.yaml`` and only list what differs from the defaults below.
Overrides from the command line use dotted keys (``optim.lr=1e-4``); a misspelt key is an
error that names the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from unmask.adapt_config import AdaptConfig
from unmask.bounds.relaxation import (
    CURRICULUM_END,
    CURRICULUM_START,
    GAMMA_MAX,
    GAMMA_MIN,
    LOG10_TEMPERATURE_END,
    LOG10_TEMPERATURE_START,
)
from unmask.configs import preset_names
from unmask.distill.losses import DCD_GAMMA_MAX, DCD_GAMMA_MIN
from unmask.errors import ConfigError
from unmask.kinds import get_kind
from unmask.models.dit import DiTConfig


@dataclass
class DataConfig:
    source: str = "default"  # "default" (embedded corpus), a path, or a dataset name
    valid_source: str | None = None  # a separate validation source; else the source's own split
    tokenizer: str = "bpe"  # "bpe" (trained on the corpus), "char", "gpt2", "bert-base-uncased", or a path
    vocab_size: int = 8192  # for the trained BPE tokenizer
    layout: str = "wrapped"  # "wrapped" (OWT, text8) or "padded" (LM1B)
    length: int = 128
    cache_dir: str | None = None
    max_documents: int | None = None
    text_field: str = "text"  # the JSON field / parquet column that holds the text of local .jsonl / .parquet files
    # Stream the training corpus with HF datasets instead of caching its tokens on disk (corpora
    # larger than the disk); validation then needs valid_source or the dataset's own split.
    streaming: bool = False
    # "text" (documents), "chat" (a .jsonl of {"messages": [...]}: supervised fine-tuning, unmask.data.chat),
    # or "auto": chat for a .jsonl file whose first record has "messages", text otherwise.
    format: str = "auto"


@dataclass
class ObjectiveConfig:
    # The model kind (unmask.kinds): "mdlm" (SUBS), "ar" (the autoregressive baseline on the same
    # backbone), "sedd" (score entropy, absorbing), "d3pm" (absorbing, discrete time, no zero masking,
    # no carry-over) or "bd3lm" (block diffusion: autoregressive across blocks, MDLM within each)
    name: str = "mdlm"
    schedule: str = "loglinear"
    # T of the discrete-time bound; 0: continuous time; null: the kind's own (continuous for mdlm and
    # sedd, 1000 for d3pm). Read it through time_steps.
    discrete_steps: int | None = None
    carry_over: bool = True  # mdlm ablation: False also scores unmasked positions
    zero_masking: bool = True  # mdlm ablation: False lets the model predict MASK (discrete time only)
    antithetic: bool = True
    block_size: int = 16  # bd3lm: tokens per block, a divisor of data.length (the paper's: 4, 8, 16)
    # bd3lm training draws masking rates from [beta, omega] (clipped schedule); evaluation uses [0, 1].
    mask_rate_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    # duo: the curriculum (Duo's Gaussian relaxation) trains until step curriculum_end (0: none), then the
    # uniform-state NELBO; its softmax temperature anneals log-linearly from temperature_start to
    # temperature_end between curriculum_start and curriculum_end; gamma is linear in t on [gamma_min,
    # gamma_max]. Defaults: the reference's configs/algo/duo.yaml.
    curriculum_start: int = CURRICULUM_START
    curriculum_end: int = CURRICULUM_END
    temperature_start: float = 10.0**LOG10_TEMPERATURE_START
    temperature_end: float = 10.0**LOG10_TEMPERATURE_END
    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX

    @property
    def time_steps(self) -> int:
        """T of the bound this objective trains and evaluates with (0: continuous time)."""
        return get_kind(self.name).time_steps(self)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 2500
    decay: str = "constant"  # "constant" or "cosine" after warmup
    grad_clip: float = 1.0
    ema: float = 0.9999  # 0 disables the EMA of weights


@dataclass
class TrainConfig:
    global_batch: int = 512
    micro_batch: int = 32  # per process and forward pass; accumulation makes up the rest
    max_steps: int = 1_000_000
    max_minutes: float | None = None  # stop (and save) after this much training time
    eval_every: int = 5000
    eval_batches: int = 16
    save_every: int = 5000
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 on CUDA and on CPUs with native bf16), "bf16", "fp32"
    compile: bool = False
    device: str = "auto"
    tensorboard: bool | None = None  # None: log to TensorBoard when it is installed (pip install "unmask[logging]")
    wandb: bool = False


@dataclass
class ParallelConfig:
    strategy: str = "ddp"  # "ddp" or "fsdp" under torchrun
    activation_checkpointing: bool = False


@dataclass
class DistillConfig:
    """A distillation run (``unmask distill``): the student starts as ``teacher`` (a run or checkpoint folder)
    and learns, round after round, to sample in half its teacher's steps."""

    method: str | None = None  # "sdtt" (MDLM: self-distillation through time) or "dcd" (Duo: consistency); None: off
    teacher: str | None = None
    steps_from: int | None = None  # the teacher's steps T in the first round (null: the method's own: 1024 / 512)
    round_steps: int = 10_000  # optimizer steps per round; then the teacher takes the student's weights
    divergence: str = "kl-bwd"  # "kl-bwd" (KL(student || teacher)), "kl-fwd" or "mse" (of log-probabilities)
    gamma_min: float = DCD_GAMMA_MIN  # dcd: the Gaussian trajectories' range
    gamma_max: float = DCD_GAMMA_MAX


@dataclass
class Config:
    model: DiTConfig = field(default_factory=DiTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def to_dict(self) -> dict[str, Any]:
        """Every settable key by section (the model's derived fields are left out)."""
        return {
            section.name: {f.name: getattr(getattr(self, section.name), f.name)
                           for f in dataclasses.fields(getattr(self, section.name)) if not _is_derived(f)}
            for section in dataclasses.fields(self)
        }

    def model_config(self, vocab_size: int) -> DiTConfig:
        """The model's whole configuration: the ``model`` section, the tokenizer's ``vocab_size``,
        ``data.length`` and causal attention for an autoregressive kind."""
        return dataclasses.replace(self.model, vocab_size=vocab_size, length=self.data.length,
                                   causal=get_kind(self.objective.name).autoregressive)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        config = cls()
        for key, value in _flatten(values):
            set_value(config, key, value)
        return config

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        return cls.from_dict(values)


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


def _is_derived(f: dataclasses.Field) -> bool:
    return "derived" in f.metadata


def valid_keys(config: Config | None = None) -> list[str]:
    config = config or Config()
    return [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(config)
        for f in dataclasses.fields(getattr(config, section.name))
        if not _is_derived(f)
    ]


def _derived_keys() -> dict[str, str]:
    return {f"model.{f.name}": f.metadata["derived"] for f in dataclasses.fields(DiTConfig) if _is_derived(f)}


def coerce(value: Any, key: str) -> Any:
    """Check (and where harmless convert) a value against the annotation of a dotted key's field."""
    section, name = key.split(".")
    hint = typing.get_type_hints(_FIELD_OWNERS[section])[name]
    if typing.get_origin(hint) is list:
        numbers = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not numbers:
            raise ConfigError(f"{key} must be a list of numbers, e.g. [0.3, 0.8], got {value!r}")
        return [float(v) for v in value]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
    raise ConfigError(f"{key} must be {expected}, got {value!r}")


_FIELD_OWNERS = {
    "distill": DistillConfig,
    "model": DiTConfig,
    "data": DataConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "parallel": ParallelConfig,
    "adapt": AdaptConfig,
}


def set_value(config: Config, key: str, value: Any) -> None:
    """Set a dotted key, e.g. ``set_value(config, "optim.lr", 1e-4)``."""
    keys = valid_keys(config)
    derived = _derived_keys()
    if key in derived:
        raise ConfigError(f"{key} is not set in a run's config: it follows from {derived[key]}")
    if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(keys)}"
        raise ConfigError(f"unknown config key {key!r}{hint}")
    section, name = key.split(".")
    setattr(getattr(config, section), name, coerce(value, key))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings; values are parsed as YAML scalars (1e-4, true, null, text)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_like_float(value):
            value = float(value)
        set_value(config, key.strip(), value)
    return config


def _looks_like_float(text: str) -> bool:
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_preset(name: str) -> Config:
    """A preset by name (``tiny``, ``owt-small``, ...) or a path to a YAML file."""
    if Path(name).suffix in (".yaml", ".yml"):
        return Config.load(name)
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown preset {name!r}; {hint}presets: {', '.join(names)} (or a path to a .yaml file)")
    with resources.as_file(resources.files("unmask.configs") / f"{name}.yaml") as path:
        return Config.load(path)
