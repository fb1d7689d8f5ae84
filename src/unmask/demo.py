"""The demo: MDLM and the AR baseline trained with the same budget on the embedded corpus.

Trains the ``tiny`` preset twice (objective mdlm, then ar) for a fixed number of minutes each,
evaluates both on the held-out plays, prints the two figures beside the corpus' unigram entropy,
and shows a few samples. The runs stay on disk for ``unmask sample`` and ``unmask eval``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from unmask.config import apply_overrides, load_preset, set_value
from unmask.data import TokenBlocks, corpus_entropy
from unmask.evaluate.report import evaluate_checkpoint
from unmask.generation import generate_text
from unmask.pipeline import load
from unmask.sampling import SamplerConfig
from unmask.train import train


def free_directory(out: Path) -> Path:
    """``out`` if it holds no run yet, else the first free ``out-2``, ``out-3``...: never overwrite a run."""
    candidate, n = out, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = out.with_name(f"{out.name}-{n}")
    return candidate


def train_for(run_dir: Path, overrides: list[str], *, minutes: float, progress: bool = True, eval_batches: int = 16,
              tokenizer_from: Path | None = None) -> dict:
    """Train the ``tiny`` preset with ``overrides`` for ``minutes`` in ``run_dir`` and evaluate it on the held-out
    plays: its steps, tokens/s and :func:`evaluate_checkpoint` report. ``tokenizer_from`` (a run) lends its
    tokenizer, so that the figures of several runs are per token of one tokenization."""
    config = apply_overrides(load_preset("tiny"), overrides)
    for key, value in (("train.max_minutes", minutes), ("train.max_steps", 100_000), ("train.eval_every", 100_000),
                       ("train.save_every", 100_000)):
        set_value(config, key, value)
    if tokenizer_from is not None:
        run_dir.mkdir(parents=True)
        shutil.copytree(tokenizer_from / "tokenizer", run_dir / "tokenizer")
    trained = train(config, run_dir, progress=progress)
    report = evaluate_checkpoint(run_dir, max_batches=eval_batches)
    return {"steps": trained.step, "tokens_per_s": trained.tokens_per_s, **report}


def run_demo(out: Path, *, minutes: float = 3.5, progress: bool = True, eval_batches: int = 16) -> dict:
    out = free_directory(out)
    results = {}
    for objective in ("mdlm", "ar"):
        run_dir = out / objective
        print(f"== training {objective} for {minutes:g} min -> {run_dir}")
        results[objective] = train_for(run_dir, [f"objective.name={objective}"], minutes=minutes, progress=progress,
                                       eval_batches=eval_batches, tokenizer_from=None if objective == "mdlm" else
                                       out / "mdlm")

    pipeline = load(out / "mdlm")
    valid = TokenBlocks("default", pipeline.tokenizer, split="validation", length=pipeline.config.data.length)
    entropy = corpus_entropy(valid)
    print(f"\nValidation on held-out plays ({results['mdlm']['tokens']:,} tokens, nats per token):")
    print(f"{'model':<28}{'steps':>8}{'tokens/s':>10}{'nats/token':>12}{'+- s.e.':>9}{'perplexity':>12}")
    for name, label in (("mdlm", "MDLM (NELBO, upper bound)"), ("ar", "AR baseline (exact NLL)")):
        r = results[name]
        print(f"{label:<28}{r['steps']:>8}{r['tokens_per_s']:>10,.0f}{r['nelbo_per_token']:>12.3f}"
              f"{r['stderr']:>9.3f}{r['perplexity']:>12.1f}")
    print(f"{'unigram entropy of the data':<28}{'':>18}{entropy:>12.3f}")
    margin = entropy - results["mdlm"]["nelbo_per_token"]
    side = "below" if margin > 0 else "above"
    print(f"The MDLM bound is {abs(margin):.3f} nats/token ({abs(margin) / results['mdlm']['stderr']:.1f} standard "
          f"errors) {side} the unigram entropy: {'it uses context' if margin > 0 else 'train it longer (--minutes)'}.")

    samples = generate_text(pipeline, SamplerConfig(steps=128), num_samples=3, seed=0)
    print(f"\nMDLM samples (cached sampler, T=128, {samples.num_calls} denoiser calls):")
    for text in samples.texts:
        print("---\n" + text.strip())
    print(f"\nNext: unmask sample {out / 'mdlm'} --prompt 'KING HENRY:'   |   unmask eval {out / 'mdlm'} --num-t 4")
    return {"out": str(out), "unigram_entropy": entropy, **results}
