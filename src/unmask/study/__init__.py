"""``unmask study``: the paper's comparisons (AR, MDLM, SEDD, D3PM, the ablations) in one resumable command.

:func:`plan_study` says what to train (:mod:`.plan`), :func:`run_study` trains and evaluates it
(:mod:`.runner`), :func:`write_report` writes the table and the plot (:mod:`.report`);
:func:`study` does all three.
"""

from __future__ import annotations

from pathlib import Path

from unmask.evaluate.config import EvalConfig
from unmask.study.plan import (
    ABLATIONS,
    OBJECTIVES,
    Plan,
    StudyError,
    available_objectives,
    plan_study,
    unavailable_objectives,
)
from unmask.study.report import format_markdown, orderings, rows, summarize_seeds, write_report
from unmask.study.runner import STUDY_EVALUATION, StudyResult, run_study

__all__ = [
    "ABLATIONS", "OBJECTIVES", "STUDY_EVALUATION", "Plan", "StudyError", "StudyResult", "available_objectives",
    "format_markdown", "orderings", "plan_study", "rows", "run_study", "study", "summarize_seeds",
    "unavailable_objectives",
    "write_report",
]


def study(preset: str, *, out: str | Path, budget: float | None = None, budget_tokens: int | None = None,
          seeds: int = 1, data: str | None = None, objectives: list[str] | None = None, ablations: bool = False,
          overrides: list[str] | None = None, evaluation: EvalConfig = STUDY_EVALUATION, progress: bool = True
          ) -> tuple[StudyResult, list[Path]]:
    """Plan, train (or continue), evaluate and report a study in ``out`` (``budget`` minutes or
    ``budget_tokens`` tokens per run, ``seeds`` runs per model): the result and the files written (none when
    a Ctrl-C stopped the training; running it again continues)."""
    plan = plan_study(preset, budget=budget, budget_tokens=budget_tokens, seeds=seeds, data=data,
                      objectives=objectives, ablations=ablations, overrides=overrides)
    result = run_study(plan, out, evaluation=evaluation, progress=progress)
    if result.interrupted:
        return result, []
    return result, write_report(result, plan, Path(out), evaluation)
