"""Block diffusion beside MDLM and AR: validation bounds at the demo's budget on the embedded corpus (CPU).

    python benchmarks/block_diffusion.py [--minutes 3.5] [--block-sizes 4,16] [--out runs/bd3lm-comparison]
                                         [--json OUT.json] [--eval-batches 16] [key=value ...]

Trains the demo's model (the ``tiny`` preset on the embedded Shakespeare corpus, its BPE tokenizer,
length 128, at the size the demo picks for this machine's training speed) once per model, each for
the same wall-clock budget (the demo's 3.5 minutes), in this order:
MDLM, BD3-LM at each block size (largest first), AR; every run uses the first run's tokenizer, so
all figures are per token of one tokenization. Each is then evaluated on the held-out plays like
the demo (the same ``--eval-batches`` batches, one time sample per sequence; the bd3lm and MDLM
figures are upper bounds, AR's is exact). The table goes to stdout in markdown, with the machine,
command and date; ``--json`` writes every report.

The paper's ordering (LM1B, OWT) is AR < BD3-LM 4 < BD3-LM 16 < MDLM. At this scale read the
standard errors before the ordering. A bd3lm step runs the model on 2L tokens (the noisy and the
clean sequence), so under one time budget it makes about half the steps of MDLM. Extra
``key=value`` overrides go to every run: ``objective.mask_rate_range=[0.3,0.8]`` (bd3lm runs
only) for the paper's clipped schedule, or for a quick check at tiny size
``--minutes 0.05 model.n_layers=1 model.hidden=32 model.n_heads=2`` (model overrides replace the
size the demo picks).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime
from pathlib import Path

import torch

from unmask.demo import choose_size, free_directory, train_for
from unmask.runtime import device_name

BD3LM_ONLY = ("objective.mask_rate_range", "objective.block_size")  # overrides the other runs would refuse
ROW_HEADER = "| model | steps | tokens/s | nats/token | +- s.e. | perplexity |"


def models(block_sizes: list[int]) -> list[tuple[str, list[str]]]:
    """(label, overrides) of each run, in the order they train."""
    runs = [("MDLM", ["objective.name=mdlm"])]
    for size in sorted(block_sizes, reverse=True):
        runs.append((f"BD3-LM {size}", ["objective.name=bd3lm", f"objective.block_size={size}"]))
    return [*runs, ("AR", ["objective.name=ar"])]


def table(results: dict[str, dict]) -> str:
    lines = [ROW_HEADER, "|---|---:|---:|---:|---:|---:|"]
    for label, r in results.items():
        bound = "" if r["objective"] == "ar" else " (bound)"
        lines.append(f"| {label} | {r['steps']} | {r['tokens_per_s']:,.0f} | {r['nelbo_per_token']:.3f}{bound} | "
                     f"{r['stderr']:.3f} | {r['perplexity']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.5, help="training budget per model (the demo's)")
    parser.add_argument("--block-sizes", default="4,16", help="comma-separated bd3lm block sizes")
    parser.add_argument("--out", default="runs/bd3lm-comparison", help="folder for the runs (a new one if taken)")
    parser.add_argument("--eval-batches", type=int, default=16, help="validation batches per model (the demo's)")
    parser.add_argument("--json", help="also write the reports to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    block_sizes = [int(size) for size in args.block_sizes.split(",") if size.strip()]

    out = free_directory(Path(args.out))
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    shared = [o for o in args.overrides if not o.startswith(BD3LM_ONLY)]
    size, notes = choose_size(args.minutes, shared)
    print(f"== demo size: {size.label} (training speed here: {'; '.join(notes)})", flush=True)
    results: dict[str, dict] = {}
    first: Path | None = None
    for label, overrides in models(block_sizes):
        run_dir = out / label.lower().replace(" ", "-")
        mine = args.overrides if overrides[0] == "objective.name=bd3lm" else shared
        print(f"== {label}: {args.minutes:g} min -> {run_dir}", flush=True)
        results[label] = train_for(run_dir, [*size.overrides, *mine, *overrides], minutes=args.minutes,
                                   progress=not args.quiet, eval_batches=args.eval_batches, tokenizer_from=first)
        first = first or run_dir

    command = shlex.join(["python", "benchmarks/block_diffusion.py", *(argv if argv is not None else sys.argv[1:])])
    machine = f"{device_name('cpu')}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\n{started} | {machine}\n{command}\n")
    print(f"Validation on the held-out plays, {size.label}, {args.minutes:g} min of training each "
          f"({next(iter(results.values()))['tokens']:,} tokens):\n")
    print(table(results))
    record = {"date": started, "machine": machine, "command": command, "minutes": args.minutes, "size": size.label,
              "runs": results}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
