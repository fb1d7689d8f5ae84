"""What each ``unmask`` command does with its parsed options: each one calls the library."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import shlex
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from unmask.checkpoint import export_checkpoint
from unmask.cli.parser import DEFAULT_PRESET, GEN_PPL_SAMPLES
from unmask.config import apply_overrides, load_preset
from unmask.demo import run_demo
from unmask.distributed.process import is_main_process
from unmask.errors import UserError
from unmask.evaluate import EvalConfig, EvalReport, evaluate_checkpoint, generative_perplexity, load_evaluator
from unmask.evaluate.frontier import format_table, run_frontier
from unmask.generation import generate_text, masked_text
from unmask.interop import convert_lightning, export_hf
from unmask.pipeline import load
from unmask.sampling import SamplerConfig
from unmask.serve import serve
from unmask.study import STUDY_EVALUATION, study
from unmask.train import resume_config, train


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None): the others take their owner's default."""
    return {name: value for name, value in options.items() if value is not None}


def sampler_config(args: argparse.Namespace) -> SamplerConfig:
    """The SamplerConfig of a command's sampling options."""
    return SamplerConfig.from_options(
        sampler=args.sampler, steps=args.steps, order=args.order, threshold=args.threshold, remask=args.remask,
        eta=args.eta, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


@contextlib.contextmanager
def _told_about_data(enabled: bool) -> Iterator[None]:
    """The slow first steps of a run (training its BPE tokenizer, tokenizing its corpus: seconds per 10 MB), one
    line each on stderr, so that a start is not silence."""
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("unmask train: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("unmask.data", "unmask.train")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.removeHandler(handler)
            log.setLevel(level)


def train_command(args: argparse.Namespace) -> int:
    if args.step is not None and not args.resume:
        raise UserError("--step picks the checkpoint to resume from: give --resume with it")
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, f"data.source={args.data}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.resume:
        config = resume_config(args.out, overrides, step=args.step)
        if args.preset is not None:
            warnings.warn("--resume continues the saved run's config (the preset it started from included); "
                          "--preset is not used", stacklevel=1)
    else:
        config = apply_overrides(load_preset(args.preset or DEFAULT_PRESET), overrides)
    with _told_about_data(not args.quiet and is_main_process()):
        result = train(config, args.out, resume=args.resume, step=args.step, progress=not args.quiet,
                       trust_remote_code=args.trust_remote_code)
    # A stop by a signal exits as the shell reports one (128 + its number: 143 for SIGTERM), Ctrl-C with 130.
    status = 128 + result.stop_signal if result.stop_signal else 130
    if not is_main_process():
        return status if result.interrupted else 0
    if result.interrupted:
        how = f"stopped by {signal.Signals(result.stop_signal).name}" if result.stop_signal else "interrupted"
        print(f"{how} at step {result.step}; continue with: unmask train --out {shlex.quote(str(args.out))} "
              "--resume", file=sys.stderr)
        return status
    if result.checkpoint is None:  # resumed at (or past) train.max_steps: there was nothing to train
        print(f"the run in {args.out} is finished: it is at step {result.step}, train.max_steps is "
              f"{config.train.max_steps}; to train further: unmask train --out {shlex.quote(str(args.out))} --resume "
              f"--max-steps {2 * result.step}", file=sys.stderr)
        return 0
    # JSON has no NaN: a standard error over one validation sequence is null.
    validation = {key: value if math.isfinite(value) else None for key, value in result.validation.items()}
    summary = {"step": result.step, "checkpoint": str(result.checkpoint), "tokens_per_s": round(result.tokens_per_s),
               **validation}
    print(json.dumps(summary))
    return 0


def _format_report(report: EvalReport) -> str:
    main = report.likelihood
    unit = "BPC" if report.character_level else "PPL" if report.exact else "PPL bound"
    figure = main.bits_per_token if report.character_level else main.perplexity
    # One sequence has no spread to estimate a standard error from: said instead of "+- nan".
    spread = (f"+- {main.stderr:.4f}" if math.isfinite(main.stderr)
              else "(one sequence: no standard error; evaluate more data)")
    rows = [
        ("checkpoint", report.checkpoint),
        ("data", f"{report.data} ({report.split}), {main.tokens:,} tokens, {main.sequences} sequences"
                 f" of {report.length}"),
        ("NLL / token" if report.exact else "NELBO / token",
         f"{main.nelbo_per_token:.4f} nats {spread} (K={main.num_t})"),
        (unit, f"{figure:.3f}"),
    ]
    if report.detokenizer is not None:
        rows.insert(2, ("protocol", f"zero-shot as the reference: detokenizer {report.detokenizer}, documents "
                                    "wrapped, last partial block dropped"))
    for steps, result in report.discrete.items():
        bound = f"{result.nelbo_per_token:.4f} nats, PPL bound {result.perplexity:.3f}"
        rows.append((f"discrete T={steps}", bound))
    variances = report.block_variance or []
    lowest = min((r["variance"] for r in variances), default=None)
    for r in variances:
        low, high = r["mask_rate_range"]
        mark = "  <- lowest" if r["variance"] == lowest else ""
        rows.append((f"variance [{low:g}, {high:g}]",
                     f"{r['variance']:.4f} (per-block loss, nats/token; mean {r['mean']:.4f}){mark}"))
    if report.generative is not None:
        gen = report.generative
        rows.append(("gen. PPL", f"{gen.gen_ppl:.2f} under {gen.evaluator} ({gen.num_samples} samples)"))
        rows.append(("entropy", f"{gen.entropy:.3f} nats (unigram, per sample)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def eval_command(args: argparse.Namespace) -> int:
    config = EvalConfig(**given(
        data=args.data, split=args.split, text_field=args.text_field, detokenizer=args.detokenizer, num_t=args.num_t,
        discrete_steps=args.discrete_steps, batch_size=args.batch_size, max_batches=args.max_batches, seed=args.seed,
        mask_rate_ranges=args.mask_rate_ranges))
    sampling = SamplerConfig.from_options(steps=args.steps)
    # The evaluator is loaded first: a bad one is refused before the evaluation, not after it.
    trust = args.trust_remote_code
    evaluator = (load_evaluator(args.gen_ppl, device="cpu", trust_remote_code=trust)
                 if args.gen_ppl and is_main_process() else None)
    report = evaluate_checkpoint(args.checkpoint, config, step=args.step, device=args.device, trust_remote_code=trust)
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    if evaluator is not None:
        pipeline = load(args.checkpoint, step=args.step, device=args.device, trust_remote_code=trust)
        samples = generate_text(pipeline, sampling, num_samples=args.num_samples or GEN_PPL_SAMPLES, seed=config.seed)
        report.generative = generative_perplexity(samples.texts, evaluator, sample_token_ids=samples.tokens)
    print(_format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def sample_command(args: argparse.Namespace) -> int:
    sampling = sampler_config(args)
    pipeline = load(args.checkpoint, step=args.step, device=args.device, trust_remote_code=args.trust_remote_code)
    # A long run shows that it advances (on a terminal); --show-steps prints each state, labelled, instead.
    progress = tqdm(desc="sampling", unit=" steps", file=sys.stderr, leave=False, dynamic_ncols=True,
                    disable=args.show_steps or not sys.stderr.isatty())
    shown = 0

    def on_step(x: torch.Tensor) -> None:
        nonlocal shown
        progress.update()
        if args.show_steps:
            shown += 1
            ids = x[0].tolist()
            print(f"--- state {shown} of sample 0: {ids.count(pipeline.mask_id)} positions masked ---\n"
                  f"{masked_text(pipeline.tokenizer, ids)}", flush=True)

    with progress:
        samples = generate_text(pipeline, sampling, length=args.length, prompt=args.prompt, template=args.template,
                                overlap=args.overlap, stop_at_eos=args.stop_at_eos, on_step=on_step,
                                static_shapes=args.static_shapes,
                                **given(num_samples=args.num_samples, seed=args.seed))
    for i, text in enumerate(samples.texts):
        print(f"--- sample {i} ---\n{text}")
    print(f"({samples.num_calls} denoiser calls, {samples.seconds:.2f} s)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(samples.to_dict(), indent=2))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    serve(args.checkpoint, device=args.device, step=args.step, trust_remote_code=args.trust_remote_code,
          **given(host=args.host, port=args.port, max_batch=args.max_batch, allowed_hosts=args.allowed_hosts))
    return 0


def export_command(args: argparse.Namespace) -> int:
    if args.format == "unmask":
        if args.allow_approximate_gelu:
            raise UserError("--allow-approximate-gelu applies to --format hf only; add --format hf or drop it")
        print(f"wrote {export_checkpoint(args.checkpoint, args.out, step=args.step)}")
        return 0
    exported = export_hf(args.checkpoint, args.out, step=args.step, allow_approximate_gelu=args.allow_approximate_gelu)
    print(f"wrote {exported.out} in the released MDLM layout (config.json, model.safetensors, tokenizer): "
          "unmask loads it, and so does transformers' AutoModelForMaskedLM with trust_remote_code=True")
    if not exported.transformers_tokenizer:
        print("note: transformers has no equivalent of this model's character tokenizer; only unmask reads the "
              "tokenizer files", file=sys.stderr)
    return 0


def convert_command(args: argparse.Namespace) -> int:
    done = convert_lightning(args.ckpt, args.out, ema=not args.no_ema, trust_pickle=args.trust_pickle)
    shape = done.config
    print(f"wrote {done.out}: step {done.step}, {'EMA' if done.weights == 'ema' else 'trained'} weights, "
          f"{shape.n_layers} blocks x {shape.hidden}, {shape.n_heads} heads, vocabulary {shape.vocab_size}, "
          f"length {shape.length}, tokenizer {done.tokenizer}")
    if done.assumed:
        print(f"note: the checkpoint does not record {', '.join(done.assumed)}: the paper's value was assumed",
              file=sys.stderr)
    return 0


def demo_command(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), progress=not args.quiet, **given(minutes=args.minutes, precision=args.precision))
    return 0


def frontier_command(args: argparse.Namespace) -> int:
    def on_point(point):
        print(f"{point.sampler} steps={point.steps}: {point.num_calls:.1f} calls, {point.seconds:.2f} s, "
              f"gen. PPL {point.gen_ppl:.2f}, entropy {point.entropy:.3f}", file=sys.stderr, flush=True)

    points, written = run_frontier(
        args.checkpoint, step=args.step, out_dir=Path(args.out), evaluator=args.evaluator, length=args.length,
        device=args.device, on_point=on_point, trust_remote_code=args.trust_remote_code,
        **given(samplers=args.samplers, steps=args.steps, num_samples=args.num_samples, batch_size=args.batch_size,
                seed=args.seed))
    print(format_table(points))
    for path in written:
        print(f"wrote {path}")
    return 0


def study_command(args: argparse.Namespace) -> int:
    evaluation = dataclasses.replace(STUDY_EVALUATION, **given(
        num_t=args.num_t, max_batches=args.eval_batches, batch_size=args.eval_batch_size, seed=args.seed))
    result, written = study(args.preset, out=args.out, budget=args.budget, data=args.data,
                            objectives=args.objectives, ablations=args.ablations, overrides=args.overrides,
                            evaluation=evaluation, progress=not args.quiet)
    if result.interrupted:
        print(f"interrupted while training {result.interrupted} (its progress is saved); run the same command "
              "again to continue", file=sys.stderr)
        return 130
    print("\n" + (Path(args.out) / "study.md").read_text(), end="")
    for path in written:
        print(f"wrote {path}")
    return 0


COMMANDS = {"train": train_command, "eval": eval_command, "sample": sample_command, "serve": serve_command,
            "frontier": frontier_command, "export": export_command, "convert": convert_command, "demo": demo_command,
            "study": study_command}
