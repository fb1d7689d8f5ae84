"""The README's study again, with three training seeds per model and the same training tokens for every model.

    python benchmarks/study_seeds.py [--seeds 3] [--budget-tokens 2000000] [--out runs/study-3seeds]
                                     [--results benchmarks/results/study-tiny-3seeds] [--smoke]

Runs ``unmask study tiny --out OUT --budget-tokens N --seeds S --ablations --quiet``: the eleven models of the
study of 2026-11-30 (AR, MDLM, BD3-LM, SEDD, D3PM and the six MDLM ablations) on the tiny preset and the
embedded corpus, each trained S times (train.seed 0, 1, 2) on N tokens (the paper compares equal tokens, not
equal minutes), all scored on the same 627 validation sequences with K = 4. Then it copies study.md,
study.json and study.png to ``--results`` and prints each of the paper's orderings with its verdict (held,
reversed or undecided: |z| < 2, z counting the spread between seeds).

2,000,000 tokens is 489 steps of 32 x 128. At the training rates of the one-seed study of 2026-11-30 (from
92 steps a minute for D3PM to 210 for MDLM) the 33 runs take about 97 minutes of training and about 10 of
evaluation on this project's 2-core CPU: one sitting. The study resumes where it stopped when run again,
and ``--seeds`` can grow later. ``--smoke`` runs the same at a toy size (one layer of 32, 2 steps per run,
one evaluation batch) into a temporary folder: a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

from unmask.study import STUDY_EVALUATION, study

SMOKE = ["model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.cond_dim=16", "data.tokenizer=char",
         "data.length=32", "train.global_batch=8", "train.micro_batch=8", "train.eval_every=2", "train.eval_batches=1",
         "train.save_every=2"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="training runs per model")
    parser.add_argument("--budget-tokens", type=int, default=2_000_000, help="training tokens per run")
    parser.add_argument("--out", default="runs/study-3seeds", help="the study folder (resumable)")
    parser.add_argument("--results", default="benchmarks/results/study-tiny-3seeds",
                        help="where study.md, study.json and study.png are copied")
    parser.add_argument("--smoke", action="store_true", help="a toy-sized run into a temporary folder")
    args = parser.parse_args(argv)
    overrides, evaluation = [], STUDY_EVALUATION
    if args.smoke:
        scratch = Path(tempfile.mkdtemp(prefix="study-seeds-smoke-"))
        args.seeds, args.budget_tokens = 2, 2 * 8 * 32
        args.out, args.results = str(scratch / "study"), str(scratch / "results")
        overrides, evaluation = SMOKE, dataclasses.replace(STUDY_EVALUATION, max_batches=1)
    print(f"unmask study tiny --out {args.out} --budget-tokens {args.budget_tokens} --seeds {args.seeds} "
          f"--ablations --quiet {' '.join(overrides)}".rstrip(), flush=True)
    result, written = study("tiny", out=args.out, budget_tokens=args.budget_tokens, seeds=args.seeds,
                            ablations=True, overrides=overrides, evaluation=evaluation, progress=False)
    if result.interrupted:
        print(f"interrupted while training {result.interrupted}; run the same command again to continue",
              file=sys.stderr)
        return 130
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for path in written:
        shutil.copy2(path, results / path.name)
    print((results / "study.md").read_text())
    print(f"copied {', '.join(path.name for path in written)} to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
