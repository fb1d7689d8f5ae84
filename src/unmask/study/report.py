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
from unmask.study.runner import RunRecord, StudyResult

# The paper's orderings (lower is better), each a chain of run names; a pair is judged where both ran.
ORDERINGS = (
    ("ar", "mdlm", "sedd", "d3pm"),
    ("mdlm", "mdlm-T1000", "mdlm-T100", "mdlm-T10"),
    ("mdlm-T1000", "mdlm-T1000-no-carry-over", "mdlm-T1000-no-carry-over-no-zero-masking"),
    ("mdlm", "mdlm-time-conditioning"),
)


# |z| below this leaves an ordering undecided.
DECIDED_Z = 2.0


def rows(result: StudyResult) -> list[dict[str, Any]]:
    """One row per model: its figure over its seeds and its training (see :func:`summarize_seeds`)."""
    by_entry: dict[str, list[RunRecord]] = {}
    for record in result.records:
        by_entry.setdefault(record.entry.name, []).append(record)
    return [summarize_seeds(records) for records in by_entry.values()]


def summarize_seeds(records: list[RunRecord]) -> dict[str, Any]:
    """A model's row from its runs (one per training seed), in nats per token:

    - ``nats_per_token``: the mean over seeds of each run's figure x_s;
    - ``seed_sd``: the standard deviation of x_s between seeds (None with one seed);
    - ``stderr``: the evaluation's standard error of that mean, sqrt(sum_s se_s^2) / n;
    - ``combined_se``: the standard error of the mean with the seeds' spread, sqrt(seed_sd^2 / n + stderr^2).
      The spread between seeds already holds the evaluation's noise; adding that noise again keeps a spread
      that is small by chance among few seeds from deciding an ordering, and with one seed (no spread known)
      leaves the evaluation's standard error alone.
    """
    first, n = records[0], len(records)
    values = [record.report.likelihood.nelbo_per_token for record in records]
    errors = [record.report.likelihood.stderr for record in records]
    mean = sum(values) / n
    seed_sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    stderr = math.sqrt(sum(e * e for e in errors)) / n
    main = first.report.likelihood
    discrete = {}
    for steps in first.report.discrete:
        per_seed = [record.report.discrete[steps] for record in records]
        discrete[str(steps)] = {"nats_per_token": sum(r.nelbo_per_token for r in per_seed) / n,
                                "stderr": math.sqrt(sum(r.stderr ** 2 for r in per_seed)) / n}
    return {
        "name": first.entry.name, "label": first.entry.label, "ablation": first.entry.ablation,
        "objective": first.report.objective, "exact": first.report.exact,
        "nats_per_token": mean, "stderr": stderr, "seed_sd": seed_sd, "seeds": n,
        "combined_se": math.sqrt((seed_sd or 0.0) ** 2 / n + stderr ** 2),
        "perplexity": math.exp(mean), "bits_per_token": mean / math.log(2),
        "eval_tokens": main.tokens, "eval_sequences": main.sequences,
        "training_tokens": round(sum(r.tokens for r in records) / n), "steps": round(sum(r.step for r in records) / n),
        "train_minutes": sum(r.train_seconds for r in records) / n / 60,
        "per_seed": [{"seed": r.seed, "run": r.run_dir.name, "nats_per_token": r.report.likelihood.nelbo_per_token,
                      "stderr": r.report.likelihood.stderr, "steps": r.step, "training_tokens": r.tokens}
                     for r in records],
        "discrete": discrete,
    }


def orderings(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each neighbouring pair of the paper's orderings that the study ran: the paper's "better" model a and
    "worse" model b, the gap mean_b - mean_a, and z = gap / sqrt(se_a^2 + se_b^2) with each model's
    ``combined_se`` (:func:`summarize_seeds`: the spread between its seeds and the evaluation's error; with
    one seed the evaluation's alone, conservative since the models are scored on the same sequences). The
    verdict: "held" (z >= 2), "reversed" (z <= -2) or "undecided"."""
    by_name = {row["name"]: row for row in table}
    pairs = []
    for chain in ORDERINGS:
        present = [name for name in chain if name in by_name]
        for better, worse in zip(present, present[1:]):
            a, b = by_name[better], by_name[worse]
            gap = b["nats_per_token"] - a["nats_per_token"]
            se = math.hypot(a["combined_se"], b["combined_se"])
            z = gap / se if se > 0 else math.copysign(math.inf, gap)
            verdict = "held" if z >= DECIDED_Z else "reversed" if z <= -DECIDED_Z else "undecided"
            pairs.append({"better": better, "worse": worse, "gap": gap, "se": se, "z": z, "holds": gap > 0,
                          "verdict": verdict})
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
    others are upper bounds (<=). With several seeds each figure is the mean over seeds, with the spread
    between them."""
    base = plan.base
    sequences = table[0]["eval_sequences"] if table else 0
    seeded = plan.seeds > 1
    if plan.budget_tokens is not None:
        budget = (f"on {_tokens(plan.budget_tokens)} training tokens each ({base.train.max_steps:,} steps of "
                  f"{base.train.global_batch} x {base.data.length})")
    else:
        budget = f"for {plan.budget:g} minutes each"
    seeds = (f", {plan.seeds} times each with train.seed = {base.train.seed} to {base.train.seed + plan.seeds - 1}"
             " (figures: the mean over seeds; s.d.: the spread between them; s.e.: the evaluation's)"
             if seeded else "")
    backbone = (f"`{base.adapt.init}` adapted" if base.adapt.init is not None
                else f"{base.model.n_layers} layers of {base.model.hidden}")
    lines = [
        f"Validation nats per token (lower is better) of models trained {budget}{seeds} on "
        f"`{base.data.source}` (one backbone: {backbone}; sequences of "
        f"{base.data.length}; one tokenizer), all scored on the same {sequences:,} validation sequences with "
        f"K = {evaluation.num_t} time samples each; +- one standard error. AR's figure is its exact NLL (it scores "
        "one token fewer per sequence); the others are upper bounds (<=).",
        "",
        "| Model | nats/token | +- s.e. |" + (" seed s.d. | seeds |" if seeded else "")
        + " PPL | training tokens | steps | minutes |",
        "|---|---:|---:|" + ("---:|---:|" if seeded else "") + "---:|---:|---:|---:|",
    ]
    ablation_header = False
    for row in table:
        if row["ablation"] and not ablation_header:
            lines.append("| *Ablations of MDLM* | | |" + (" | |" if seeded else "") + " | | | |")
            ablation_header = True
        bound = "" if row["exact"] else "<= "
        spread = f" {row['seed_sd']:.4f} | {row['seeds']} |" if seeded else ""
        lines.append(f"| {row['label']} | {bound}{row['nats_per_token']:.4f} | {row['stderr']:.4f} |{spread} "
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
        noise = ("combined standard error: sqrt(sd^2 / n + s.e.^2) per model, sd the spread between its n seeds"
                 if seeded else "combined standard error of the evaluation; one seed, so the spread between "
                 "training runs is not in it")
        lines += ["", f"The paper's orderings at this scale (gap in nats per token; z = gap / {noise}; "
                  f"held: z >= {DECIDED_Z:g}, reversed: z <= -{DECIDED_Z:g}, else undecided):", ""]
        for pair in pairs:
            lines.append(f"- {pair['better']} < {pair['worse']}: {pair['verdict']} (gap {pair['gap']:+.4f}, "
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
    entries = list(dict.fromkeys(record.entry.name for record in result.records))
    for record in result.records:
        curve = validation_curve(record.run_dir, tokens_per_step)
        values += [value for _, value in curve]
        if curve:
            xs, ys = zip(*curve)
            exact = " (exact NLL)" if record.report.exact else ""
            seed = f", seed {record.seed}" if plan.seeds > 1 else ""
            # Distinct hollow markers keep models whose curves coincide apart (one marker per model).
            marker = MARKERS[entries.index(record.entry.name) % len(MARKERS)]
            ax.plot(xs, ys, marker=marker, markersize=5, markerfacecolor="none",
                    linestyle="--" if record.entry.ablation else "-", label=record.entry.label + exact + seed)
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
        "machine": machine(plan.base.train.device), "budget_minutes": plan.budget,
        "budget_tokens": plan.budget_tokens, "seeds": plan.seeds, "data": plan.base.data.source,
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
