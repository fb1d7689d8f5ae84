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
from unmask.cli.parser import ADAPT_PRESET, DEFAULT_PRESET, GEN_PPL_SAMPLES
from unmask.config import apply_overrides, load_preset, set_value
from unmask.demo import run_demo
from unmask.distill.trainer import distill
from unmask.distributed.process import is_main_process
from unmask.errors import UserError
from unmask.evaluate import EvalConfig, EvalReport, evaluate_checkpoint, generative_perplexity, load_evaluator
from unmask.evaluate.frontier import format_table, run_frontier
from unmask.evaluate.harness import lm_class, results_table, run_tasks
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
        eta=args.eta, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, final_step=args.final_step)


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
        if args.init is not None:
            raise UserError("--resume continues the saved run, its model included: drop --init")
        config = resume_config(args.out, overrides, step=args.step)
        if args.preset is not None:
            warnings.warn("--resume continues the saved run's config (the preset it started from included); "
                          "--preset is not used", stacklevel=1)
    else:
        config = apply_overrides(load_preset(args.preset or (ADAPT_PRESET if args.init else DEFAULT_PRESET)),
                                 overrides)
        if args.init is not None:  # the pretrained model brings its own tokenizer
            set_value(config, "adapt.init", args.init)
            set_value(config, "data.tokenizer", args.init)
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
    figure_name = "NLL / token" if report.exact else "NELBO / token"
    if report.continuations is not None:
        data = (f"{report.data}: {main.sequences} continuations given their contexts, {main.tokens:,} continuation "
                "tokens")
        figure_name = figure_name.replace("token", "continuation token")
    else:
        data = f"{report.data} ({report.split}), {main.tokens:,} tokens, {main.sequences} sequences of {report.length}"
    rows = [
        ("checkpoint", report.checkpoint),
        ("data", data),
        (figure_name, f"{main.nelbo_per_token:.4f} nats {spread} (K={main.num_t})"),
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
        mask_rate_ranges=args.mask_rate_ranges, prompt_file=args.prompt_file))
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


def lm_eval_command(args: argparse.Namespace) -> int:
    sampler_options = given(sampler=args.sampler, steps=args.steps, order=args.order, threshold=args.threshold,
                            remask=args.remask, eta=args.eta, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p)
    options = given(num_t=args.num_t, rolling_num_t=args.rolling_num_t, seed=args.seed, batch_size=args.batch_size,
                    precision=args.precision)
    model = lm_class()(args.checkpoint, step=args.step, device=args.device, greedy=not args.no_greedy,
                       progress=not args.quiet, trust_remote_code=args.trust_remote_code, **options,
                       **sampler_options)
    if args.log_samples and args.output_path is None:
        raise UserError("--log-samples writes into --output-path: give --output-path DIR")
    limit = args.limit if args.limit is None or args.limit < 1 else int(args.limit)
    results = run_tasks(model, args.tasks, include_path=args.include_path, num_fewshot=args.num_fewshot, limit=limit,
                        output_path=args.output_path, log_samples=args.log_samples,
                        **given(bootstrap_iters=args.bootstrap_iters, seed=args.seed))
    print(results_table(results))
    if args.output_path is not None:
        print(f"wrote {Path(args.output_path) / 'results.json'}")
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
                                chat=args.chat, max_tokens=args.max_tokens, overlap=args.overlap,
                                stop_at_eos=args.stop_at_eos, on_step=on_step, static_shapes=args.static_shapes,
                                **given(num_samples=args.num_samples, seed=args.seed))
    for i, text in enumerate(samples.texts):
        print(f"--- {'answer' if args.chat is not None else 'sample'} {i} ---\n{text}")
    print(f"({samples.num_calls} denoiser calls, {samples.seconds:.2f} s)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(samples.to_dict(), indent=2))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    serve(args.checkpoint, device=args.device, step=args.step, trust_remote_code=args.trust_remote_code,
          **given(host=args.host, port=args.port, max_batch=args.max_batch, allowed_hosts=args.allowed_hosts))
    return 0


def export_command(args: argparse.Namespace) -> int:
    if args.merge_lora:
        if args.format != "unmask" or args.allow_approximate_gelu:
            raise UserError("--merge-lora writes an unmask checkpoint: drop --format hf and --allow-approximate-gelu")
        merged = load(args.checkpoint, step=args.step, device="cpu").merged()
        print(f"wrote {merged.save(args.out)}: the LoRA adapters merged into the weights")
        return 0
    if args.format == "unmask":
        if args.allow_approximate_gelu:
            raise UserError("--allow-approximate-gelu applies to --format hf only; add --format hf or drop it")
        print(f"wrote {export_checkpoint(args.checkpoint, args.out, step=args.step)}")
        return 0
    exported = export_hf(args.checkpoint, args.out, step=args.step, allow_approximate_gelu=args.allow_approximate_gelu)
    print(f"wrote {exported.out} in the released {exported.layout} layout (config.json, model.safetensors, "
          "tokenizer): unmask loads it, and so does the reference code")
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
    result, written = study(args.preset, out=args.out, budget=args.budget, budget_tokens=args.budget_tokens,
                            data=args.data, objectives=args.objectives, ablations=args.ablations,
                            overrides=args.overrides, evaluation=evaluation, progress=not args.quiet,
                            **given(seeds=args.seeds))
    if result.interrupted:
        print(f"interrupted while training {result.interrupted} (its progress is saved); run the same command "
              "again to continue", file=sys.stderr)
        return 130
    print("\n" + (Path(args.out) / "study.md").read_text(), end="")
    for path in written:
        print(f"wrote {path}")
    return 0


def distill_command(args: argparse.Namespace) -> int:
    if not args.resume and (args.method is None or args.rounds is None):
        raise UserError("give --method (sdtt or dcd) and --rounds K for a new student (or --resume to continue one)")
    overrides = [*([f"data.source={args.data}"] if args.data is not None else []), *args.overrides]
    result = distill(args.teacher, args.out, method=args.method, rounds=args.rounds, steps_from=args.steps_from,
                     round_steps=args.round_steps, overrides=overrides, resume=args.resume, progress=not args.quiet)
    if result.interrupted:
        print(f"interrupted at step {result.step}; continue with: unmask distill {shlex.quote(str(args.teacher))} "
              f"--out {shlex.quote(str(args.out))} --resume", file=sys.stderr)
        return 130
    print(json.dumps({"step": result.step, "checkpoint": str(result.checkpoint), **result.validation}))
    return 0


COMMANDS = {"train": train_command, "eval": eval_command, "lm-eval": lm_eval_command, "sample": sample_command,
            "serve": serve_command,
            "frontier": frontier_command, "export": export_command, "convert": convert_command, "demo": demo_command,
            "study": study_command, "distill": distill_command}
