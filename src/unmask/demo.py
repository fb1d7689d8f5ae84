"""The demo: MDLM and the AR baseline trained with the same budget on the embedded corpus.

Trains the ``tiny`` preset twice (objective mdlm, then ar) for a fixed number of minutes each,
evaluates both on the held-out plays, prints the two figures beside the corpus' unigram entropy,
and shows a few samples. The runs stay on disk for ``unmask sample`` and ``unmask eval``.

The demo makes its point (the MDLM bound well below the unigram entropy: the model uses context)
only after a couple of million training tokens. CPUs of the same class differ 5x in training
speed (native bf16 or not), so the demo first measures how fast this machine trains the tiny
model and, where the budget would give too few tokens, picks a smaller size (:data:`DEMO_SIZES`),
saying what it chose and why.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.config import Config, apply_overrides, load_preset, set_value
from unmask.data import TokenBlocks, corpus_entropy
from unmask.evaluate import EvalConfig, evaluate_checkpoint
from unmask.generation import generate_text
from unmask.kinds import sequence_losses
from unmask.kinds.ar import AR
from unmask.kinds.mdlm import MDLM
from unmask.models import DiT
from unmask.pipeline import load
from unmask.runtime import autocast, resolve_device, resolve_precision
from unmask.sampling import SamplerConfig
from unmask.train import train
from unmask.train.optim import build_optimizer


@dataclass(frozen=True)
class DemoSize:
    """A size of the demo's model: overrides of the tiny preset."""

    label: str
    overrides: tuple[str, ...] = ()


# Largest first; each trains roughly twice as fast as the one before it on the same CPU.
DEMO_SIZES = (
    DemoSize("4 blocks x 256, BPE 4,096 (the tiny preset)"),
    DemoSize("3 blocks x 192, BPE 2,048", ("model.n_layers=3", "model.hidden=192", "data.vocab_size=2048")),
    DemoSize("2 blocks x 128, BPE 1,024", ("model.n_layers=2", "model.hidden=128", "data.vocab_size=1024")),
)
# Training tokens per model after which the tiny MDLM's bound is clearly below the unigram entropy
# of the held-out plays (0.37 nats, 6.9 standard errors, after 2.7M tokens on 2026-11-23).
TARGET_TOKENS = 2_500_000


def training_speed(config: Config, seconds: float = 2.0) -> float:
    """Tokens/s of one training step (forward, backward, AdamW) of ``config``'s model on random tokens."""
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    vocab = config.data.vocab_size
    torch.manual_seed(0)
    model = DiT(config.model_config(vocab)).to(device)
    optimizer = build_optimizer(model, config.optim, device)
    batch = {"input_ids": torch.randint(0, vocab - 1, (config.train.micro_batch, config.data.length), device=device)}
    batch["loss_mask"] = torch.ones_like(batch["input_ids"], dtype=torch.bool)

    def step() -> None:
        with autocast(precision, device):
            losses, tokens = sequence_losses(model, batch, config.objective, vocab - 1)
        (losses.sum() / tokens.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < seconds:
        step()
        steps += 1
    return steps * batch["input_ids"].numel() / (time.perf_counter() - started)


def choose_size(minutes: float, overrides: list[str]) -> tuple[DemoSize, list[str]]:
    """The largest demo size this machine trains to ``TARGET_TOKENS`` within ``minutes``, and what was measured."""
    notes = []
    for size in DEMO_SIZES:
        config = apply_overrides(load_preset("tiny"), [*overrides, *size.overrides])
        speed = training_speed(config)
        reached = speed * 60 * minutes
        precision = resolve_precision(config.train.precision, resolve_device(config.train.device))
        notes.append(f"{size.label}: {speed:,.0f} tokens/s in {precision}, {reached / 1e6:.1f}M tokens in "
                     f"{minutes:g} min")
        if reached >= TARGET_TOKENS:
            return size, notes
    return DEMO_SIZES[-1], notes


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
    report = evaluate_checkpoint(run_dir, EvalConfig(max_batches=eval_batches))
    return {"steps": trained.step, "tokens_per_s": trained.tokens_per_s, **report.to_dict()}


def run_demo(out: Path, *, minutes: float = 3.5, progress: bool = True, eval_batches: int = 16,
             precision: str = "auto") -> dict:
    """Train, evaluate and sample as the module docstring says; ``precision`` forces train.precision."""
    out = free_directory(out)
    overrides = [f"train.precision={precision}"]
    size, notes = choose_size(minutes, overrides)
    print(f"== demo size: {size.label} (training speed here: {'; '.join(notes)})")
    results, tokenizer_from = {}, None
    for kind in (MDLM, AR):  # the second run reads the first one's tokenizer
        run_dir = out / kind.name
        print(f"== training {kind.name} for {minutes:g} min -> {run_dir}")
        results[kind.name] = train_for(run_dir, [*overrides, *size.overrides, f"objective.name={kind.name}"],
                                       minutes=minutes, progress=progress, eval_batches=eval_batches,
                                       tokenizer_from=tokenizer_from)
        tokenizer_from = run_dir
    mdlm = results[MDLM.name]

    pipeline = load(out / MDLM.name)
    valid = TokenBlocks("default", pipeline.tokenizer, split="validation", length=pipeline.config.data.length)
    entropy = corpus_entropy(valid)
    print(f"\nValidation on held-out plays ({mdlm['tokens']:,} tokens, nats per token):")
    print(f"{'model':<28}{'steps':>8}{'tokens/s':>10}{'nats/token':>12}{'+- s.e.':>9}{'perplexity':>12}")
    for name, label in ((MDLM.name, "MDLM (NELBO, upper bound)"), (AR.name, "AR baseline (exact NLL)")):
        r = results[name]
        print(f"{label:<28}{r['steps']:>8}{r['tokens_per_s']:>10,.0f}{r['nelbo_per_token']:>12.3f}"
              f"{r['stderr']:>9.3f}{r['perplexity']:>12.1f}")
    print(f"{'unigram entropy of the data':<28}{'':>18}{entropy:>12.3f}")
    margin = entropy - mdlm["nelbo_per_token"]
    side = "below" if margin > 0 else "above"
    print(f"The MDLM bound is {abs(margin):.3f} nats/token ({abs(margin) / mdlm['stderr']:.1f} standard "
          f"errors) {side} the unigram entropy: {'it uses context' if margin > 0 else 'train it longer (--minutes)'}.")

    samples = generate_text(pipeline, SamplerConfig(steps=128), num_samples=3, seed=0)
    print(f"\nMDLM samples (cached sampler, T=128, {samples.num_calls} denoiser calls):")
    for text in samples.texts:
        print("---\n" + text.strip())
    print(f"\nNext: unmask sample {out / MDLM.name} --prompt 'KING HENRY:'   |   unmask eval {out / MDLM.name} "
          "--num-t 4")
    return {"out": str(out), "size": size.label, "unigram_entropy": entropy, **results}
