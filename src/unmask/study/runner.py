"""Running a study: train every run to its budget (resumably), then evaluate every model the same way.

A study folder holds one ordinary run per entry and seed (``OUT/mdlm``, ``OUT/sedd``, ...; with
several seeds also ``OUT/mdlm-seed1``...; each one works with ``unmask eval``, ``sample`` and
``train --resume``), the tokenizer they all share (``OUT/tokenizer``, trained once and copied into
each run as ``unmask demo`` does), and the report. Running the same command again continues where it
stopped (and a larger ``--seeds`` adds the new seeds' runs):

- a run whose checkpoint has used its time budget (``train.train_seconds`` in its state.json, the
  training time of every session up to that step) or reached ``train.max_steps`` (which a token budget
  sets) is done and skipped;
- a run with a checkpoint short of its budget resumes from it (``train --resume`` semantics: the
  same weights, optimizer and data position) for the minutes or steps it has left;
- a run without a checkpoint starts afresh;
- an evaluation already made of the same checkpoint with the same settings is reused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from unmask.checkpoint import load_config, read_state, resolve_checkpoint
from unmask.checkpoint.layout import train_seconds
from unmask.config import Config
from unmask.evaluate.config import EvalConfig, EvalReport
from unmask.evaluate.report import evaluate_checkpoint
from unmask.fileio import write_atomic
from unmask.study.plan import Entry, Plan, SeedRun, StudyError
from unmask.train import train
from unmask.train.run_dir import RunLock, config_differences, has_run, prepare_tokenizer

EVALUATION_FILE = "study-eval.json"
DISCRETE_STEPS = (10, 100, 1000)  # the continuous MDLM model's bound is also taken at these T (with ablations)


# How every model of a study is evaluated unless the user says otherwise: K = 4 time samples per sequence.
STUDY_EVALUATION = EvalConfig(num_t=4)


@dataclass
class RunRecord:
    """One finished model: where it is, its training seed, how far it trained, and its evaluation report."""

    entry: Entry
    seed: int
    run_dir: Path
    step: int
    train_seconds: float
    tokens: int
    report: EvalReport


@dataclass
class StudyResult:
    records: list[RunRecord] = field(default_factory=list)
    interrupted: str | None = None  # the run a Ctrl-C stopped (its progress is saved)


def _remaining_minutes(run_dir: Path, config: Config, budget: float | None) -> float | None:
    """Minutes of budget a run has left: the full budget without a checkpoint, 0 when done, None when a
    token budget (``train.max_steps``) ends it rather than time."""
    if not has_run(run_dir):
        return budget
    checkpoint = resolve_checkpoint(run_dir)
    changed = config_differences(load_config(checkpoint), config)
    if changed:
        raise StudyError(f"{run_dir} holds a run of another configuration ({'; '.join(changed)}); give the study "
                         "the same preset, --data and overrides, or another --out")
    state = read_state(checkpoint)
    if state["step"] >= config.train.max_steps:
        return 0.0
    return None if budget is None else max(0.0, budget - train_seconds(state) / 60)


def _train(run: SeedRun, out: Path, budget: float | None, progress: bool) -> bool:
    """Train ``run`` to its budget; False when a Ctrl-C stopped it (its progress is saved)."""
    run_dir, config = out / run.name, run.config
    left = _remaining_minutes(run_dir, config, budget)
    if left == 0:
        print(f"== {run.name}: trained (budget used or train.max_steps reached), skipped")
        return True
    resume = has_run(run_dir)
    config.train.max_minutes = left
    if not (run_dir / "tokenizer").is_dir():  # one tokenization: per-token figures are comparable
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(out / "tokenizer", run_dir / "tokenizer")
    until = f"for {left:.3g} min" if left is not None else f"to step {config.train.max_steps:,}"
    print(f"== {run.name}: {'resuming' if resume else 'training'} {until} -> {run_dir}", flush=True)
    return not train(config, run_dir, resume=resume, progress=progress).interrupted


def _evaluate(run: SeedRun, run_dir: Path, evaluation: EvalConfig) -> RunRecord:
    checkpoint = resolve_checkpoint(run_dir)
    key = {"checkpoint": checkpoint.name, **dataclasses.asdict(evaluation)}
    key["discrete_steps"] = list(evaluation.discrete_steps)  # as JSON reads it back
    cache = run_dir / EVALUATION_FILE
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if saved.get("key") == key:
        report = EvalReport.from_dict(saved["report"])
    else:
        print(f"== {run.name}: evaluating {checkpoint.name} (K = {evaluation.num_t})", flush=True)
        report = evaluate_checkpoint(run_dir, evaluation, device=run.config.train.device)
        write_atomic(cache, json.dumps({"key": key, "report": report.to_dict()}, indent=2) + "\n")
    state = read_state(checkpoint)
    tokens = state["step"] * run.config.train.global_batch * run.config.data.length
    return RunRecord(entry=run.entry, seed=run.seed, run_dir=run_dir, step=state["step"],
                     train_seconds=train_seconds(state), tokens=tokens, report=report)


def run_study(plan: Plan, out: str | Path, *, evaluation: EvalConfig = STUDY_EVALUATION, progress: bool = True
              ) -> StudyResult:
    """Train (or continue) every run of ``plan`` in ``out`` (every entry at every seed), then evaluate every
    model alike as ``evaluation`` says (with the ablations, the continuous MDLM's bound also at T = 10, 100,
    1000)."""
    out = Path(out)
    lock = RunLock(out)  # one study per folder at a time
    try:
        prepare_tokenizer(plan.base, out)  # out/tokenizer, once
        for name, reason in plan.skipped.items():
            print(f"== {name}: not trained, this unmask cannot ({reason})")
        runs = plan.seed_runs()
        for run in runs:
            if not _train(run, out, plan.budget, progress):
                return StudyResult(interrupted=run.name)
        ablations = any(entry.ablation for entry, _ in plan.runs)
        records = []
        for run in runs:
            discrete = DISCRETE_STEPS if ablations and run.entry.discrete_bounds else ()
            records.append(_evaluate(run, out / run.name, dataclasses.replace(evaluation, discrete_steps=discrete)))
        return StudyResult(records=records)
    finally:
        lock.release()
