"""The study's report: the paper's table (Markdown and JSON), its orderings, and a plot of the
validation bound against training tokens (PNG; without matplotlib the table still comes)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

from unmask.errors import install_hint
from unmask.evaluate.config import EvalConfig
from unmask.evaluate.plotting import MARKERS, has_matplotlib, pyplot
from unmask.runtime import device_name, resolve_device
from unmask.study.plan import Plan
from unmask.study.runner import StudyResult

# The paper's orderings (lower is better), each a chain of run names; a pair is judged where both ran.
ORDERINGS = (
    ("ar", "mdlm", "sedd", "d3pm"),
    ("mdlm", "mdlm-T1000", "mdlm-T100", "mdlm-T10"),
    ("mdlm-T1000", "mdlm-T1000-no-carry-over", "mdlm-T1000-no-carry-over-no-zero-masking"),
    ("mdlm", "mdlm-time-conditioning"),
)


def rows(result: StudyResult) -> list[dict[str, Any]]:
    """One row per model: its figure (nats per token, standard error, perplexity) and its training."""
    table = []
    for record in result.records:
        report, main = record.report, record.report.likelihood
        table.append({
            "name": record.entry.name, "label": record.entry.label, "ablation": record.entry.ablation,
            "objective": report.objective, "exact": report.exact,
            "nats_per_token": main.nelbo_per_token, "stderr": main.stderr,
            "perplexity": main.perplexity, "bits_per_token": main.bits_per_token,
            "eval_tokens": main.tokens, "eval_sequences": main.sequences,
            "training_tokens": record.tokens, "steps": record.step,
            "train_minutes": record.train_seconds / 60,
            "discrete": {str(steps): {"nats_per_token": r.nelbo_per_token, "stderr": r.stderr}
                         for steps, r in report.discrete.items()},
        })
    return table


def orderings(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each neighbouring pair of the paper's orderings that the study ran: does the paper's "better"
    model have the lower figure here, by how much, and in standard errors of the difference
    (sqrt(se_a^2 + se_b^2), conservative: the models are scored on the same sequences)."""
    by_name = {row["name"]: row for row in table}
    pairs = []
    for chain in ORDERINGS:
        present = [name for name in chain if name in by_name]
        for better, worse in zip(present, present[1:]):
            a, b = by_name[better], by_name[worse]
            gap = b["nats_per_token"] - a["nats_per_token"]
            se = math.hypot(a["stderr"], b["stderr"])
            pairs.append({"better": better, "worse": worse, "gap": gap, "z": gap / se if se > 0 else math.inf,
                          "holds": gap > 0})
    return pairs


def _perplexity(value: float) -> str:
    return f"{value:.2f}" if value < 1e5 else f"{value:.3g}"


def _tokens(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def format_markdown(table: list[dict[str, Any]], plan: Plan, evaluation: EvalConfig) -> str:
    """The paper's layout: AR, the diffusion baselines, then the ablations; AR's figure is exact, the
    others are upper bounds (<=)."""
    base = plan.base
    sequences = table[0]["eval_sequences"] if table else 0
    backbone = (f"`{base.adapt.init}` adapted" if base.adapt.init is not None
                else f"{base.model.n_layers} layers of {base.model.hidden}")
    lines = [
        f"Validation nats per token (lower is better) of models trained for {plan.budget:g} minutes each on "
        f"`{base.data.source}` (one backbone: {backbone}; sequences of "
        f"{base.data.length}; one tokenizer), all scored on the same {sequences:,} validation sequences with "
        f"K = {evaluation.num_t} time samples each; +- one standard error. AR's figure is its exact NLL (it scores "
        "one token fewer per sequence); the others are upper bounds (<=).",
        "",
        "| Model | nats/token | +- s.e. | PPL | training tokens | steps | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ablation_header = False
    for row in table:
        if row["ablation"] and not ablation_header:
            lines.append("| *Ablations of MDLM* | | | | | | |")
            ablation_header = True
        bound = "" if row["exact"] else "<= "
        lines.append(f"| {row['label']} | {bound}{row['nats_per_token']:.4f} | {row['stderr']:.4f} | "
                     f"{bound}{_perplexity(row['perplexity'])} | {_tokens(row['training_tokens'])} | "
                     f"{row['steps']:,} | {row['train_minutes']:.1f} |")
    for row in table:
        if row["discrete"]:
            lines += ["", f"{row['label']} (trained in continuous time), its bound evaluated at T steps:", "",
                      "| T | nats/token | +- s.e. |", "|---:|---:|---:|"]
            lines += [f"| {steps} | <= {r['nats_per_token']:.4f} | {r['stderr']:.4f} |"
                      for steps, r in row["discrete"].items()]
    if plan.skipped:
        lines += ["", "Not run: " + "; ".join(f"{name} ({reason})" for name, reason in plan.skipped.items())]
    pairs = orderings(table)
    if pairs:
        lines += ["", "The paper's orderings at this scale (gap in nats per token; z = gap / combined s.e.):", ""]
        for pair in pairs:
            verdict = "holds" if pair["holds"] else "does NOT hold"
            lines.append(f"- {pair['better']} < {pair['worse']}: {verdict} (gap {pair['gap']:+.4f}, "
                         f"z = {pair['z']:+.1f})")
    return "\n".join(lines) + "\n"


def validation_curve(run_dir: Path, tokens_per_step: int) -> list[tuple[int, float]]:
    """(training tokens, validation bound) at every validation of a run, from its metrics.jsonl
    (a step logged twice, by a session that died before its checkpoint, keeps its last value)."""
    by_step: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if "val_nelbo" in record:
            by_step[record["step"]] = record["val_nelbo"]
    return [(step * tokens_per_step, value) for step, value in sorted(by_step.items())]


def plot(result: StudyResult, plan: Plan, path: Path) -> Path:
    """Validation bound against training tokens, one line per model (ablations dashed)."""
    plt = pyplot("the study's plot")
    tokens_per_step = plan.base.train.global_batch * plan.base.data.length
    fig, ax = plt.subplots(figsize=(8, 5))
    values = []
    for i, record in enumerate(result.records):
        curve = validation_curve(record.run_dir, tokens_per_step)
        values += [value for _, value in curve]
        if curve:
            xs, ys = zip(*curve)
            exact = " (exact NLL)" if record.report.exact else ""
            # Distinct hollow markers keep models whose curves coincide apart.
            ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=5, markerfacecolor="none",
                    linestyle="--" if record.entry.ablation else "-", label=record.entry.label + exact)
    if values and min(values) > 0 and max(values) / min(values) > 3:
        ax.set_yscale("log")  # one diverging model should not flatten the others
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation nats per token (bound; lower is better)")
    ax.set_title(f"validation during training (train.eval_batches = {plan.base.train.eval_batches}, K = 1)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def machine(device: str) -> dict[str, Any]:
    """Where the study ran: the table's figures depend on it through the budget."""
    return {"device": device_name(resolve_device(device)), "cpus": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__}


def write_report(result: StudyResult, plan: Plan, out: Path, evaluation: EvalConfig) -> list[Path]:
    """study.md, study.json and (with matplotlib) study.png in ``out``; the paths written."""
    table = rows(result)
    markdown = format_markdown(table, plan, evaluation)
    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(plan.base.train.device), "budget_minutes": plan.budget, "data": plan.base.data.source,
        "config": plan.base.to_dict(), "evaluation": dataclasses.asdict(evaluation), "rows": table,
        "orderings": orderings(table),
    }
    (out / "study.md").write_text(markdown)
    (out / "study.json").write_text(json.dumps(record, indent=2) + "\n")
    written = [out / "study.md", out / "study.json"]
    if has_matplotlib():
        written.append(plot(result, plan, out / "study.png"))
    else:
        warnings.warn(f"no plot written: it needs matplotlib ({install_hint('matplotlib')})", stacklevel=2)
    return written
