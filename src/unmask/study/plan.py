"""What a study trains: one run per objective (and ablation), each an ordinary run configuration.

Every run starts from the same preset, corpus, tokenizer and user overrides; an entry only adds
the keys that make it what it is (``objective.name=sedd``, ``objective.discrete_steps=100``...).
A budget is either time or tokens. A time budget is ``train.max_minutes``, with ``train.max_steps``
lifted (unless the user sets it) so that the budget is what ends every run: the same minutes for every
model. A token budget is ``train.max_steps`` = ceil(tokens / (train.global_batch * data.length)) with
no time limit: the same training tokens for every model, the paper's comparison. With several seeds
every entry is trained once per seed, ``train.seed`` = the base seed + 0, 1, 2...
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from unmask.config import Config, ConfigError, apply_overrides, load_preset
from unmask.errors import UserError
from unmask.kinds import KINDS
from unmask.validation import validate

# Steps a study's run may take unless the user sets train.max_steps: the budget ends it first.
UNLIMITED_STEPS = 1_000_000_000


class StudyError(UserError):
    """A study that cannot run as asked; the message names the fix."""


@dataclass(frozen=True)
class Entry:
    """One model of the study: its run folder ``name``, its row ``label``, and the keys that define it.
    ``discrete_bounds``: its bound is also taken at T steps when the ablations run (the continuous MDLM's)."""

    name: str
    label: str
    overrides: tuple[str, ...] = ()
    ablation: bool = False
    discrete_bounds: bool = False


# One row per model kind, in the registry's order (the paper's Table 1 order): each kind with the keys it needs.
OBJECTIVES = {name: Entry(name, kind.label, (f"objective.name={name}", *kind.study_overrides),
                          discrete_bounds=kind.discrete_time and not kind.default_time_steps)
              for name, kind in KINDS.items()}

# The paper's ablations of MDLM: discrete time (its T table), then SUBS taken apart step by step as in
# its Table 8 (each row also drops what the row above dropped), then time conditioning switched on.
_T1000 = ("objective.discrete_steps=1000",)
ABLATIONS = (
    Entry("mdlm-T1000", "MDLM, T = 1000", _T1000, True),
    Entry("mdlm-T100", "MDLM, T = 100", ("objective.discrete_steps=100",), True),
    Entry("mdlm-T10", "MDLM, T = 10", ("objective.discrete_steps=10",), True),
    Entry("mdlm-T1000-no-carry-over", "MDLM, T = 1000, w/o carry-over", (*_T1000, "objective.carry_over=false"),
          True),
    Entry("mdlm-T1000-no-carry-over-no-zero-masking", "MDLM, T = 1000, w/o carry-over, w/o zero masking",
          (*_T1000, "objective.carry_over=false", "objective.zero_masking=false"), True),
    Entry("mdlm-time-conditioning", "MDLM with time conditioning", ("model.time_conditioning=true",), True),
)


@dataclass(frozen=True)
class SeedRun:
    """One training run of a study: ``entry`` trained with ``config`` (its ``train.seed``) in folder ``name``."""

    entry: Entry
    name: str
    config: Config

    @property
    def seed(self) -> int:
        return self.config.train.seed


@dataclass
class Plan:
    """The runs of a study: ``runs`` pairs each entry with its full configuration (at the base seed);
    ``base`` is what they share; ``budget`` the minutes or ``budget_tokens`` the training tokens of every
    run; ``seeds`` runs per entry; ``skipped`` says why an objective of the default list cannot run here."""

    base: Config
    runs: list[tuple[Entry, Config]]
    budget: float | None
    skipped: dict[str, str] = field(default_factory=dict)
    budget_tokens: int | None = None
    seeds: int = 1

    def seed_runs(self) -> list[SeedRun]:
        """Every run to train, seed by seed (all entries at the base seed first): the base seed's run of an
        entry is its folder ``NAME``, the others ``NAME-seedS`` with S their ``train.seed``."""
        runs = []
        for offset in range(self.seeds):
            for entry, config in self.runs:
                seeded = copy.deepcopy(config)
                seeded.train.seed = config.train.seed + offset
                name = entry.name if offset == 0 else f"{entry.name}-seed{seeded.train.seed}"
                runs.append(SeedRun(entry, name, seeded))
        return runs


def entry_config(base: Config, entry: Entry) -> Config:
    """``base`` with the entry's keys; a ConfigError when the combination does not validate."""
    config = apply_overrides(copy.deepcopy(base), list(entry.overrides))
    validate(config)
    return config


def unavailable_objectives(base: Config) -> dict[str, str]:
    """The objectives this version of unmask cannot train on ``base`` (bd3lm until it exists), and why."""
    reasons = {}
    for name, entry in OBJECTIVES.items():
        try:
            entry_config(base, entry)
        except ConfigError as err:
            reasons[name] = str(err)
    return reasons


def available_objectives(base: Config) -> list[str]:
    """The objectives this version of unmask can train on ``base``, in the table's order."""
    unavailable = unavailable_objectives(base)
    return [name for name in OBJECTIVES if name not in unavailable]


def plan_study(preset: str, *, budget: float | None = None, budget_tokens: int | None = None, seeds: int = 1,
               data: str | None = None, objectives: list[str] | None = None, ablations: bool = False,
               overrides: list[str] | None = None) -> Plan:
    """The runs of ``unmask study``: ``objectives`` (default: every one available) and, with
    ``ablations``, the paper's ablations, all on ``preset`` + ``data`` (default: the preset's
    corpus) + ``overrides``, each trained for ``budget`` minutes or on ``budget_tokens`` tokens (one of
    the two), ``seeds`` times."""
    if (budget is None) == (budget_tokens is None):
        raise StudyError("give one budget: --budget MINUTES (the same time for every model) or --budget-tokens N "
                         "(the same training tokens, the paper's comparison)")
    if budget is not None and not budget > 0:
        raise StudyError(f"--budget is minutes of training per model: give a number > 0, got {budget}")
    if budget_tokens is not None and budget_tokens < 1:
        raise StudyError(f"--budget-tokens is training tokens per model: give a number >= 1, got {budget_tokens}")
    if seeds < 1:
        raise StudyError(f"--seeds is the number of training runs per model: at least 1, got {seeds}")
    overrides = list(overrides or [])
    varied = [item for item in overrides if item.split("=", 1)[0].strip().startswith("objective.")]
    if varied:
        raise StudyError(f"the study sets each run's objective itself: drop {' '.join(varied)}")
    steps_given = [item for item in overrides if item.split("=", 1)[0].strip() == "train.max_steps"]
    if budget_tokens is not None and steps_given:
        raise StudyError(f"--budget-tokens sets train.max_steps itself: drop {' '.join(steps_given)}")
    source = [] if data is None else [f"data.source={data}"]
    base = apply_overrides(load_preset(preset), [*source, f"train.max_steps={UNLIMITED_STEPS}", *overrides])
    if budget_tokens is None:
        base.train.max_minutes = budget
    else:
        base.train.max_minutes = None
        base.train.max_steps = math.ceil(budget_tokens / (base.train.global_batch * base.data.length))
    validate(base)
    skipped = unavailable_objectives(base) if objectives is None else {}
    names = [name for name in OBJECTIVES if name not in skipped] if objectives is None else _checked(objectives, base)
    entries = [OBJECTIVES[name] for name in names] + (list(ABLATIONS) if ablations else [])
    return Plan(base=base, runs=[(entry, entry_config(base, entry)) for entry in entries], budget=budget,
                skipped=skipped, budget_tokens=budget_tokens, seeds=seeds)


def _checked(objectives: list[str], base: Config) -> list[str]:
    """The requested objectives in the table's order, each known and able to run."""
    unknown = [name for name in objectives if name not in OBJECTIVES]
    if unknown:
        raise StudyError(f"unknown objective {unknown[0]!r} in --objectives; choose from {', '.join(OBJECTIVES)}")
    if not objectives:
        raise StudyError(f"--objectives is empty; choose from {', '.join(OBJECTIVES)}")
    for name in objectives:
        try:
            entry_config(base, OBJECTIVES[name])
        except ConfigError as err:
            raise StudyError(f"objective {name!r} cannot run with this unmask ({err}); drop it from --objectives") \
                from None
    return [name for name in OBJECTIVES if name in objectives]
